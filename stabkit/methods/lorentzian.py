"""``lorentzian`` (ε): F_ij = Δ/(Δ² + ε) with Δ = λ_j − λ_i.

Lorentzian broadening, as used for degenerate spectra in differentiable tensor-network and
electronic-structure codes (Liao, Liu, Wang & Xiang, "Differentiable Programming Tensor
Networks", PRX 2019). Bounded by 1/(2√ε); equals the analytic F when Δ² ≫ ε. Default ε = 1e-12.
"""

from .._xp import Array
from ._base import kernel_method, quiet, offdiag, pair_diff, real


@quiet
def kernel(lam: Array, eps: float = 1e-12) -> Array:
    diff = pair_diff(lam)
    return offdiag(diff / (diff * diff + eps))


METHOD = kernel_method(
    "lorentzian", kernel, {"eps": 1e-12}, "Liao et al., PRX 2019 (Lorentzian broadening)", "Δ/(Δ² + ε)",
    domains={"eps": real(positive=True)}, bounded=True,
)
