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


def test_spectrum_diagnostics():
    lam = np.array([0.0, 1.0, 1.001, 4.0])
    diag = metrics.spectrum_diagnostics(lam)
    assert diag["min_abs_gap"] == pytest.approx(1e-3, rel=1e-9)
    assert diag["min_rel_gap"] == pytest.approx(2.5e-4, rel=1e-9)
    assert diag["max_abs_K"] == pytest.approx(1e3, rel=1e-9)
    assert diag["numerical_rank"] == 3
    assert diag["condition"] == math.inf
    assert metrics.spectrum_diagnostics(np.array([0.5, 2.0]))["condition"] == pytest.approx(4.0)
