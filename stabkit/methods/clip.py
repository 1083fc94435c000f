"""``clip`` (τ): F_ij = sign(λ_j − λ_i) · min(1/|λ_j − λ_i|, τ).

The gradient-clipping baseline (SVD-Clip) of Wang et al., "Robust Differentiable SVD",
TPAMI 2021, Sec. 5; default τ = 100. Exact ties take the index-order sign.
The cap is taken where |Δ| ≤ 1/τ before dividing, so no 1/0 is ever formed (a clipped ∞ would
still make the second derivative 0·∞ = NaN).
"""

from .. import _xp
from .._xp import Array
from ._base import kernel_method, quiet, offdiag, pair_diff, pair_sign, real


@quiet
def kernel(lam: Array, tau: float = 100.0) -> Array:
    xp = _xp.namespace(lam)
    gap = xp.abs(pair_diff(lam))
    capped = gap * tau <= 1
    magnitude = xp.where(capped, xp.ones_like(gap) * tau, 1 / xp.where(capped, xp.ones_like(gap), gap))
    return offdiag(pair_sign(lam) * magnitude)


METHOD = kernel_method("clip", kernel, {"tau": 100.0}, "Wang et al., TPAMI 2021, SVD-Clip", "|F| capped at τ",
                       domains={"tau": real(positive=True)}, paper_name="SVD-Clip", bounded=True,
                       paper_variant="clip-authors")
