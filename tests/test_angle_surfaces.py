"""angle_surfaces: the discarded-energy closed form, the 3×3 angle bound, a tiny run with report."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stabkit import metrics
from stabkit.studies import _grid
from stabkit.studies import angle_surfaces as ang


@pytest.mark.parametrize("K", [0, 1, 9, 25])
def test_discarded_share_is_one_minus_taylor_sum_over_exact(K):
    r = np.array([0.01, 0.3, 0.5, 0.9, 0.99])
    taylor_sum = np.array([sum(x ** k for k in range(K + 1)) for x in r])  # (1/λ_i)Σ r^k with λ_i = 1
    exact = 1 / (1 - r)  # 1/(λ_i − λ_j)
    independent = 1 - taylor_sum / exact
    measured = ang.discarded_share(K, r)
    np.testing.assert_allclose(measured, independent, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(measured, r ** (K + 1), rtol=1e-10, atol=1e-14)


def test_kantorovich_bound_is_attained_and_respected():
    m = 0.2
    # equality case: k = (√m, 1), c = (1, m) gives cos θ = 2√m/(1+m) exactly
    k = np.array([math.sqrt(m), 1.0])
    c = np.array([1.0, m])
    assert ang.kantorovich_angle_bound(c) == pytest.approx(metrics.angle_deg(c * k, k), abs=1e-10)
    assert ang.kantorovich_angle_bound(c) == pytest.approx(math.degrees(math.acos(2 * math.sqrt(m) / (1 + m))), abs=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = rng.uniform(0.01, 5, 3)
        c = rng.uniform(0.01, 1, 3)
        assert metrics.angle_deg(c * k, k) <= ang.kantorovich_angle_bound(c) + 1e-9


def test_angle3_bound_has_no_violation_and_known_values():
    rows = pd.DataFrame(ang.angle3_rows(41, ["taylor", "clip:tau=10"]))
    assert ((rows["angle_deg"] - rows["bound_deg"]) > 1e-9).sum() == 0
    # Taylor with ratios ≤ 0.1: both factors are 1 − 1e-10 or closer → angle ≤ bound ≈ 0
    small = rows[(rows["method"] == "taylor") & (rows["x"] <= 0.1)]
    assert small["angle_deg"].max() < 1e-6
    # clip with τ = 10 is inactive where 1 − λ₂/λ₁ ≥ 0.1 → exact column, angle 0
    inactive = rows[(rows["method"] == "clip:tau=10") & (rows["x"] <= 0.85)]
    assert inactive["angle_deg"].max() == 0.0
    # a point computed by hand: x = 0.95, y = 0.5, clip τ = 10 → column (20, 2) becomes (10, 2)
    p = rows[(rows["method"] == "clip:tau=10") & np.isclose(rows["x"], 0.95) & np.isclose(rows["y"], 0.5)].iloc[0]
    expected = math.degrees(math.acos((20 * 10 + 2 * 2) / (math.hypot(20, 2) * math.hypot(10, 2))))
    assert p["angle_deg"] == pytest.approx(expected, abs=1e-9)


def test_tiny_grid_runs_and_reports(tmp_path):
    grid = ang.validate({"energy_K": [1, 5, 9], "energy_ratios": 8, "ratio_points": 15, "k_values": [3, 9], "eps_values": [0.0, 1e-3],
                         "cluster_d": 4, "gap_deltas": [1e-2, 1e-6], "gap_dims": [4, 6], "gap_methods": ["taylor", "analytic"]})
    cells = ang.cells(grid)
    assert len(cells) == 1 + 1 + 2 + 4
    rows = pd.DataFrame([r for c in cells for r in ang.run_cell(c)])
    k = rows[rows["part"] == "k_eps"]
    assert len(k) == 4 and k["angle_deg"].notna().all()
    # the analytic method is exact on a separated-enough cluster (gap 1e-2 relative)
    gd = rows[(rows["part"] == "gap_d") & (rows["method"] == "analytic") & (rows["delta"] == 1e-2)]
    assert gd["angle_deg"].max() < 1e-6
    md = ang.report(rows, grid, tmp_path)
    for name in ("energy_contour.png", "energy_surface.png", "angle3_taylor_contour.png", "k_eps_surface.png", "gap_d_taylor_contour.png"):
        assert (tmp_path / name).stat().st_size > 0
        assert name in md
    assert "violated at 0 of" in md


def test_validate_rejects_bad_method_and_part():
    with pytest.raises(ValueError, match="unknown method"):
        ang.validate({"gap_methods": ["nope"]})
    with pytest.raises(ValueError, match="parts"):
        ang.validate({"parts": ["volume"]})
    with pytest.raises(ValueError, match="series_method 'clip' must be a kernel method with a degree K"):
        ang.validate({"series_method": "clip"})
    with pytest.raises(ValueError, match="angle_methods: torch has no kernel"):
        ang.validate({"angle_methods": ["torch"]})


def test_the_compared_methods_are_grid_data():
    grid = ang.validate({})
    assert grid["series_method"] == "taylor" and grid["angle_methods"] == ["taylor", "clip"]
    cell = [c for c in ang.cells({**grid, "parts": ["angle3"], "angle_methods": ["clip"], "ratio_points": 9})][0]
    rows = pd.DataFrame(ang.run_cell(cell))
    assert set(rows["method"]) == {"clip"}
    # the series method's own parameters travel with it: a shift eps changes the discarded share
    r = np.array([0.5])
    assert ang.discarded_share(3, r, "taylor:eps=0.1")[0] != ang.discarded_share(3, r)[0]


REPO = Path(__file__).resolve().parents[1]


def _independent_3x3(points, tau):
    """Clip's λ₁ column angle and Kantorovich bound on the study's grid, computed here from scratch."""
    t = np.linspace(0, 1, points)[1:-1]
    x, y = (a.ravel() for a in np.meshgrid(t, t, indexing="ij"))
    x, y = x[y < x], y[y < x]
    k = np.stack([1 / (1 - x), 1 / (1 - y)], 1)
    clipped = np.minimum(k, tau)
    cos = (k * clipped).sum(1) / np.linalg.norm(k, axis=1) / np.linalg.norm(clipped, axis=1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    c = clipped / k
    m = c.min(1) / c.max(1)
    bound = np.degrees(np.arccos(np.minimum(2 * np.sqrt(m) / (1 + m), 1)))
    dom = x + y <= 1
    return angle.max(), angle[dom].max(), bound[dom].max()


def test_study_file_compares_clip_at_the_papers_tau_100():
    study, kind, grid = _grid.load_study(REPO / "studies/angle-surfaces.toml")
    cell = next(c for c in _grid.expand(study, kind, grid) if c["part"] == "angle3")
    rows = pd.DataFrame(ang.run_cell({**cell, "methods": [m for m in cell["methods"] if m.startswith("clip")]}))
    top, top_dom, bound_dom = _independent_3x3(cell["points"], 100.0)
    assert top == pytest.approx(4.40, abs=0.01) and top_dom == pytest.approx(0.0963, abs=1e-4)  # the review's numbers
    dom = rows[rows["energy_top"] >= 0.5]
    assert rows["angle_deg"].max() == pytest.approx(top, abs=1e-9)
    assert dom["angle_deg"].max() == pytest.approx(top_dom, abs=1e-9)
    assert dom["bound_deg"].max() == pytest.approx(bound_dom, abs=1e-6)


def test_energy_table_uses_the_closed_form_ratio(tmp_path):
    grid = ang.validate({"parts": ["energy"], "energy_K": [9, 19], "energy_ratios": 60})
    rows = pd.DataFrame([r for c in ang.cells(grid) for r in ang.run_cell(c)])
    md = ang.report(rows, grid, tmp_path)
    for K in (9, 19):
        line = next(l for l in md.splitlines() if l.startswith(f"| {K} |"))
        cells = [float(v) for v in line.strip("|").split("|")]
        assert cells[1] == pytest.approx(0.5 ** (1 / (K + 1)), abs=5e-4)  # 0.933, 0.966 (the grid gave 0.941, 0.957)
        assert cells[2] == pytest.approx(0.01 ** (1 / (K + 1)), abs=5e-4)


def _table(md, header_start):
    """The rows of the markdown table after the line starting with ``header_start``, as lists of cells."""
    lines = md.splitlines()
    i = next(j for j, l in enumerate(lines) if l.startswith(header_start))
    out = []
    for l in lines[i + 4:]:
        if not l.startswith("|"):
            break
        out.append([c.strip() for c in l.strip("|").split("|")])
    return out


def test_seed_tables_state_spread_and_text_quotes_the_tables_extremes(tmp_path):
    # constructed: 3 seeds; per-seed maximum 10 at (d=4, δ=1e-8), but the largest median is 7 at (d=64, δ=1e-2)
    vals = {(4, 1e-8): [0.5, 6.0, 10.0], (4, 1e-2): [0.5, 5.0, 9.0], (64, 1e-8): [6.9, 6.95, 7.2], (64, 1e-2): [6.5, 7.0, 7.1]}
    rows = [{"part": "gap_d", "method": "m", "d": d, "delta": dl, "seed": s, "family": "cluster", "min_abs_gap": 0.55 * dl,
             "angle_deg": v, "finite": True} for (d, dl), vs in vals.items() for s, v in enumerate(vs)]
    grid = ang.validate({"parts": ["gap_d"], "gap_methods": ["taylor"]})
    md = ang.report(pd.DataFrame(rows), grid, tmp_path)
    table = _table(md, "**m**")
    cells = {(int(r[0]), j): r[1 + j] for r in table for j in range(2)}
    parsed = {key: [float(v) for v in re.match(r"([\d.e+-]+) \[([\d.e+-]+)–([\d.e+-]+)\]", c).groups()] for key, c in cells.items()}
    medians = [p[0] for p in parsed.values()]
    assert sorted(medians) == sorted(float(np.median(v)) for v in vals.values())  # median of the 3 seeds
    assert min(p[1] for p in parsed.values()) == 0.5 and max(p[2] for p in parsed.values()) == 10.0
    assert "n = 3 per cell" in md and "0.55 × delta" in md
    bullet = next(l for l in md.splitlines() if l.startswith("- m:"))
    assert "largest median 7° at d = 64, delta = 0.01 (within 1% of it in 2 of 4 cells" in bullet  # 7.0 and 6.95
    assert "single seeds range 0.5°–10°" in bullet


def test_deviations_table_lists_a_changed_parameter(tmp_path):
    grid = ang.validate({"parts": ["angle3"], "ratio_points": 9, "angle_methods": ["taylor", "clip:tau=10"]})
    rows = pd.DataFrame([r for c in ang.cells(grid) for r in ang.run_cell(c)])
    md = ang.report(rows, grid, tmp_path)
    assert "| 3×3 angle: clip | tau = 100 | tau = 10 |" in md
    assert "3×3 angle: taylor" not in md  # at its paper (registry) defaults


@pytest.mark.parametrize("part, key", [("energy", "energy_K"), ("k_eps", "k_values"), ("k_eps", "eps_values"),
                                       ("gap_d", "gap_deltas"), ("gap_d", "gap_dims")])
def test_a_contour_axis_of_one_value_is_refused_before_any_cell(part, key):
    """The report's contour plot of that part needs two values per axis: with one, every cell was
    computed, then building the report raised matplotlib's TypeError (a traceback, exit 1)."""
    one = [ang.GRID_DEFAULTS[key][-1]]
    config = {"study": {"name": "a", "kind": "angle_surfaces"}, "grid": {"parts": [part], key: one}}
    with pytest.raises(ValueError, match=f"angle_surfaces: {key} needs at least 2 values"):
        _grid.load_study(config)
    _grid.load_study({**config, "grid": {"parts": [p for p in ang.PARTS if p != part], key: one}})  # unused there


@pytest.mark.parametrize("part, grid, match", [
    ("k_eps", {"cluster_family": "x"}, r"grid key 'cluster_family': unknown spectrum family 'x' \(allowed: separated, cluster"),
    ("gap_d", {"gap_family": "x"}, r"grid key 'gap_family': unknown spectrum family 'x' \(allowed: separated, cluster"),
    ("gap_d", {"gap_param": "x"}, r"grid key 'gap_param': 'x' is no parameter of spectrum family 'cluster' \(allowed: k, delta\)"),
    ("gap_d", {"gap_family": "separated"}, r"grid key 'gap_param': 'delta' is no parameter of spectrum family 'separated' "
                                           r"\(allowed: cond\)"),
    ("k_eps", {"cluster_params": {"kk": 2}}, r"grid key 'cluster_params': 'kk' is no parameter of spectrum family 'cluster'"),
], ids=["cluster_family", "gap_family", "gap_param", "gap_param-of-family", "cluster_params"])
def test_unknown_spectrum_family_or_parameter_is_refused_before_any_cell(part, grid, match):
    """Any text was accepted, then every cell of the part failed in spectra.make (or with a TypeError)."""
    config = {"study": {"name": "a", "kind": "angle_surfaces"}, "grid": {"parts": [part], **grid}}
    with pytest.raises(ValueError, match="angle_surfaces: " + match):
        _grid.load_study(config)
    _grid.load_study({**config, "grid": {"parts": [p for p in ang.PARTS if p != part], **grid}})  # unused there
    ang.validate({"gap_family": "separated", "gap_param": "cond", "gap_deltas": [10.0, 1000.0], "cluster_family": "powerlaw",
                  "cluster_params": {"alpha": 2.0}})  # separated needs cond > 1: the default deltas (< 1) would fail every cell


@pytest.mark.parametrize("method", ["pi", "pi-forward", "analytic-trunc", "pi-authors", "analytic-trunc:eps=1e-8"])
def test_gap_d_refuses_a_method_whose_function_is_not_the_loss(method):
    """gap_d scores every method against the truth of the ZCA loss itself. A truncating or iterating
    forward computes another function: before, it was accepted and scored against the wrong truth —
    LAPACK mode-3 spectrum, cond 1e6, d = 4, seed 0: analytic-trunc 90.17° and pi 90.00005° from the
    loss's truth, while ``stabkit.compare`` finds each within 1e-11° of its own function's truth."""
    with pytest.raises(ValueError, match=f"gap_methods: {method.split(':')[0]}.* computes another function"):
        ang.validate({"parts": ["gap_d"], "gap_methods": [method]})
    # methods whose forward is the exact decomposition stay (pi-legacy: exact forward, its own backward)
    grid = ang.validate({"parts": ["gap_d"], "gap_methods": ["taylor", "clip", "pade", "analytic", "torch", "pi-legacy"]})
    assert len(grid["gap_methods"]) == 6


def test_gap_d_report_states_proportionality_only_where_the_gaps_show_it(tmp_path):
    """LAPACK mode-3 spectra over cond: the smallest gap falls as cond grows (d = 4, cond = 10: the
    eigenvalues are 10^(−k/3), smallest gap 10^(−2/3) − 10^(−1) ≈ 0.115), no fixed multiple of cond. Before:
    "cond is the family's relative parameter: the smallest eigenvalue gap of every matrix is
    2.98e-06–0.0115 × cond". Cluster spectra keep the sentence (gap = 0.55·δ at even d)."""
    grid = ang.validate({"parts": ["gap_d"], "gap_family": "lapack", "gap_param": "cond", "gap_deltas": [10.0, 1000.0],
                         "gap_dims": [4, 6], "gap_methods": ["analytic"], "seeds": [0]})
    rows = pd.DataFrame([r for c in ang.cells(grid) for r in ang.run_cell(c)])
    gaps = rows.set_index(["d", "delta"])["min_abs_gap"]
    assert gaps[(4, 10.0)] == pytest.approx(10 ** (-2 / 3) - 0.1, rel=1e-9)
    assert gaps[(4, 10.0)] > gaps[(4, 1000.0)]  # the data: not proportional (independent of the report)
    md = ang.report(rows, grid, tmp_path / "lapack")
    assert "relative parameter" not in md and "not proportional to cond" in md
    grid = ang.validate({"parts": ["gap_d"], "gap_deltas": [1e-2, 1e-4], "gap_dims": [4, 6], "gap_methods": ["analytic"], "seeds": [0]})
    rows = pd.DataFrame([r for c in ang.cells(grid) for r in ang.run_cell(c)])
    assert np.allclose(rows["min_abs_gap"] / rows["delta"], 0.55, rtol=1e-6)
    assert "the smallest eigenvalue gap of every matrix is 0.55 × delta" in ang.report(rows, grid, tmp_path / "cluster")
