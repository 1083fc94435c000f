"""gap_probability: the Wilson intervals it reports (the shared ``_stats.wilson``), the Laguerre model, the
MP/Wigner prediction, a tiny run."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from stabkit.studies import _stats
from stabkit.studies import gap_probability as gp


def test_wilson_zero_successes_closed_form():
    n, z = 400, _stats.Z95
    lo, hi = _stats.wilson(0, n)
    assert lo == 0.0
    assert hi == pytest.approx(z ** 2 / (n + z ** 2), rel=1e-12)


def test_wilson_covers_known_p_in_bernoulli_simulation():
    rng = np.random.default_rng(1)
    p, n, reps = 0.03, 2000, 400
    k = rng.binomial(n, p, reps)
    lo, hi = _stats.wilson(k, n)
    coverage = np.mean((lo <= p) & (p <= hi))
    assert 0.92 <= coverage <= 0.98  # nominal 95%


def test_laguerre_model_matches_dense_wishart():
    d, n, m = 5, 12, 6000
    tri = gp.laguerre_eigvals(d, n, m, np.random.default_rng(2))
    dense = gp.dense_wishart_eigvals(d, n, m, np.random.default_rng(3))
    # E tr C = d and E tr C² = d (1 + (d + 1)/n) for C = XᵀX/n
    for lam in (tri, dense):
        assert lam.sum(1).mean() == pytest.approx(d, rel=0.01)
        assert (lam ** 2).sum(1).mean() == pytest.approx(d * (1 + (d + 1) / n), rel=0.02)
    for i in (0, d - 1):
        assert stats.ks_2samp(tri[:, i], dense[:, i]).pvalue > 1e-3
    gaps_t, gaps_d = np.diff(tri, axis=1).min(1), np.diff(dense, axis=1).min(1)
    assert stats.ks_2samp(gaps_t, gaps_d).pvalue > 1e-3


def test_mp_density_normalised_and_cubic_integral():
    gamma = 0.2
    a, b = gp.mp_edges(gamma)
    mass, _ = integrate.quad(lambda x: gp.mp_density(x, gamma), a, b, limit=200)
    mean, _ = integrate.quad(lambda x: x * gp.mp_density(x, gamma), a, b, limit=200)
    cubic, _ = integrate.quad(lambda x: gp.mp_density(x, gamma) ** 3, a, b, limit=400)
    assert mass == pytest.approx(1, abs=1e-8)
    assert mean == pytest.approx(1, abs=1e-8)
    assert gp.mp_cubic_integral(gamma) == pytest.approx(cubic, rel=1e-6)


def test_prediction_inside_measured_interval_gaussian_d16():
    cell = gp.cells({"sources": ["gaussian"], "dims": [16], "taus": [1e-3], "n_matrices": 4000, "chunk_size": 4000})[0]
    rows = pd.DataFrame(gp.run_cell(cell))
    r = rows[(rows["event"] == "abs")].iloc[0]
    lo, hi = _stats.wilson(r["count"], r["n"])
    assert r["count"] > 50
    assert lo <= r["pred_mp"] <= hi
    assert r["pred_unfold"] == pytest.approx(r["count"] / r["n"], rel=0.15)  # cruder: unfolded with chunk means


def test_k_event_equals_absolute_event_at_inverse_threshold():
    cell = gp.cells({"sources": ["gaussian"], "dims": [32], "taus": [1e-3], "n_matrices": 800, "chunk_size": 800,
                     "k_threshold": 1e3})[0]
    rows = pd.DataFrame(gp.run_cell(cell))
    assert rows.loc[rows["event"] == "K", "count"].item() == rows.loc[rows["event"] == "abs", "count"].item() > 0


def test_validate_rejects_unknown_key_and_source():
    with pytest.raises(ValueError, match="unknown grid key"):
        gp.validate({"dimz": [4]})
    with pytest.raises(ValueError, match="sources"):
        gp.validate({"sources": ["mnist"]})


def test_tiny_grid_runs_and_reports(tmp_path):
    grid = gp.validate({"sources": ["gaussian"], "dims": [4, 8], "n_matrices": 300, "chunk_size": 200,
                        "reduced": {"gaussian:8": 250}})
    cells = gp.cells(grid)
    assert [c["cell_id"] for c in cells] == ["gaussian-d8-c0", "gaussian-d8-c1", "gaussian-d4-c0", "gaussian-d4-c1"]
    rows = pd.DataFrame([r for c in cells for r in gp.run_cell(c)])
    agg = gp.aggregate(rows)
    assert set(agg.loc[agg["d"] == 8, "n"]) == {250} and set(agg.loc[agg["d"] == 4, "n"]) == {300}
    md = gp.report(rows, grid, tmp_path)
    assert "Wilson" in md and "gap_probability.png" in md
    assert (tmp_path / "gap_probability.png").stat().st_size > 0 and (tmp_path / "k_exceed.png").is_file()
    assert math.isfinite(agg["pred_mp"].dropna().max())
