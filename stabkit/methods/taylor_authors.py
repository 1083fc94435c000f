"""``taylor-authors`` (K, ε): ``taylor`` with the tie convention of the authors' released code.

Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, eq. (13), as released in
github.com/WeiWangTrento/Robust-Differentiable-SVD (``torch_utils.geometric_approximation``, used by
``svdv2``'s backward): the same degree-K series as ``taylor``,

    F_ij = s_ij · (1/λ_hi) Σ_{k=0..K} (λ_lo/λ_hi)^k     on λ + ε,

but with s_ij = +1 when λ_j ≥ λ_i — so at an exact tie both F_ij and F_ji are +(K+1)/λ (the same
sign), where ``taylor`` makes them antisymmetric by index order. Away from exact ties the two are
identical. Both share ``taylor``'s domain: bounded where λ + ε > 0, ±∞ (+∞ here) where two
shifted eigenvalues are exactly 0. (``taylor-song:K=9`` has the same tie sign, without the shift and with its own overflow
handling.) The released layer also clamps its SVD's σ at 1e-10 before whitening; that is the
layer's forward, not this gradient rule.
"""

from .. import _xp
from .._xp import Array
from ._base import MAX_TERMS, integer, kernel_method, quiet, offdiag, pair_diff, real
from .taylor import geometric_magnitude


@quiet
def kernel(lam: Array, K: int = 9, eps: float = 0.0) -> Array:
    xp = _xp.namespace(lam)
    sign = xp.where(pair_diff(lam) >= 0, xp.ones_like(pair_diff(lam)), -xp.ones_like(pair_diff(lam)))
    return offdiag(sign * geometric_magnitude(lam, K, eps))


METHOD = kernel_method(
    "taylor-authors", kernel, {"K": 9, "eps": 0.0},
    "Wang et al., TPAMI 2021, eq. 13, released code (same-sign ties)",
    "degree-K Taylor on λ + ε, exact ties both +(K+1)/λ as in the authors' code",
    domains={"K": integer(0, MAX_TERMS), "eps": real(0.0)}, bounded=True,
)
