"""``clip`` (τ): F_ij = sign(λ_j − λ_i) · min(1/|λ_j − λ_i|, τ).

The gradient-clipping baseline (SVD-Clip) of Wang et al., "Robust Differentiable SVD",
TPAMI 2021, Sec. 5; default τ = 100. Exact ties take the index-order sign.
"""

from .. import _xp
from ._base import kernel_method, quiet, offdiag, pair_diff, pair_sign, real


@quiet
def kernel(lam, tau=100.0):
    xp = _xp.namespace(lam)
    magnitude = xp.clip(1 / xp.abs(pair_diff(lam)), None, tau)
    return offdiag(pair_sign(lam) * magnitude)


METHOD = kernel_method("clip", kernel, {"tau": 100.0}, "Wang et al., TPAMI 2021, SVD-Clip", "|F| capped at τ",
                       domains={"tau": real(positive=True)})
