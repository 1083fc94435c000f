"""``clip-authors`` (τ): SVD-Clip as the authors' released code computes it — zero at exact ties.

Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, Sec. 5 (SVD-Clip), as in
their public ``clip`` helper (Robust-Differentiable-SVD, torch_utils.py): for λ_j ≠ λ_i,
F_ij = sign(λ_j − λ_i) / max(|λ_j − λ_i|, 1/τ) (they clamp the gap at 0.01, i.e. τ = 100), and
F_ij = 0 where λ_i = λ_j exactly. ``clip`` gives those ties ±τ (index-order sign); both agree
everywhere else.
"""

from .. import _xp
from .._xp import Array
from ._base import kernel_method, offdiag, pair_diff, quiet, real


@quiet
def kernel(lam: Array, tau: float = 100.0) -> Array:
    xp = _xp.namespace(lam)
    diff = pair_diff(lam)
    gap = xp.abs(diff)
    capped = gap * tau <= 1
    magnitude = xp.where(capped, xp.ones_like(gap) * tau, 1 / xp.where(capped, xp.ones_like(gap), gap))
    return offdiag(xp.where(gap == 0, xp.zeros_like(gap), xp.sign(diff) * magnitude))


METHOD = kernel_method("clip-authors", kernel, {"tau": 100.0}, "Wang et al., TPAMI 2021, SVD-Clip, released code",
                       "|F| capped at τ, zero at exact ties (the authors' code)", domains={"tau": real(positive=True)}, bounded=True)
