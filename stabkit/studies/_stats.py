"""Small-sample statistics shared by the studies: binomial intervals, Fisher's exact test, Holm,
power, and the Kaplan–Meier estimator.

* Wilson score interval (Wilson, JASA 1927): centre (p̂ + z²/2n)/(1 + z²/n), half-width
  z·sqrt(p̂(1−p̂)/n + z²/4n²)/(1 + z²/n).
* Clopper–Pearson interval (Biometrika 1934), exact: [B(α/2; k, n−k+1), B(1−α/2; k+1, n−k)] with
  B the Beta quantile; lower 0 at k = 0, upper 1 at k = n.
* Fisher's exact test of a 2×2 table, two-sided as in R's ``fisher.test``: the sum of the
  hypergeometric probabilities of every table with the observed margins that is no more probable
  than the observed one (relative tolerance 1e-7).
* Holm's step-down correction (Scand. J. Statist. 1979): sort the m p-values, p_(i) ↦
  max_{j ≤ i} min(1, (m − j + 1) p_(j)).
* Power of Fisher's test against a published count: exact, that count fixed and our n₁ runs
  binomial at rate p₁, the probability that the two-sided p-value is ≤ α.
* The median's distribution-free interval: order statistics whose ranks come from Binomial(n, 1/2)
  (``median_interval``).
* Interval text rounded outward (lower bound toward −∞, upper toward +∞), so that the printed
  interval contains the computed one: ``round_down``, ``round_up``, ``percent_interval``.
* Kaplan–Meier (JASA 1958) with right censoring: S(t) = Π_{t_i ≤ t} (1 − d_i/n_i); Greenwood's
  variance Var S = S² Σ d_i/(n_i(n_i − d_i)); the confidence band on the log(−log S) scale
  (Kalbfleisch & Prentice), which stays inside [0, 1]: S^{exp(±z σ)}, σ² = Σ d_i/(n_i(n_i−d_i)) / (log S)²;
  not defined (NaN) where S = 0.
  Events and censorings at the same time: the events count first (censored ones are still at risk).
"""

from __future__ import annotations

import decimal
import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
from scipy.special import expit

Z95 = 1.959963984540054


def _check_counts(k, n) -> tuple[int, int]:
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"counts need 0 ≤ k ≤ n, got k={k}, n={n}")
    return k, n


def wilson(k, n, z: float = Z95):
    """Wilson score interval (lo, hi) for k successes in n trials: floats for scalar counts, arrays
    for arrays; exactly 0 at k = 0 and 1 at k = n; NaN where n = 0."""
    if np.ndim(k) == 0 and np.ndim(n) == 0:
        k, n = _check_counts(k, n)
        if n == 0:
            return (float("nan"), float("nan"))
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any((k < 0) | (k > n)):
        raise ValueError("counts need 0 ≤ k ≤ n")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z ** 2 / n
        centre = (p + z ** 2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
        lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))  # exact 0 (not rounding residue) for k = 0
        hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
        lo, hi = np.where(n == 0, np.nan, lo), np.where(n == 0, np.nan, hi)
    if lo.ndim == 0:
        return (float(lo), float(hi))
    return lo, hi


def _decimals(x: float, sig: int) -> int:
    """Decimal places that keep ``sig`` significant digits of min(x, 1 − x) (a probability's distance
    to the nearer end, so that 0.99931 keeps its 3s)."""
    m = min(x, 1 - x)
    if m <= 0:
        return 0
    return max(0, sig - 1 - math.floor(math.log10(m)))


def round_text(x: float, sig: int, rounding, percent: bool = False) -> str:
    """The probability ``x`` rounded with ``rounding`` (a ``decimal`` mode) to ``sig`` significant
    digits of min(x, 1 − x); with ``percent``, the same digits shown in % (exactly ×100)."""
    if x != x:
        return "—"
    q = decimal.Decimal(float(x)).quantize(decimal.Decimal(1).scaleb(-_decimals(float(x), sig)), rounding=rounding)
    text = format(q.scaleb(2) if percent else q, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def round_down(x: float, sig: int = 2, percent: bool = False) -> str:
    """``x`` rounded toward −∞ (so the printed number is ≤ x), ``sig`` significant digits of min(x, 1 − x)."""
    return round_text(x, sig, decimal.ROUND_FLOOR, percent)


def round_up(x: float, sig: int = 2, percent: bool = False) -> str:
    """``x`` rounded toward +∞ (so the printed number is ≥ x)."""
    return round_text(x, sig, decimal.ROUND_CEILING, percent)


def percent_interval(lo: float, hi: float, sig: int = 2) -> str:
    """``[lo, hi]`` in %, rounded outward (lower bound down, upper bound up): the printed interval
    contains the computed one, and a bound that is not 0 or 100 % is never printed as one
    (``sig`` digits of min(x, 1 − x): 0.0017 → 0.16, 0.676 → 67, 0.99958 → 99.958); "—" for NaN.
    ValueError for a bound outside [0, 1]: the rounding is that of a probability."""
    if lo != lo or hi != hi:
        return "—"
    if not (0 <= lo <= 1 and 0 <= hi <= 1):
        raise ValueError(f"percent_interval: bounds must be probabilities in [0, 1], got lo={lo!r}, hi={hi!r}")
    return f"[{round_down(lo, sig, percent=True)}, {round_up(hi, sig, percent=True)}]"


def median_interval(values, alpha: float = 0.05) -> tuple[float, float]:
    """Distribution-free confidence interval of a median: the order statistics [x_(r), x_(n+1−r)]
    (1-based), r the largest rank with P(B ≤ r − 1) ≤ α/2, B ~ Binomial(n, 1/2), so its coverage
    1 − 2 P(B ≤ r − 1) is at least 1 − α for any continuous distribution (e.g. Conover, Practical
    Nonparametric Statistics, §3.2). NaN values are dropped, ±inf kept; (nan, nan) when n is too
    small for any interval (n ≤ 5 at α = 0.05)."""
    x = np.sort(np.asarray(values, dtype=float))
    x = x[~np.isnan(x)]
    n = x.size
    bound = Fraction(alpha) / 2 * 2 ** n  # P(B ≤ r − 1) ≤ α/2  ⇔  Σ_{i < r} C(n, i) ≤ α/2 · 2ⁿ, in integers
    r, count, term = 0, 0, 1  # term = C(n, r), count = Σ_{i < r} C(n, i)
    while n and r < n // 2 and count + term <= bound:
        count += term
        term = term * (n - r) // (r + 1)
        r += 1
    if r == 0:
        return math.nan, math.nan
    return float(x[r - 1]), float(x[n - r])


def clopper_pearson(k, n, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for k successes in n trials; (nan, nan) when n = 0."""
    from scipy.stats import beta

    k, n = _check_counts(k, n)
    if n == 0:
        return (float("nan"), float("nan"))
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a, b, c, d) -> float:
    """Two-sided p-value of Fisher's exact test for the table [[a, b], [c, d]] (rows: samples,
    columns: success/failure)."""
    a, b, c, d = (int(x) for x in (a, b, c, d))
    if min(a, b, c, d) < 0:
        raise ValueError(f"a 2×2 table needs non-negative counts, got {[[a, b], [c, d]]}")
    return _fisher(a, b, c, d)


@lru_cache(maxsize=65536)
def _fisher(a: int, b: int, c: int, d: int) -> float:
    r1, r2, c1 = a + b, c + d, a + c
    n = r1 + r2
    lo, hi = max(0, c1 - r2), min(r1, c1)
    if lo == hi:
        return 1.0
    xs = np.arange(lo, hi + 1)
    log_p = np.array([_log_comb(r1, x) + _log_comb(r2, c1 - x) - _log_comb(n, c1) for x in xs])
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    observed = p[a - lo]
    return float(min(1.0, p[p <= observed * (1 + 1e-7)].sum()))


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (same order as given; NaN entries stay NaN and do not count in m)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


@lru_cache(maxsize=256)
def _rejects(n1: int, n2: int, alpha: float) -> np.ndarray:
    """R[k1, k2] = 1 where Fisher's two-sided p-value of k1/n1 against k2/n2 is ≤ alpha."""
    return np.array([[float(_fisher(k1, n1 - k1, k2, n2 - k2) <= alpha) for k2 in range(n2 + 1)] for k1 in range(n1 + 1)])


def fisher_power_vs_count(n1: int, p1: float, k2: int, n2: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided Fisher test (level ``alpha``) of k1 ~ Bin(n1, p1) against a fixed,
    already published count k2 of n2: P(p-value ≤ alpha) over k1 only."""
    from scipy.stats import binom

    k2, n2 = _check_counts(k2, n2)
    n1 = int(n1)
    if n1 < 1 or n2 < 1:
        raise ValueError(f"power needs n1, n2 ≥ 1, got {n1}, {n2}")
    if not 0.0 <= p1 <= 1.0:
        raise ValueError(f"p1 must be a probability in [0, 1], got {p1}")
    w1 = binom.pmf(np.arange(n1 + 1), n1, p1)
    return float(w1 @ _rejects(n1, n2, float(alpha))[:, k2])


def smallest_detectable(n1: int, k2: int, n2: int, power: float = 0.8, alpha: float = 0.05,
                        grid: int = 200) -> tuple[float | None, float | None]:
    """The rates p1 nearest to k2/n2, below and above it, at which Fisher's test of n1 runs against
    the fixed count k2 of n2 (:func:`fisher_power_vs_count`) reaches ``power`` (searched on a grid of
    step 1/grid); None on a side where no rate in [0, 1] does."""
    rates = np.linspace(0.0, 1.0, grid + 1)
    p2 = k2 / n2
    below = [r for r in rates if r < p2 and fisher_power_vs_count(n1, r, k2, n2, alpha) >= power]
    above = [r for r in rates if r > p2 and fisher_power_vs_count(n1, r, k2, n2, alpha) >= power]
    return (float(max(below)) if below else None, float(min(above)) if above else None)


def kaplan_meier(times, events, z: float = Z95) -> dict:
    """Kaplan–Meier estimate from right-censored data.

    ``times``: time of the event or of censoring per subject; ``events``: True for an event (here:
    NaN loss), False for censored. Returns arrays over the distinct event times: ``time``,
    ``at_risk``, ``events``, ``survival``, ``se`` (Greenwood), ``lo``/``hi`` (log−log band), plus
    ``n`` and ``median`` (first time with S ≤ 0.5, S counted exactly; None if never).
    """
    t = np.asarray(times, dtype=float)
    e = np.asarray(events, dtype=bool)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"times and events must be 1-D of the same length, got {t.shape} and {e.shape}")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError("times must be non-negative numbers (no NaN)")
    uniq = np.unique(t[e])
    at_risk = np.array([(t >= u).sum() for u in uniq], dtype=float)
    deaths = np.array([(e & (t == u)).sum() for u in uniq], dtype=float)
    surv = np.cumprod(1 - deaths / at_risk) if len(uniq) else np.array([])
    with np.errstate(divide="ignore", invalid="ignore"):
        gw = np.cumsum(deaths / (at_risk * (at_risk - deaths))) if len(uniq) else np.array([])
        se = surv * np.sqrt(gw)
        sigma = np.sqrt(gw) / np.abs(np.log(surv))
        lo = surv ** np.exp(z * sigma)
        hi = surv ** np.exp(-z * sigma)
    # S = 0 (every subject at risk had the event): the log−log band is not defined there, NaN — it is
    # not [0, 0], which would claim certainty; 0 < S < 1 always has a finite band
    lo = np.where(surv > 0, lo, np.nan)
    hi = np.where(surv > 0, hi, np.nan)
    se = np.where(surv > 0, se, np.nan)
    return {"time": uniq, "at_risk": at_risk, "events": deaths, "survival": surv, "se": se, "lo": lo, "hi": hi,
            "n": int(len(t)), "median": _median(uniq, at_risk, deaths)}


def _median(times, at_risk, deaths) -> float | None:
    """First time with S ≤ ½, S in exact fractions: S is often exactly ½ (e.g. 9/15 · 5/6), and the
    float product lands either side of it."""
    s = Fraction(1)
    for u, n, d in zip(times, at_risk, deaths):
        s *= Fraction(int(n - d), int(n))
        if s <= Fraction(1, 2):
            return float(u)
    return None


def survival_at(km: dict, t: float) -> float:
    """S(t) of a ``kaplan_meier`` result (a step function, right-continuous; 1 before the first event)."""
    idx = np.searchsorted(km["time"], t, side="right") - 1
    return 1.0 if idx < 0 else float(km["survival"][idx])


def fit_logistic(X: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None, l2: float = 1e-2,
                 iters: int = 100) -> np.ndarray:
    """Ridge logistic regression (unpenalised intercept, optional offset); X gets an intercept column.
    Returns β minimising the penalised negative log-likelihood Σ log(1 + e^η) − yη + l2/2 ‖β₁…‖²,
    η = offset + [1 X] β, by Newton's method with step halving: that objective is convex, so a step
    is kept only where it decreases it enough (Armijo, up to rounding), and the iteration converges. Full Newton
    steps alone overshoot from β = 0 where the offset saturates p(1 − p): that plain iteration, used
    here until 2026-12-06, sent the intercept to ~1e10 on some folds of the landmark calibration's
    simulated data sets (none of the committed reports' fits)."""
    Xb = np.column_stack([np.ones(len(X)), X])
    off = np.zeros(len(X)) if offset is None else offset
    penalty = l2 * np.eye(Xb.shape[1])
    penalty[0, 0] = 0.0

    def objective(beta):
        eta = off + Xb @ beta
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * beta @ penalty @ beta)

    beta = np.zeros(Xb.shape[1])
    value = objective(beta)
    for _ in range(iters):
        p = expit(off + Xb @ beta)
        grad = Xb.T @ (p - y) + penalty @ beta
        hess = (Xb * (p * (1 - p))[:, None]).T @ Xb + penalty + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        t, slope = 1.0, float(grad @ step)
        rounding = 1e-12 * (1.0 + abs(value))  # near the minimum a full step's change is below it
        while True:
            trial = beta - t * step
            trial_value = objective(trial)
            if trial_value <= value - 1e-4 * t * slope + rounding or t < 1e-12:
                break
            t /= 2
        beta, value = trial, trial_value
        if np.abs(t * step).max() < 1e-10:
            break
    return beta


def predict_logistic(beta: np.ndarray, X: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """P(y = 1) of :func:`fit_logistic`'s model."""
    off = 0.0 if offset is None else offset
    return expit(off + np.column_stack([np.ones(len(X)), X]) @ beta)
