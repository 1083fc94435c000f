"""Per-sample overflow handling of Song, Sebe & Wang (ICCV 2021) for F.

Their released SVD-Padé / SVD-Taylor backward replaces +Inf entries of K̃ by the largest other
entry and −Inf by the smallest, taken over the whole batch; its NaN → ``k.max()`` leaves NaN (torch's
max propagates NaN), as do the first two where a NaN is present. A batch-wide
maximum lets one ill-conditioned sample rescale every other sample's gradient, so here each
sample (each matrix in the batch) uses only its own finite entries.
"""

from .. import _xp
from .._xp import Array


def replace_nonfinite_per_sample(F: Array) -> Array:
    """F with +Inf/NaN → the sample's largest finite entry and −Inf → its smallest (per matrix).

    A kernel's F has a zero diagonal, so every sample has a finite entry; a matrix with none has no
    value to use (its +Inf/NaN come out −Inf, its −Inf +Inf)."""
    xp = _xp.namespace(F)
    inf = float("inf")
    finite = xp.isfinite(F)
    hi = _xp.amax(xp.where(finite, F, xp.full_like(F, -inf)), (-2, -1))
    lo = _xp.amin(xp.where(finite, F, xp.full_like(F, inf)), (-2, -1))
    out = xp.where(F == inf, hi, F)
    out = xp.where(F == -inf, lo, out)
    return xp.where(xp.isnan(F), hi, out)

