"""``pade``: the [50/50] Padé approximant of 1/(1 − x) inside F (Song, Sebe & Wang, ICCV 2021).

"Why Approximate Matrix Square Root Outperforms Accurate SVD in Global Covariance Pooling?",
ICCV 2021: with x = λ_lo/λ_hi, 1/(λ_hi − λ_lo) = (1/λ_hi) · 1/(1 − x) ≈ (1/λ_hi) P(x)/Q(x),
P, Q the [50/50] Padé approximant of the degree-100 Taylor polynomial Σ x^k.

Padé approximants are unique as rational functions, and 1/(1 − x) is itself of type [0/1] ⊂
[50/50]: the approximant *is* P/Q = 1/(1 − x) (the [50/50] linear system is singular; the
published code gets a non-singular one only from mpmath's numerically differentiated Taylor
coefficients). So this method reproduces the analytic F, infinite at exact ties, and what bounds
it is the published overflow handling, applied here per sample (``_overflow``).

At an exact tie both entries are ∞ with the sign of 1/λ here (λ > 0: +∞, then the sample's largest
finite entry; λ < 0: −∞, then its smallest), the same-sign convention of ``taylor-song``. The
published code's value there is set by rounding: x = 1 and its Q(1) = Σ q_i of coefficients that
mpmath solved, at 20 digits, from a singular system rounds to 0 or to a tiny number of either sign.
Rebuilt with mpmath 1.3.0 it is 0.0 with P(1) < 0, so −∞ and the batch's smallest entry; other
mpmath versions may differ, so that sign is not reproduced.

Meant for λ > 0 (the paper's covariances; the published forward clamps eigenvalues to ≥ eps). Where
the larger eigenvalue of an untied pair is exactly 0 (a zero eigenvalue above a negative one) the
published form (1/0)/(1 − λ_lo/0) is ∞/∞ = NaN, which the overflow rule replaces by the sample's
largest entry: not the analytic F there (λ = (−3, 0, 1): F_01 = F_10 = 1, not ±1/3).

Precision: F is formed as (1/λ_hi)/(1 − λ_lo/λ_hi), as in the published code, not as 1/(λ_hi − λ_lo):
the subtraction loses about log10(λ/gap) digits near a tie (float32, gaps of a few ulp: F off by up
to ~50 %; float64 at a relative gap of 1e-9: ~1e-7), where the analytic kernel stays exact.
"""

from .. import _xp
from .._xp import Array
from ._base import kernel_method, quiet, offdiag, safe_diagonal
from ._overflow import replace_nonfinite_per_sample
from .taylor_song import song_sign_and_ratio

#: Reduced [50/50] Padé approximant of Σ_{k≤100} x^k: P(x) = 1, Q(x) = 1 − x.
PADE_P = (1.0,)
PADE_Q = (1.0, -1.0)


def _poly(coeffs: tuple[float, ...], x: Array) -> Array:
    total = x * 0 + coeffs[-1]
    for c in coeffs[-2::-1]:
        total = total * x + c
    return total


@quiet
def kernel_raw(lam: Array) -> Array:
    """F before the overflow handling: the analytic F, with the cancellation the module doc states."""
    xp = _xp.namespace(lam)
    inv_hi, ratio = song_sign_and_ratio(lam)
    q = safe_diagonal(_poly(PADE_Q, ratio))
    tie = q == 0  # exact off-diagonal ties: F is ±∞ there, set without forming 1/0 (a NaN second derivative)
    value = inv_hi * _poly(PADE_P, ratio) / xp.where(tie, xp.ones_like(q), q)
    infinity = xp.sign(inv_hi) * (xp.ones_like(q) * float("inf"))  # sign(·) passes back zeros, never 0·∞
    return offdiag(xp.where(tie, infinity, value))


@quiet
def kernel(lam: Array) -> Array:
    return replace_nonfinite_per_sample(kernel_raw(lam))


METHOD = kernel_method(
    "pade", kernel, {}, "Song, Sebe & Wang, ICCV 2021 (SVD-Padé)",
    "[50/50] Padé of 1/(1 − λ_lo/λ_hi) with per-sample overflow handling", bounded=True,
)
