"""``taylor`` (K, ε): degree-K Taylor expansion of 1/(λ_i − λ_j).

Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", IEEE TPAMI 2021, eq. (13):
for λ_i > λ_j > 0,

    1/(λ_i − λ_j) = (1/λ_i) · 1/(1 − λ_j/λ_i) ≈ (1/λ_i) Σ_{k=0..K} (λ_j/λ_i)^k,

evaluated on λ + ε (adding εI to A shifts the eigenvalues and leaves eigenvectors alone).
The truncation keeps |F_ij| ≤ (K+1)/(λ_max(i,j) + ε), so equal eigenvalues give a finite value
where λ + ε > 0; its sign follows λ_j − λ_i and, at exact ties, the index order, keeping F
antisymmetric. Defaults K = 9 (the paper's choice) and ε = 0 (a layer adds its own ε to its covariance).
Meant for λ + ε > 0: F is bounded only there. Where the larger shifted eigenvalue of a pair is 0
(with ε = 0: two eigenvalues exactly 0, e.g. a covariance with two all-zero channels) F_ij = ±∞,
as the analytic rule at a tie: a loss of λ alone (zero projected gradient there) still gets the
exact gradient, a nonzero one gives ±∞; ε > 0 makes it finite. A negative shifted eigenvalue gives
finite values that are not a series of 1/Δ (λ + ε = (−2, −1): F_01 = −1023, not 1).
"""

from .. import _xp
from .._xp import Array
from ._base import MAX_TERMS, integer, kernel_method, quiet, offdiag, pair_sign, real


def geometric_magnitude(lam: Array, K: int, eps: float) -> Array:
    """(1/hi) Σ_{k=0..K} (lo/hi)^k with hi/lo the larger/smaller of λ_i + ε, λ_j + ε."""
    xp = _xp.namespace(lam)
    shifted = lam + eps
    a, b = shifted[..., :, None], shifted[..., None, :]
    hi, lo = xp.maximum(a, b), xp.minimum(a, b)
    # lo/hi is 1 where the two are equal, also at hi = lo = 0 (0/0 would give NaN): the magnitude is
    # then (K+1)/hi = ∞, which ``_xp.kernel_product`` turns into 0 where the projected gradient is 0.
    tie = hi == lo
    ratio = xp.where(tie, xp.ones_like(hi), lo / xp.where(tie, xp.ones_like(hi), hi))
    total = xp.ones_like(ratio)
    for _ in range(int(K)):  # Horner: 1 + r(1 + r(1 + …))
        total = 1 + ratio * total
    return total / hi


@quiet
def kernel(lam: Array, K: int = 9, eps: float = 0.0) -> Array:
    return offdiag(pair_sign(lam) * geometric_magnitude(lam, K, eps))


METHOD = kernel_method(
    "taylor", kernel, {"K": 9, "eps": 0.0},
    "Wang et al., Robust Differentiable SVD, TPAMI 2021, eq. 13", "degree-K Taylor of F = 1/(λ_j − λ_i) on λ + ε",
    domains={"K": integer(0, MAX_TERMS), "eps": real(0.0)}, paper_name="SVD-Taylor", bounded=True,
    paper_variant="taylor-song:K=9",
)
