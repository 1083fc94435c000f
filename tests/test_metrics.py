"""Gradient metrics and spectrum diagnostics against closed forms."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stabkit import metrics
from stabkit.errors import InputError


@pytest.mark.parametrize("theta_deg", [1e-7, 0.5, 30.0, 90.0, 179.0])
def test_angle_closed_form(theta_deg):
    t = math.radians(theta_deg)
    a = np.array([[math.cos(t), math.sin(t)], [0.0, 0.0]])
    b = np.array([[3.0, 0.0], [0.0, 0.0]])
    assert metrics.angle_deg(a, b) == pytest.approx(theta_deg, rel=1e-9)


def test_errors_and_ratios():
    g_true = np.array([[3.0, 4.0], [4.0, 0.0]])
    g = 2 * g_true
    assert metrics.rel_err(g, g_true) == pytest.approx(1.0)
    assert metrics.norm_ratio(g, g_true) == pytest.approx(2.0)
    bad = g.copy()
    bad[0, 0] = np.inf
    out = metrics.gradient_metrics(bad, g_true)
    assert out["finite"] is False and math.isnan(out["angle_deg"]) and math.isnan(out["rel_err"])


@pytest.mark.parametrize("scale", [1e-200, 1e-170, 1e170, 1e250])
def test_metrics_hold_far_outside_the_range_of_squares(scale):
    """Entries whose squares over- or underflow (a certified truth can reach 1e164): the closed forms
    of the 2×2 example above, at every scale."""
    t = math.radians(30.0)
    a = scale * np.array([[math.cos(t), math.sin(t)], [0.0, 0.0]])
    b = scale * np.array([[3.0, 0.0], [0.0, 0.0]])
    assert metrics.angle_deg(a, b) == pytest.approx(30.0, rel=1e-9)
    assert metrics.angle_deg(-b, b) == pytest.approx(180.0, rel=1e-12)
    g_true = scale * np.array([[3.0, 4.0], [4.0, 0.0]])
    assert metrics.rel_err(2 * g_true, g_true) == pytest.approx(1.0, rel=1e-12)
    assert metrics.rel_err(-g_true, g_true) == pytest.approx(2.0, rel=1e-12)
    assert metrics.norm_ratio(g_true / 2, g_true) == pytest.approx(0.5, rel=1e-12)


def test_zero_truth_and_shape_mismatch():
    g = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert metrics.rel_err(g, 0 * g) == math.inf and metrics.norm_ratio(g, 0 * g) == math.inf
    assert metrics.rel_err(0 * g, 0 * g) == 0.0 and metrics.angle_deg(0 * g, 0 * g) == 0.0
    assert metrics.angle_deg(g, 0 * g) == 90.0
    with pytest.raises(ValueError, match="shape"):
        metrics.angle_deg(np.ones((3, 3)), np.ones(3))


def test_spectrum_diagnostics():
    lam = np.array([0.0, 1.0, 1.001, 4.0])
    diag = metrics.spectrum_diagnostics(lam)
    assert diag["min_abs_gap"] == pytest.approx(1e-3, rel=1e-9)
    assert diag["min_rel_gap"] == pytest.approx(2.5e-4, rel=1e-9)
    assert diag["max_abs_K"] == pytest.approx(1e3, rel=1e-9)
    assert diag["numerical_rank"] == 3
    assert diag["condition"] == math.inf
    assert metrics.spectrum_diagnostics(np.array([0.5, 2.0]))["condition"] == pytest.approx(4.0)


@pytest.mark.parametrize("lam, dtype, match", [
    ([], np.float64, r"non-empty 1-D vector of real eigenvalues, got shape \(0,\)"),
    (np.ones((2, 2)), np.float64, r"1-D vector .* got shape \(2, 2\)"),
    (5.0, np.float64, r"1-D vector .* got shape \(\)"),
    (np.array([1.0, 2.0j]), np.float64, "dtype complex128"),
    ([1.0, np.nan, 3.0], np.float64, r"non-finite entries \(1 of 3\)"),
    ([1.0, 2.0], np.int64, "dtype must be a floating-point dtype"),
    ([1.0, 2.0], "int32", "dtype must be a floating-point dtype"),
    ([1.0, 2.0], "x", "dtype must be a floating-point dtype"),
], ids=["empty", "matrix", "scalar", "complex", "nan", "int64-dtype", "int32-dtype", "bad-dtype"])
def test_spectrum_diagnostics_refuses_bad_input(lam, dtype, match):
    """Before: numpy's ValueError (empty, integer dtype), AxisError (scalar), or silently mixed or
    NaN numbers (a matrix, a NaN eigenvalue)."""
    with pytest.raises(InputError, match="spectrum_diagnostics: .*" + match):
        metrics.spectrum_diagnostics(lam, dtype=dtype)


def test_spectrum_diagnostics_accepts_integer_eigenvalues():
    assert metrics.spectrum_diagnostics(np.array([1, 2, 4]))["condition"] == 4.0


def test_numerical_rank_threshold_is_d_eps_max_lambda_of_the_dtype():
    # d = 4, max|λ| = 4: the threshold is 16·eps — 3.6e-15 in float64, 1.9e-6 in float32; a λ just
    # above or below it counts or not, and a rounding-level λ (1e-10) counts in float64 only
    for dtype in (np.float64, np.float32):
        tol = 4 * float(np.finfo(dtype).eps) * 4.0
        for small, counted in ((1.01 * tol, True), (0.99 * tol, False)):
            lam = np.array([small, 1.0, 2.0, 4.0])
            assert metrics.spectrum_diagnostics(lam, dtype=dtype)["numerical_rank"] == 3 + counted, (dtype, small)
    lam = np.array([1e-10, 1.0, 2.0, 4.0])
    assert metrics.spectrum_diagnostics(lam)["numerical_rank"] == 4
    assert metrics.spectrum_diagnostics(lam, dtype=np.float32)["numerical_rank"] == 3


def test_numerical_rank_of_a_torch_dtype_uses_its_eps():
    """dtype=torch.float32 (what a tensor's .dtype gives) was refused as "must be a floating-point
    dtype", because np.dtype() cannot read it. d = 4, max|λ| = 4: threshold 16·eps, 1.9e-6 in
    float32 (torch's eps is IEEE's 2^-23, as numpy's), so λ = 1e-6 is not counted there, in float64 it is."""
    import torch

    lam = np.array([1e-6, 1.0, 2.0, 4.0])
    assert 16 * 2.0**-23 > 1e-6 > 16 * 2.0**-52
    assert metrics.spectrum_diagnostics(lam, dtype=torch.float32)["numerical_rank"] == 3
    assert metrics.spectrum_diagnostics(lam, dtype=torch.float64)["numerical_rank"] == 4
    with pytest.raises(InputError, match="dtype must be a floating-point dtype .*got torch.int64"):
        metrics.spectrum_diagnostics(lam, dtype=torch.int64)


def test_metrics_at_the_top_of_float64s_range():
    """Entries at or above 2^1023 (a power-of-2 scale there is 2^1024, itself not a float):
    closed forms, and an honest inf where the ratio itself exceeds float64."""
    big = 1e308
    assert metrics.rel_err([big, 1.0], [1.0, 1.0]) == pytest.approx(math.hypot(big - 1, 0) / math.sqrt(2), rel=1e-12)
    assert metrics.rel_err([-big, -big], [big, big]) == pytest.approx(2.0, rel=1e-12)
    assert metrics.norm_ratio([big, big], [big / 4, big / 4]) == pytest.approx(4.0, rel=1e-12)
    assert metrics.norm_ratio([big, 0.0], [1e-300, 0.0]) == math.inf
    assert metrics.norm_ratio([1e-300, 0.0], [big, 0.0]) == 0.0  # 1e-608 underflows
    assert metrics.angle_deg([big, big], [1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.angle_deg([big, 0.0], [0.0, 5e-324]) == pytest.approx(90.0, rel=1e-12)


@pytest.mark.parametrize("metric", [metrics.angle_deg, metrics.rel_err, metrics.norm_ratio])
def test_a_complex_gradient_is_refused_not_cast_to_its_real_part(metric):
    """g = (1 + i)·g* scored angle 0° and rel_err 0 (numpy dropped the imaginary part with a warning)."""
    g_true = np.eye(2)
    for g, truth in ((g_true * (1 + 1j), g_true), (g_true, g_true * 1j), (np.array([["a", "b"], ["c", "d"]]), g_true)):
        with pytest.raises(ValueError, match="a real gradient is needed"):
            metric(g, truth)
    assert metric(np.eye(2, dtype=np.float32), g_true) == metric(g_true, g_true)


def test_finite_refuses_what_is_not_numeric_as_the_other_metrics_do():
    """finite(None), finite of text or of an object array raised numpy's TypeError ("ufunc 'isfinite'
    not supported for the input types") where angle_deg & co. raise InputError naming the dtype."""
    for bad in (None, "ab", np.array([1.0, "a"], dtype=object)):
        with pytest.raises(InputError, match="finite: g has dtype .*; a numeric gradient is needed"):
            metrics.finite(bad)
    assert metrics.finite([[1, 2], [3, 4]]) and metrics.finite(np.float32(1e38))
    assert not metrics.finite(np.array([1.0, np.inf])) and not metrics.finite(np.array([[np.nan]]))


def test_spectrum_diagnostics_of_an_unsorted_indefinite_spectrum():
    """λ given unsorted with negatives, (2, −8, ½, −1): sorted (−8, −1, ½, 2), smallest gap 1.5 (−1 → ½),
    max|λ| = 8 (not max λ = 2), min|λ| = ½ (not min λ = −8): rel gap 0.1875, K = 1/1.5, condition 16."""
    diag = metrics.spectrum_diagnostics(np.array([2.0, -8.0, 0.5, -1.0]))
    assert diag["min_abs_gap"] == pytest.approx(1.5, rel=1e-15)
    assert diag["min_rel_gap"] == pytest.approx(1.5 / 8, rel=1e-15)
    assert diag["max_abs_K"] == pytest.approx(1 / 1.5, rel=1e-15)
    assert diag["condition"] == pytest.approx(16.0, rel=1e-15)
    assert diag["numerical_rank"] == 4


# ------------------------------------------------------------------------------ properties
#: 3 × 3 gradients with entries of moderate size (no subnormals), norm ≥ 1e-3 (assumed where used)
GRADS = hnp.arrays(np.float64, (3, 3), elements=st.floats(-100.0, 100.0, allow_subnormal=False))
#: positive scales over most of float64's range: c·g neither overflows nor loses its direction
SCALES = st.floats(1e-150, 1e150)


def _nonzero(*gs):
    assume(all(np.linalg.norm(g) >= 1e-3 for g in gs))


@settings(max_examples=80, deadline=None)
@given(g=GRADS, t=GRADS, c1=SCALES, c2=SCALES)
def test_angle_is_a_symmetric_angle_between_directions(g, t, c1, c2):
    """angle(c₁g, c₂t) = angle(g, t) for c > 0, symmetric, 0 for g = t, 180 for g = −t, and
    angle(g, t) + angle(g, −t) = 180; the value is arccos of the cosine where that is well conditioned."""
    _nonzero(g, t)
    theta = metrics.angle_deg(g, t)
    assert 0.0 <= theta <= 180.0
    assert metrics.angle_deg(c1 * g, c2 * t) == pytest.approx(theta, abs=1e-9)
    assert metrics.angle_deg(t, g) == theta
    assert metrics.angle_deg(g, g) == 0.0 and metrics.angle_deg(g, -g) == 180.0
    assert metrics.angle_deg(c1 * g, -c2 * g) == pytest.approx(180.0, abs=1e-9)
    assert theta + metrics.angle_deg(g, -t) == pytest.approx(180.0, abs=1e-9)
    cos = float((g * t).sum() / (np.linalg.norm(g) * np.linalg.norm(t)))
    if abs(cos) < 0.99:
        assert theta == pytest.approx(math.degrees(math.acos(cos)), abs=1e-8)


@settings(max_examples=80, deadline=None)
@given(g=GRADS, t=GRADS, c=SCALES)
def test_rel_err_and_norm_ratio_scale_and_obey_the_law_of_cosines(g, t, c):
    """rel_err(cg, ct) = rel_err(g, t), norm_ratio(cg, t) = c·norm_ratio(g, t), rel_err(g, g) = 0,
    rel_err(−t, t) = 2, and the three metrics are one triangle: rel_err² = r² + 1 − 2r·cos θ."""
    _nonzero(g, t)
    err, ratio, theta = metrics.rel_err(g, t), metrics.norm_ratio(g, t), metrics.angle_deg(g, t)
    assert err == pytest.approx(np.linalg.norm(g - t) / np.linalg.norm(t), rel=1e-12)
    assert metrics.rel_err(c * g, c * t) == pytest.approx(err, rel=1e-12)
    assert metrics.norm_ratio(c * g, t) == pytest.approx(c * ratio, rel=1e-12)
    assert metrics.rel_err(g, g) == 0.0 and metrics.rel_err(-c * t, c * t) == pytest.approx(2.0, rel=1e-15)
    law = ratio**2 + 1 - 2 * ratio * math.cos(math.radians(theta))
    assert err**2 == pytest.approx(law, abs=1e-9 * (1 + ratio) ** 2)


SPECTRUM = st.lists(st.integers(-10**6, 10**6).map(lambda v: v / 1024), min_size=1, max_size=12)


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


@settings(max_examples=80, deadline=None)
@given(lam=SPECTRUM, k=st.integers(-30, 30), perm_seed=st.integers(0, 2**31 - 1))
def test_spectrum_diagnostics_invariances(lam, k, perm_seed):
    """Invariant to the order of λ and to λ → −λ; under λ → 2^k λ (exact) the gap scales by 2^k, K by
    2^−k, and the relative gap, rank and condition do not change; min_abs_gap is the smallest pairwise
    |λ_i − λ_j| found by brute force."""
    lam = np.array(lam)
    base = metrics.spectrum_diagnostics(lam)
    _same(metrics.spectrum_diagnostics(np.random.default_rng(perm_seed).permutation(lam)), base)
    _same(metrics.spectrum_diagnostics(-lam), base)
    c = 2.0**k
    scaled = metrics.spectrum_diagnostics(c * lam)
    _same({key: scaled[key] for key in ("min_rel_gap", "numerical_rank", "condition")},
          {key: base[key] for key in ("min_rel_gap", "numerical_rank", "condition")})
    assert scaled["min_abs_gap"] == c * base["min_abs_gap"] and scaled["max_abs_K"] == base["max_abs_K"] / c
    pairs = [abs(a - b) for i, a in enumerate(lam) for b in lam[i + 1:]]
    assert base["min_abs_gap"] == (min(pairs) if pairs else math.inf)


@pytest.mark.parametrize("truth", [[math.nan, 0.0], [math.inf, 0.0], [-math.inf, 1.0]], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("g", [[0.0, 0.0], [1.0, 2.0]], ids=["zero-g", "g"])
def test_a_non_finite_truth_gives_nan_not_a_number_that_looks_measured(truth, g):
    """An Inf truth is a gradient beyond float64 (its true size unknown), a NaN one no truth at all.
    Before: angle 90° for a zero g against a NaN/Inf truth, norm_ratio 0.0 for any finite g against
    an Inf truth (the true ratio ‖g‖/‖g*‖ is unknown, not 0), and a RuntimeWarning from 0·inf."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = metrics.gradient_metrics(g, truth)
    assert math.isnan(out["angle_deg"]) and math.isnan(out["rel_err"]) and math.isnan(out["norm_ratio"]), out
    assert out["finite"] is True  # ``finite`` is about g alone


def test_relative_gap_where_the_absolute_gap_overflows():
    """λ = (−1e308, 1e308): λ₂ − λ₁ = 2e308 is beyond float64 (inf, honestly) but the relative gap
    is (λ₂ − λ₁)/max|λ| = 2 exactly. Before: inf (the overflowed gap divided by 1e308)."""
    diag = metrics.spectrum_diagnostics(np.array([-1e308, 1e308]))
    assert diag["min_abs_gap"] == math.inf and diag["min_rel_gap"] == 2.0
    diag = metrics.spectrum_diagnostics(np.array([1.7e308, -1.5e308, 1.6e308]))
    assert diag["min_rel_gap"] == pytest.approx(0.1 / 1.7, rel=1e-14)  # 1.7e308 − 1.6e308, finite: unchanged
    diag = metrics.spectrum_diagnostics(np.array([1.7e308, -1.5e308]))
    assert diag["min_rel_gap"] == pytest.approx(3.2 / 1.7, rel=1e-15)
