"""Gradient metrics and spectrum diagnostics against closed forms."""

import math

import numpy as np
import pytest

from stabkit import metrics


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


def test_spectrum_diagnostics_of_an_unsorted_indefinite_spectrum():
    """λ given unsorted with negatives, (2, −8, ½, −1): sorted (−8, −1, ½, 2), smallest gap 1.5 (−1 → ½),
    max|λ| = 8 (not max λ = 2), min|λ| = ½ (not min λ = −8): rel gap 0.1875, K = 1/1.5, condition 16."""
    diag = metrics.spectrum_diagnostics(np.array([2.0, -8.0, 0.5, -1.0]))
    assert diag["min_abs_gap"] == pytest.approx(1.5, rel=1e-15)
    assert diag["min_rel_gap"] == pytest.approx(1.5 / 8, rel=1e-15)
    assert diag["max_abs_K"] == pytest.approx(1 / 1.5, rel=1e-15)
    assert diag["condition"] == pytest.approx(16.0, rel=1e-15)
    assert diag["numerical_rank"] == 4
