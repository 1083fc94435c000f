"""stabkit.studies._stats against closed forms and independent computations written here."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy import stats as sps

from stabkit.studies import _stats


# ------------------------------------------------------------------------------------ intervals
@pytest.mark.parametrize("k,n", [(0, 15), (1, 15), (7, 15), (15, 15), (3, 8), (40, 41)])
def test_wilson_endpoints_solve_the_score_equation(k, n):
    # the Wilson bounds are the roots in p of (p̂ − p)² = z² p (1 − p) / n
    z, ph = _stats.Z95, k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    roots = sorted(np.roots([a, b, c]).real)
    lo, hi = _stats.wilson(k, n)
    assert lo == pytest.approx(max(0.0, roots[0]), abs=1e-12)
    assert hi == pytest.approx(min(1.0, roots[1]), abs=1e-12)


def test_wilson_value_7_of_15():
    # by hand: p̂ = 7/15, z = 1.96: centre 0.4708…, half 0.2279… → [0.2481, 0.6988]
    lo, hi = _stats.wilson(7, 15)
    assert (round(lo, 4), round(hi, 4)) == (0.2481, 0.6988)


@pytest.mark.parametrize("n", [1, 8, 15, 50])
def test_clopper_pearson_closed_forms_at_the_edges(n):
    assert _stats.clopper_pearson(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), rel=1e-10)
    assert _stats.clopper_pearson(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), rel=1e-10)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.integers(1, n - 1) if n > 1 else st.just(0), st.just(n))))
@settings(max_examples=40, deadline=None)
def test_clopper_pearson_binomial_tails_are_alpha_half(kn):
    k, n = kn
    if k == 0:
        return
    lo, hi = _stats.clopper_pearson(k, n)
    # exact definition: P(X ≥ k | lo) = α/2 and P(X ≤ k | hi) = α/2 (binomial tails, not Beta quantiles)
    assert sps.binom.sf(k - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    assert sps.binom.cdf(k, n, hi) == pytest.approx(0.025, rel=1e-6)
    assert lo <= _stats.wilson(k, n)[1] and hi >= _stats.wilson(k, n)[0]


def test_wilson_is_exactly_0_at_no_successes_and_1_at_all():
    """The documented exact ends, not centre ∓ half-width, which leaves ±3e-17 of rounding for
    hundreds of n: lower bound 0.0 at k = 0 and upper 1.0 at k = n, scalar and array."""
    n = np.arange(1, 501)
    lo, _ = _stats.wilson(np.zeros_like(n), n)
    _, hi = _stats.wilson(n, n)
    assert (lo == 0.0).all() and (hi == 1.0).all()
    assert _stats.wilson(0, 7)[0] == 0.0 and _stats.wilson(7, 7)[1] == 1.0


def test_intervals_reject_bad_counts():
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        _stats.wilson(5, 3)
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        _stats.clopper_pearson(-1, 3)


# ------------------------------------------------------------------------------------- Fisher
def test_fisher_extreme_table_closed_form():
    # [[0, 15], [15, 0]]: only this table and its mirror are as extreme → p = 2 / C(30, 15)
    assert _stats.fisher_exact(0, 15, 15, 0) == pytest.approx(2 / math.comb(30, 15), rel=1e-12)
    assert _stats.fisher_exact(3, 3, 3, 3) == 1.0


@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
@settings(max_examples=150, deadline=None)
def test_fisher_matches_scipy(a, b, c, d):
    assert _stats.fisher_exact(a, b, c, d) == pytest.approx(sps.fisher_exact([[a, b], [c, d]])[1], rel=1e-9, abs=1e-14)


def test_holm_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    got = _stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    nan_kept = _stats.holm([0.01, float("nan"), 0.04])
    assert np.isnan(nan_kept[1]) and nan_kept[[0, 2]] == pytest.approx([0.02, 0.04])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
@settings(deadline=None)
def test_holm_is_between_raw_and_bonferroni_and_monotone(p):
    p = np.array(p)
    adj = _stats.holm(p)
    assert (adj >= p - 1e-15).all() and (adj <= np.minimum(1, len(p) * p) + 1e-15).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()


def _holm_rejects(p, alpha):
    """Holm's step-down at level alpha: reject the sorted p_(i) while p_(i) ≤ alpha / (m − i + 1)."""
    out = np.zeros(len(p), bool)
    for i, idx in enumerate(np.argsort(p, kind="stable")):
        if p[idx] > alpha / (len(p) - i):
            break
        out[idx] = True
    return out


@pytest.mark.parametrize("p", [[0.02, 0.02, 0.5], [0.6, 0.7], [0.001, 0.03, 0.03, 0.03, 0.2], [0.04, 0.01, 0.012, 0.9, 0.011]])
def test_holm_is_the_smallest_level_at_which_the_step_down_rejects(p):
    """The adjusted p of H_i is the smallest α at which Holm's procedure (run, not the formula) rejects
    it — found by bisection on α; 1 where it does not reject even at α = 1 (the cap). Ties included."""
    p = np.array(p)
    want = np.ones(len(p))
    for i in range(len(p)):
        if _holm_rejects(p, 1.0)[i]:
            lo, hi = 0.0, 1.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if _holm_rejects(p, mid)[i] else (mid, hi)
            want[i] = hi
    np.testing.assert_allclose(_stats.holm(p), want, rtol=1e-12, atol=1e-15)


def _power_by_scipy(n1, p1, n2, p2, alpha):
    total = 0.0
    for k1 in range(n1 + 1):
        for k2 in range(n2 + 1):
            if sps.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1] <= alpha:
                total += sps.binom.pmf(k1, n1, p1) * sps.binom.pmf(k2, n2, p2)
    return total


def test_power_against_a_count_edges():
    # 15 runs all succeeding against the paper's 0/15: p = 2/C(30,15) ≪ 0.05 → power exactly 1 at rate 1
    assert _stats.fisher_power_vs_count(15, 1.0, 0, 15) == pytest.approx(1.0)
    # 3 runs against the paper's 0/15 (one success column margin c1 = k1): 3/3 → p = 1/C(18,3) = 1/816;
    # 2/3 → p = C(3,2)/C(18,2) = 3/153; 1/3 → p = 3/18; so the test rejects for k1 ≥ 2 and the power is
    # P(Bin(3, p1) ≥ 2) = 3 p1² (1 − p1) + p1³
    assert _stats.fisher_exact(3, 0, 0, 15) == pytest.approx(1 / 816)
    assert _stats.fisher_exact(2, 1, 0, 15) == pytest.approx(3 / 153)
    assert _stats.fisher_exact(1, 2, 0, 15) == pytest.approx(3 / 18)
    assert _stats.fisher_power_vs_count(3, 0.7, 0, 15) == pytest.approx(3 * 0.7 ** 2 * 0.3 + 0.7 ** 3)
    with pytest.raises(ValueError, match="probability"):
        _stats.fisher_power_vs_count(3, 1.5, 0, 15)


def _power_vs_count_by_scipy(n1, p1, k2, n2, alpha):
    return sum(sps.binom.pmf(k1, n1, p1) for k1 in range(n1 + 1)
               if sps.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1] <= alpha)


@pytest.mark.parametrize("n1,p1,k2", [(6, 0.9, 7), (9, 0.05, 1), (9, 0.6, 14), (3, 0.7, 0), (15, 0.3, 15)])
def test_power_against_a_published_count_matches_scipy(n1, p1, k2):
    assert _stats.fisher_power_vs_count(n1, p1, k2, 15) == pytest.approx(_power_vs_count_by_scipy(n1, p1, k2, 15, 0.05),
                                                                          abs=1e-12)


def test_power_against_a_published_count_is_not_power_against_a_rate():
    # 6 runs against the paper's 7/15 held fixed: only 6/6 rejects at 5 % (0/6 gives p = 0.061), so the
    # power at rate r is r⁶; with the paper's runs redrawn at 7/15 as well, no rate reaches 0.8
    assert sps.fisher_exact([[6, 0], [7, 8]])[1] <= 0.05
    assert all(sps.fisher_exact([[k, 6 - k], [7, 8]])[1] > 0.05 for k in range(6))
    assert _stats.fisher_power_vs_count(6, 0.97, 7, 15) == pytest.approx(0.97 ** 6)
    assert _stats.smallest_detectable(6, 7, 15, grid=100) == (None, 0.97)  # 0.96⁶ = 0.78 < 0.8 ≤ 0.97⁶ = 0.83
    assert max(_power_by_scipy(6, r / 10, 15, 7 / 15, 0.05) for r in range(11)) < 0.8


def test_smallest_detectable_brackets_the_power():
    lo, hi = _stats.smallest_detectable(15, 0, 15, grid=100)
    assert lo is None  # nothing below a rate of 0
    assert _stats.fisher_power_vs_count(15, hi, 0, 15) >= 0.8 > _stats.fisher_power_vs_count(15, hi - 0.01, 0, 15)


def test_smallest_detectable_below_is_the_nearest_rate_with_enough_power():
    """Against 15/15 published, the rate below it nearest to 1 with power ≥ 0.8 (scipy's Fisher test,
    summed over Bin(15, p₁) here): the largest such grid rate, not the smallest (0)."""
    lo, hi = _stats.smallest_detectable(15, 15, 15, grid=100)
    assert hi is None  # nothing above a rate of 1
    assert _power_vs_count_by_scipy(15, lo, 15, 15, 0.05) >= 0.8 > _power_vs_count_by_scipy(15, lo + 0.01, 15, 15, 0.05)


@pytest.mark.parametrize("n1", [3, 6, 9, 15])
def test_the_power_sentence_holds_on_a_fine_grid(n1):
    """What the survival report says of ``smallest_detectable(..., grid=100)``: every rate beyond a bound
    is detected with power ≥ 0.8 and every rate more than 1 point inside the bounds with power < 0.8.
    Checked against the Table IV counts on a grid of step 0.0005, the power summed here from scipy's
    Fisher test over Bin(n₁, p₁) (the rejection set once per count, then binomial weights)."""
    rates = np.linspace(0, 1, 2001)
    for k2 in (0, 1, 7, 15):
        rejects = [k1 for k1 in range(n1 + 1) if sps.fisher_exact([[k1, n1 - k1], [k2, 15 - k2]])[1] <= 0.05]
        power = sps.binom.pmf(np.array(rejects)[:, None], n1, rates).sum(0) if rejects else np.zeros_like(rates)
        lo, hi = _stats.smallest_detectable(n1, k2, 15, grid=100)
        below = rates <= lo + 1e-12 if lo is not None else np.zeros_like(rates, bool)
        above = rates >= hi - 1e-12 if hi is not None else np.zeros_like(rates, bool)
        inside = (rates > (lo if lo is not None else -1) + 0.01 + 1e-12) & (rates < (hi if hi is not None else 2) - 0.01 - 1e-12)
        assert (power[below | above] >= 0.8 - 1e-12).all(), (k2, lo, hi)
        assert (power[inside] < 0.8).all(), (k2, lo, hi)

# --------------------------------------------------------------------------------- Kaplan–Meier
def test_kaplan_meier_hand_example():
    # t: 1 2 2+ 3 4+ 5; at risk 6, 5, 3, 1 at event times 1, 2, 3, 5
    km = _stats.kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    assert list(km["time"]) == [1, 2, 3, 5]
    assert list(km["at_risk"]) == [6, 5, 3, 1]
    assert km["survival"] == pytest.approx([5 / 6, 2 / 3, 4 / 9, 0.0])
    # Greenwood at t = 3: (4/9)² (1/30 + 1/20 + 1/6) = (4/9)² / 4 → se = 2/9
    assert km["se"][2] == pytest.approx(2 / 9)
    # log−log band at t = 1: σ = sqrt(1/30) / |log(5/6)|
    sigma = math.sqrt(1 / 30) / abs(math.log(5 / 6))
    assert km["lo"][0] == pytest.approx((5 / 6) ** math.exp(_stats.Z95 * sigma))
    assert km["hi"][0] == pytest.approx((5 / 6) ** math.exp(-_stats.Z95 * sigma))
    assert km["median"] == 3.0
    assert _stats.survival_at(km, 0.5) == 1.0 and _stats.survival_at(km, 2.5) == pytest.approx(2 / 3)


def test_survival_at_an_event_time_is_right_continuous():
    """S(t) counts the events at t itself (Kaplan–Meier's step is right-continuous): in the hand example
    S(1) = 5/6, S(2) = 2/3 and S(5) = 0 at the event times, 1 just before the first."""
    km = _stats.kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    assert _stats.survival_at(km, 1.0 - 1e-12) == 1.0
    assert _stats.survival_at(km, 1.0) == pytest.approx(5 / 6, rel=1e-15)
    assert _stats.survival_at(km, 2.0) == pytest.approx(2 / 3, rel=1e-15)
    assert _stats.survival_at(km, 5.0) == 0.0


def _km_by_subjects(times, events):
    """Product-limit by walking subjects in time order (events before censorings at ties), in exact
    fractions."""
    order = sorted(range(len(times)), key=lambda i: (times[i], not events[i]))
    s, n, out = Fraction(1), len(times), {}
    for i in order:
        if events[i]:
            s *= Fraction(n - 1, n)
            out[times[i]] = s
        n -= 1
    return out


@pytest.mark.parametrize("times,events,median", [
    # 15 runs at t = 1…15, those at 7, 8, 9 censored: S(10) = 9/15 · 5/6 = ½ exactly
    (range(1, 16), [t not in (7, 8, 9) for t in range(1, 16)], 10.0),
    # ties: 2 3 4 6+ 6 6 8+ 9 10+ 10+ 10 12 13 13 13 → S(10) = ½
    ([2, 3, 4, 6, 6, 6, 8, 9, 10, 10, 10, 12, 13, 13, 13], [1, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1], 10.0),
    # 12 events at t = 1…12, then 12 censored: S(12) = 12/24
    (range(1, 25), [t <= 12 for t in range(1, 25)], 12.0),
])
def test_kaplan_meier_median_where_s_is_exactly_one_half(times, events, median):
    # the float product of the factors lands just above ½ in these cases (11, 12 and "not reached" before)
    assert _stats.kaplan_meier([float(t) for t in times], [bool(e) for e in events])["median"] == median


@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=30))
@settings(max_examples=80, deadline=None)
def test_kaplan_meier_matches_subject_walk(data):
    times = [float(t) for t, _ in data]
    events = [e for _, e in data]
    km = _stats.kaplan_meier(times, events)
    ref = _km_by_subjects(times, events)
    assert list(km["time"]) == sorted(ref)
    assert km["survival"] == pytest.approx([float(ref[t]) for t in sorted(ref)], abs=1e-12)
    positive = km["survival"] > 0
    s, lo, hi = km["survival"][positive], km["lo"][positive], km["hi"][positive]
    assert ((lo <= s + 1e-12) & (s <= hi + 1e-12)).all()
    assert np.isnan(km["lo"][~positive]).all() and np.isnan(km["hi"][~positive]).all()  # no band at S = 0
    half = [t for t in sorted(ref) if ref[t] <= Fraction(1, 2)]
    assert km["median"] == (half[0] if half else None)
    if all(events):  # no censoring: S(t) = fraction of subjects with time > t
        for t, s in zip(km["time"], km["survival"]):
            assert s == pytest.approx(np.mean(np.array(times) > t))


def test_kaplan_meier_all_censored_and_bad_input():
    km = _stats.kaplan_meier([3.0, 4.0], [False, False])
    assert len(km["time"]) == 0 and km["median"] is None and _stats.survival_at(km, 10) == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        _stats.kaplan_meier([1.0, float("nan")], [True, False])


def test_median_interval_ranks_from_the_binomial_table():
    # n = 10: P(B ≤ 1) = 11/1024 ≤ 0.025 < P(B ≤ 2) = 56/1024, so [x_(2), x_(9)]; n = 5: 2/32 > 0.025, none
    assert _stats.median_interval(np.arange(1.0, 11.0)) == (2.0, 9.0)
    assert all(math.isnan(v) for v in _stats.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert _stats.median_interval([np.nan, *range(6)]) == (0.0, 5.0)  # n = 6: 1/64 ≤ 0.025 < 7/64
    assert _stats.median_interval([1.0] * 8 + [np.inf] * 8)[1] == np.inf  # +inf is an order statistic


def _scipy_rank(n: int) -> int:
    """The lower rank r of the median interval, from scipy alone: the number of k with P(B ≤ k) ≤ 0.025,
    B ~ Binomial(n, 1/2) (those k are exactly 0 … r − 1; 0.025 is no dyadic rational, so no tie)."""
    return int((sps.binom.cdf(np.arange(n + 1), n, 0.5) <= 0.025).sum())


@given(st.integers(6, 300))
@settings(max_examples=60, deadline=None)
def test_median_interval_is_the_order_statistics_at_scipys_ranks(n):
    r = _scipy_rank(n)
    assert _stats.median_interval(np.arange(n, dtype=float)) == (r - 1, n - r)  # x_(r), x_(n+1−r), 0-based values


@pytest.mark.parametrize("n", [1029, 2000, 20000])
def test_median_interval_ranks_at_large_n_match_scipy(n):
    r = _scipy_rank(n)  # 2.0 ** n overflows a float from n = 1024: the interval counts in integers
    assert _stats.median_interval(np.arange(n, dtype=float)) == (r - 1, n - r)


@pytest.mark.parametrize("lo, hi", [(-0.1, 0.5), (0.2, 1.5), (1.2, 1.3), (0.0, math.inf), (-math.inf, 0.5)])
def test_percent_interval_refuses_bounds_outside_0_1(lo, hi):
    """Bounds are probabilities: 1.5 printed '[20, 150]' (and −0.1 a negative percentage) before."""
    with pytest.raises(ValueError, match="lo=.*hi="):
        _stats.percent_interval(lo, hi)
    assert _stats.percent_interval(0.0, 1.0) == "[0, 100]" and _stats.percent_interval(math.nan, 0.5) == "—"


# ------------------------------------------------------------------------------ properties
@given(st.integers(1, 400))
@settings(max_examples=60, deadline=None)
def test_wilson_contains_the_rate_is_monotone_and_mirror_symmetric(n):
    """For every k of n: 0 ≤ lo ≤ k/n ≤ hi ≤ 1, both ends strictly increasing in k, and swapping
    successes and failures mirrors the interval: (lo, hi)(n − k) = (1 − hi, 1 − lo)(k)."""
    k = np.arange(n + 1)
    lo, hi = _stats.wilson(k, np.full_like(k, n))
    assert ((0 <= lo) & (lo <= k / n) & (k / n <= hi) & (hi <= 1)).all()
    assert (np.diff(lo) > 0).all() and (np.diff(hi) > 0).all()
    np.testing.assert_allclose(lo[::-1], 1 - hi, rtol=0, atol=1e-13)
    assert [_stats.wilson(int(j), n) for j in (0, n // 2, n)] == [(lo[j], hi[j]) for j in (0, n // 2, n)]


@given(st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_clopper_pearson_contains_the_rate_is_monotone_and_mirror_symmetric(n):
    """The same three properties for the exact interval, which also contains the Wilson one's rate
    at every k (both contain k/n)."""
    lo, hi = np.array([_stats.clopper_pearson(k, n) for k in range(n + 1)]).T
    rate = np.arange(n + 1) / n
    assert ((0 <= lo) & (lo <= rate) & (rate <= hi) & (hi <= 1)).all()
    assert (np.diff(lo) > 0).all() and (np.diff(hi) > 0).all()
    np.testing.assert_allclose(lo[::-1], 1 - hi, rtol=0, atol=1e-12)


@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=1, max_size=12),
       st.integers(0, 2**31 - 1))
@settings(max_examples=80, deadline=None)
def test_holm_is_permutation_equivariant_and_ignores_nans(p, seed):
    """holm(p[π]) = holm(p)[π] (ties included: tied p-values get one adjusted value), and each finite
    entry's adjusted value is that of the p-values without the NaNs."""
    p = np.array(p)
    adj = _stats.holm(p)
    perm = np.random.default_rng(seed).permutation(p.size)
    np.testing.assert_array_equal(_stats.holm(p[perm]), adj[perm])
    finite = ~np.isnan(p)
    assert np.isnan(adj[~finite]).all()
    np.testing.assert_array_equal(adj[finite], _stats.holm(p[finite]))
    assert (adj[finite] <= 1).all()


VALUES = st.lists(st.one_of(st.integers(-50, 50).map(float), st.floats(-1e6, 1e6), st.just(float("nan"))),
                  min_size=6, max_size=80)


@given(VALUES, st.integers(0, 2**31 - 1), st.sampled_from([0.5, 2.0, -1.0, -0.25]), st.integers(-8, 8).map(float))
@settings(max_examples=80, deadline=None)
def test_median_interval_brackets_the_median_and_follows_monotone_maps(values, seed, a, b):
    """For any data (ties, NaN dropped): the interval is the order statistics at scipy's ranks, holds
    the sample median, does not depend on the order of the data, and an affine map x → ax + b
    (a power of 2 times ±1, so exact) carries it along — reversed for a < 0."""
    x = np.array(values)
    kept = np.sort(x[~np.isnan(x)])
    assume(kept.size >= 6)
    lo, hi = _stats.median_interval(x)
    r = _scipy_rank(kept.size)
    assert (lo, hi) == (kept[r - 1], kept[kept.size - r])
    assert lo <= np.median(kept) <= hi
    assert _stats.median_interval(np.random.default_rng(seed).permutation(x)) == (lo, hi)
    mapped = _stats.median_interval(a * x + b)
    assert mapped == ((a * lo + b, a * hi + b) if a > 0 else (a * hi + b, a * lo + b))


# ----------------------------------------------------------------------------------------------
# ridge logistic regression (the landmark link's cell + diagnostics model)

def _logistic_problem(seed):
    """n runs, 2 features scaled ×1/3/10, outcomes at rate ≈ 0.2 (both present), offsets of saturated
    cell logits (±6.9 = logit 0.999): the shape on which full Newton steps from β = 0 overshoot."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 30))
    X = rng.standard_normal((n, 2)) * rng.choice([1, 3, 10])
    y = (rng.random(n) < 0.2).astype(float)
    y[0], y[1] = 1.0, 0.0
    return X, y, rng.choice([-6.9, -3.0, 0.0, 3.0, 6.9], n)


def _penalised_nll(beta, X, y, off, l2):
    eta = off + beta[0] + X @ beta[1:]
    return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * l2 * beta[1:] @ beta[1:])


@pytest.mark.parametrize("seed", [1, 5, 27])  # seeds on which full Newton steps sent the intercept to ~1e9–1e10
def test_fit_logistic_reaches_the_minimum_that_scipy_finds(seed):
    from scipy.optimize import minimize

    X, y, off = _logistic_problem(seed)
    beta = _stats.fit_logistic(X, y, off, l2=1.0)
    best = minimize(_penalised_nll, np.zeros(3), args=(X, y, off, 1.0), method="BFGS", options={"gtol": 1e-10})
    assert np.abs(beta).max() < 100, beta
    np.testing.assert_allclose(beta, best.x, rtol=0, atol=1e-5)
    assert _penalised_nll(beta, X, y, off, 1.0) <= best.fun + 1e-9


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6))
def test_fit_logistic_ends_where_the_penalised_gradient_vanishes(seed):
    """The optimality condition, written out: Σ (p − y)[1 x] + l2 (0, β₁…) = 0 at the returned β."""
    X, y, off = _logistic_problem(seed)
    beta = _stats.fit_logistic(X, y, off, l2=1.0)
    p = 1 / (1 + np.exp(-(off + beta[0] + X @ beta[1:])))
    grad = np.r_[np.sum(p - y), X.T @ (p - y) + beta[1:]]
    assert np.abs(grad).max() < 1e-6, (beta, grad)
