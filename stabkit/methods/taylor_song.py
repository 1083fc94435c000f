"""``taylor-song`` (K): the degree-100 Taylor variant of Song, Sebe & Wang (ICCV 2021).

Same series as ``taylor`` — (1/λ_hi) Σ_{k=0..K} (λ_lo/λ_hi)^k with K = 100 and no shift — but
with the published code's conventions: at exact ties both F_ij and F_ji are +(K+1)/λ (not
antisymmetric), and non-finite entries are replaced by the sample's extreme finite entries
(``_overflow``, done per sample here rather than over the batch).

Meant for λ > 0, as the paper's covariances (its forward clamps eigenvalues to ≥ eps): the series
converges only for |λ_lo/λ_hi| < 1, so a negative eigenvalue larger in magnitude than the other of its
pair gives the diverging partial sum (λ = (−2, 1): F_01 = (1 + 2^101)/3 ≈ 8.5e29, not 1/3), and a zero
λ_hi above a negative λ_lo gives (1/0)·Σ(−∞)^k = NaN, replaced by the sample's largest entry.
"""

from .. import _xp
from .._xp import Array
from ._base import MAX_TERMS, integer, kernel_method, quiet, offdiag
from ._overflow import replace_nonfinite_per_sample


def song_sign_and_ratio(lam: Array) -> tuple[Array, Array]:
    """(signed 1/λ_hi, λ_lo/λ_hi) per pair, sign + when λ_j ≥ λ_i (ties included, as published)."""
    xp = _xp.namespace(lam)
    li, lj = lam[..., :, None], lam[..., None, :]
    j_is_hi = lj >= li
    inv_hi = xp.where(j_is_hi, 1 / lj, -1 / li)
    ratio = xp.where(j_is_hi, li / lj, lj / li)
    return inv_hi, ratio


@quiet
def kernel(lam: Array, K: int = 100) -> Array:
    inv_hi, ratio = song_sign_and_ratio(lam)
    total = _xp.namespace(lam).ones_like(ratio)
    for _ in range(int(K)):
        total = 1 + ratio * total
    return replace_nonfinite_per_sample(offdiag(inv_hi * total))


METHOD = kernel_method(
    "taylor-song", kernel, {"K": 100}, "Song, Sebe & Wang, ICCV 2021 (SVD-Taylor)", "degree-100 Taylor, published tie signs",
    domains={"K": integer(0, MAX_TERMS)}, bounded=True,
)
