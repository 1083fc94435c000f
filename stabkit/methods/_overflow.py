"""Per-sample overflow handling of Song, Sebe & Wang (ICCV 2021) for F.

Their released SVD-Padé / SVD-Taylor backward replaces +Inf entries of K̃ by the largest finite
entry, −Inf by the smallest, and NaN by the largest — taken over the whole batch. A batch-wide
maximum lets one ill-conditioned sample rescale every other sample's gradient, so here each
sample (each matrix in the batch) uses only its own finite entries.
"""

import numpy as np

from .. import _xp


def replace_nonfinite_per_sample(F):
    xp = _xp.namespace(F)
    inf = float("inf")
    finite = xp.isfinite(F)
    hi = _reduce(xp.where(finite, F, xp.full_like(F, -inf)), "max")
    lo = _reduce(xp.where(finite, F, xp.full_like(F, inf)), "min")
    out = xp.where(F == inf, hi, F)
    out = xp.where(F == -inf, lo, out)
    return xp.where(xp.isnan(F), hi, out)


def _reduce(x, how: str):
    """Max or min over the last two axes, kept as (..., 1, 1)."""
    if isinstance(x, np.ndarray):
        return getattr(x, how)(axis=(-2, -1), keepdims=True)
    return getattr(x, "a" + how)(dim=(-2, -1), keepdim=True)
