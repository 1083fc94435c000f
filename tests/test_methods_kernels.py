"""Kernel methods' F entry by entry: each against a brute-force loop of its docstring's formula, at
exact ties, at the thresholds, and the overflow rule on a hand-made batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import methods
from stabkit.methods import analytic_trunc, clip, clip_authors, degenerate, pade, taylor, taylor_song
from stabkit.methods._overflow import replace_nonfinite_per_sample


def _capped_sign_over_gap(lam, tau, tie):
    """sign(λ_j − λ_i) · min(1/|λ_j − λ_i|, τ) by a double loop; ``tie`` gives F_ij at λ_i = λ_j (i ≠ j)."""
    d = len(lam)
    F = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            gap = lam[j] - lam[i]
            if i != j:
                F[i, j] = tie(i, j) if gap == 0 else np.sign(gap) * min(1 / abs(gap), tau)
    return F


def test_clip_and_clip_authors_cap_at_tau_for_every_gap_below_one_over_tau():
    """TPAMI 2021 SVD-Clip: |F| = τ for |Δ| ≤ 1/τ — including gaps between 1/(2τ) and 1/τ (Δ = 0.007 at
    τ = 100: F = 100, not 1/0.007 ≈ 143) — and 1/|Δ| above; exact ties: index-order sign (clip), 0 (authors)."""
    lam = np.array([0.5, 1.0, 1.0, 1.004, 1.011, 1.0235, 2.0])
    tau = 100.0
    want_clip = _capped_sign_over_gap(lam, tau, lambda i, j: np.sign(j - i) * tau)
    want_authors = _capped_sign_over_gap(lam, tau, lambda i, j: 0.0)
    np.testing.assert_allclose(clip.kernel(lam, tau=tau), want_clip, rtol=1e-12)
    np.testing.assert_allclose(clip_authors.kernel(lam, tau=tau), want_authors, rtol=1e-12)
    assert clip_authors.kernel(lam, tau=tau)[3, 4] == pytest.approx(100.0, rel=1e-12)  # Δ = 1.011 − 1.004


@pytest.mark.parametrize("kernel, kwargs", [(taylor.kernel, {"K": 9}), (clip.kernel, {"tau": 100.0})])
def test_exact_tie_takes_the_limit_of_the_ascending_near_tie(kernel, kwargs):
    """F at an exact tie λ_i = λ_j (i < j) is the limit λ_j → λ_i⁺ of the sorted spectrum: +, and −
    for F_ji (index-order sign, ``pair_sign``), so a tie that LAPACK splits by one ulp changes nothing."""
    tied, split = np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0 + 1e-13, 3.0])
    F_tied, F_split = kernel(tied, **kwargs), kernel(split, **kwargs)
    assert F_tied[1, 2] > 0 > F_tied[2, 1]
    np.testing.assert_allclose(F_tied, F_split, rtol=1e-10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10.0, 10.0), min_size=2, max_size=6), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
def test_degenerate_zeroes_exactly_the_pairs_within_its_tolerance(values, atol, rtol):
    """Kasim (arXiv:2011.04366): F_ij = 0 where |Δ| < atol + rtol·max(|λ_i|, |λ_j|), else 1/Δ — a double loop."""
    lam = np.sort(np.array(values))
    d = len(lam)
    want = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            gap = lam[j] - lam[i]
            if i != j and not abs(gap) < atol + rtol * max(abs(lam[i]), abs(lam[j])):
                with np.errstate(divide="ignore", over="ignore"):  # 1/0 or 1/subnormal = ±∞, as the kernel
                    want[i, j] = np.divide(1.0, gap)
    np.testing.assert_allclose(degenerate.kernel(lam, atol=atol, rtol=rtol), want, rtol=1e-15, atol=0)


def test_degenerate_uses_the_larger_magnitude_so_F_stays_antisymmetric():
    """rtol = 0.1, λ = 1 and 1.105: 0.105 < 0.1·1.105 (the larger |λ|), so both F_01 and F_10 are 0;
    scaling by |λ_i| alone would zero only F_10 (0.105 ≥ 0.1·1)."""
    F = degenerate.kernel(np.array([1.0, 1.105, 3.0]), atol=0.0, rtol=0.1)
    assert F[0, 1] == 0 and F[1, 0] == 0
    np.testing.assert_array_equal(F, -F.T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_degenerate_default_tolerances_are_eps_to_the_0_6_and_0_4(dtype):
    """Defaults atol = eps^0.6, rtol = eps^0.4 (xitorch): at λ = 100, a gap of 0.5·rtol·100 is degenerate
    (zero) and a gap of 4·rtol·100 at λ = 200 is not; with atol and rtol swapped the first would not be."""
    eps = float(np.finfo(dtype).eps)
    rtol = eps ** 0.4
    assert degenerate.default_tolerances(np.dtype(dtype)) == pytest.approx((eps ** 0.6, rtol), rel=1e-12)
    inside, outside = 0.5 * rtol * 100, 4 * rtol * 100
    lam = np.array([100.0, 100.0 + inside, 200.0, 200.0 + outside], dtype=dtype)
    F = degenerate.kernel(lam)
    gap = float(lam[3]) - float(lam[2])
    assert F[0, 1] == 0 and F[2, 3] == pytest.approx(1 / gap, rel=1e-6)


def test_pade_exact_tie_is_the_samples_largest_finite_entry_in_both_places():
    """Song et al. ICCV 2021, as published: at an exact tie F_ij = F_ji = +∞ (same sign), which the
    overflow rule replaces by the sample's largest finite entry — not −∞ → its smallest."""
    lam = np.array([1.0, 2.0, 2.0, 3.0])
    raw = pade.kernel_raw(lam)
    assert raw[1, 2] == raw[2, 1] == np.inf
    F = pade.kernel(lam)
    largest = raw[np.isfinite(raw)].max()
    assert largest == pytest.approx(1.0)  # F_01 = 1/(2 − 1)
    assert F[1, 2] == F[2, 1] == largest


def test_overflow_replacement_by_hand():
    """+∞ and NaN → the sample's largest finite entry, −∞ → its smallest, each sample on its own."""
    inf, nan = np.inf, np.nan
    F = np.array([[[0.0, inf, -1.0], [-inf, 0.0, 2.0], [nan, 3.0, 0.0]],
                  [[4.0, 5.0, inf], [-inf, 6.0, 7.0], [nan, 8.0, 9.0]]])
    want = np.array([[[0.0, 3.0, -1.0], [-1.0, 0.0, 2.0], [3.0, 3.0, 0.0]],
                     [[4.0, 5.0, 9.0], [4.0, 6.0, 7.0], [9.0, 8.0, 9.0]]])
    np.testing.assert_array_equal(replace_nonfinite_per_sample(F), want)


def test_analytic_trunc_drops_an_eigenvalue_equal_to_eps():
    """Wang et al. NeurIPS 2019, cut at the first λ ≤ ε: λ = ε exactly (0.5, binary-exact on a diagonal
    matrix) is dropped with everything below it."""
    lam = np.array([0.25, 0.5, 1.0])
    np.testing.assert_array_equal(analytic_trunc.kept_above(lam, 0.5), [False, False, True])
    _, _, state = methods.spec("analytic-trunc:eps=0.5").forward(np.diag(lam[::-1]))
    np.testing.assert_array_equal(state["kept"], [False, False, True])


@pytest.mark.parametrize("name", ["taylor", "taylor-authors"])
def test_taylor_at_two_zero_eigenvalues_is_infinite_only_where_the_gradient_splits_the_tie(name):
    """λ = (0, 0, 3), ε = 0: the series' λ_lo/λ_hi is 0/0 at the zero pair. Taken as 1 there, |F_01| =
    (K+1)/0 = ∞ (like the analytic rule at a tie) and the λ-only gradient U diag(∂L/∂λ) Uᵀ = I is exact;
    a loss whose Uᵀ∂L/∂U is nonzero at the pair gets the analytic rule's non-finite ∂L/∂A (no derivative)."""
    spec = methods.spec(name)
    F = spec.kernel(np.array([0.0, 0.0, 3.0]))
    assert np.isposinf(F[0, 1]) and np.isinf(F[1, 0]) and F[0, 2] == F[1, 2] == pytest.approx(1 / 3)
    state = {"U": np.eye(3), "lam": np.array([0.0, 0.0, 3.0])}
    np.testing.assert_array_equal(spec.backward(state, np.zeros((3, 3)), np.ones(3)), np.eye(3))
    gU = np.zeros((3, 3))
    gU[0, 1] = 1.0  # (Uᵀ∂L/∂U)_01 ≠ 0 at the tied zero pair
    g = spec.backward(state, gU, np.ones(3))
    exact = methods.spec("analytic").backward(state, gU, np.ones(3))  # U (∞ at (0, 1)) Uᵀ: ∞ and 0 · ∞
    assert not np.isfinite(exact).all()
    np.testing.assert_array_equal(g, exact)
    with_eps = spec.replace(eps=1e-3).kernel(np.array([0.0, 0.0, 3.0]))
    assert with_eps[0, 1] == pytest.approx(10 / 1e-3)  # (K+1)/(0 + ε): λ + ε > 0 bounds it


def test_pade_and_taylor_song_outside_a_positive_spectrum_as_documented():
    """Song et al. (ICCV 2021) form F from 1/λ_hi and λ_lo/λ_hi, meant for λ > 0: a tie of negative
    eigenvalues is −∞ (then the sample's smallest entry: −1/2, from the pair (1, 3)); a zero λ_hi above
    a negative λ_lo is ∞/∞ = NaN, then the sample's largest entry (1 = 1/(1 − 0)), not ±1/3; the
    K = 100 series diverges for |λ_lo/λ_hi| > 1."""
    F = pade.kernel(np.array([-2.0, -2.0, 1.0, 3.0]))
    assert F[0, 1] == F[1, 0] == F[3, 2] == pytest.approx(-0.5, rel=1e-15) and F[0, 2] == pytest.approx(1 / 3, rel=1e-15)
    np.testing.assert_allclose(pade.kernel(np.array([-3.0, 0.0, 1.0])),
                               [[0, 1, 0.25], [1, 0, 1], [-0.25, -1, 0]], rtol=1e-15)
    assert taylor_song.kernel(np.array([-2.0, 1.0]))[0, 1] == pytest.approx((1 + 2**101) / 3, rel=1e-12)
