"""projector_rank: Lemma 1 against finite differences, Lemma 2, J₂ descent, a tiny run with report."""

import re

import numpy as np
import pandas as pd
import pytest

from stabkit.studies import projector_rank as pr


@pytest.mark.parametrize("d,r", [(5, 1), (6, 3), (8, 6)])
def test_lemma1_directional_derivative_matches_mpmath_difference(d, r):
    rows = pd.DataFrame(pr.lemma1_rows({"d": d, "r": r, "seed": 3, "directions": 3, "methods": ["analytic"]}))
    dirn = rows[rows["check"] == "directional"]
    assert len(dirn) == 3
    assert dirn["rel_err"].max() <= 1e-8
    # the eigenvector route (analytic kernel, projector loss) is sym(Lemma 1)
    assert rows.loc[rows["check"] == "eigen-route", "rel_err"].item() <= 1e-8


def test_lemma1_eigen_route_scores_each_method_against_its_own_function(tmp_path):
    # d = 6, r = 3, seed 1: 19 power-iteration steps do not converge on the top 3 pairs, so the
    # approximate forward's gradient is far from Lemma 1's but exact for the function it computes;
    # the truncating method drops a top pair and is not scored (not a failure)
    rows = pd.DataFrame(pr.lemma1_rows({"d": 6, "r": 3, "seed": 1, "directions": 1,
                                        "methods": ["analytic", "pi-forward", "pi"]}))
    eig = rows[rows["check"] == "eigen-route"].set_index("method")
    assert eig.loc["pi-forward", "rel_err"] < 1e-12  # against Lemma 1 it would be 0.895
    assert eig.loc["pi-forward", "full_rel_err"] > 0.5 and eig.loc["pi-forward", "scored"] == "own function"
    assert eig.loc["analytic", "scored"] == "Lemma 1" and eig.loc["analytic", "rel_err"] < 1e-12
    assert eig.loc["pi", "scored"] == "not scored" and np.isnan(eig.loc["pi", "rel_err"])
    tab = pr.eigen_route_table(rows[rows["check"] == "eigen-route"]).set_index("method")
    assert tab.loc["pi", "failed"] == 0 and tab.loc["pi", "not scored (why)"].startswith("1 (truncating")
    assert tab.loc["pi-forward", "scored against"] == "own function" and tab.loc["pi-forward", "max_rel_err"] < 1e-12
    md = pr.report(rows, pr.validate({"parts": ["lemma1"]}), tmp_path)
    assert "Methods reproducing Lemma 1 to < 1e-8 on every matrix: analytic." in md


def test_lemma1_rank_one_closed_form():
    # A = s v vᵀ, Π = v vᵀ, A⁺ = v vᵀ / s → ∂⟨G,Π⟩/∂A = 2 (I − v vᵀ) G_sym v vᵀ / s
    rng = np.random.default_rng(0)
    v = rng.standard_normal(4)
    v /= np.linalg.norm(v)
    s = 1.7
    G = rng.standard_normal((4, 4))
    g, P = pr.lemma1_gradient(s * np.outer(v, v), G)
    expected = 2 * (np.eye(4) - np.outer(v, v)) @ ((G + G.T) / 2) @ np.outer(v, v) / s
    np.testing.assert_allclose(P, np.outer(v, v), atol=1e-14)
    np.testing.assert_allclose(g, expected, atol=1e-13)


def test_lemma2_no_violation_and_distances():
    rows = pd.DataFrame(pr.lemma2_rows({"d": 6, "pairs": 1500, "chunk": 0, "seed": 5}))
    assert pr.lemma2_violations(rows) == 0
    diff = rows[rows["rank_a"] != rows["rank_b"]]
    same = rows[rows["rank_a"] == rows["rank_b"]]
    assert len(diff) > 100 and len(same) > 100
    np.testing.assert_allclose(diff["proj_dist"], 1.0, atol=1e-12)  # different ranks: exactly 1
    close = same[same["sigma"] < 1e-3]
    assert len(close) > 10 and close["proj_dist"].max() < 1e-2  # nearly equal ranges: small distance
    # the ranks are unambiguous: kept eigenvalues ~1e14 × the threshold d·eps·λ_max, dropped ones below it
    assert rows["kept_over_tol"].min() > 1e12 and rows["dropped_over_tol"].max() < 1


def test_descent_matches_ranks_and_j2_bound():
    base = {"d": 8, "r": 3, "steps": 80, "lr": 0.5, "seed": 1}
    lem = pd.DataFrame(pr.descent_rows({**base, "method": "lemma1", "k": 3}))
    ana = pd.DataFrame(pr.descent_rows({**base, "method": "analytic", "k": 3}))
    assert lem["J2"].iloc[-1] < 1e-3
    np.testing.assert_allclose(ana["J2"], lem["J2"], rtol=1e-7, atol=1e-12)  # two exact gradients, one trajectory
    over = pd.DataFrame(pr.descent_rows({**base, "method": "lemma1", "k": 4}))
    assert over["J2"].min() >= 0.5 - 1e-12 and (over["rank_w"] == 4).all()
    assert pr.descent_contradictions(pd.concat([lem, ana, over])) == 0


def test_tiny_grid_runs_and_reports(tmp_path):
    grid = pr.validate({"lemma1_dims": [5], "lemma1_ranks": [2], "lemma1_seeds": [0], "lemma1_directions": 2,
                        "lemma1_methods": ["analytic", "clip"], "lemma2_pairs": 300, "lemma2_cells": 1,
                        "descent_d": 6, "descent_target_rank": 2, "descent_k": [2, 3], "descent_steps": 20,
                        "descent_methods": ["lemma1", "taylor:eps=0.001"]})
    cells = pr.cells(grid)
    assert len(cells) == 1 + 1 + 4
    rows = pd.DataFrame([r for c in cells for r in pr.run_cell(c)])
    md = pr.report(rows, grid, tmp_path)
    assert "Violations (different ranks and ‖Π_A − Π_B‖₂ < 1 − 1e-10): **0**" in md
    assert (tmp_path / "lemma2_hist.png").stat().st_size > 0 and (tmp_path / "descent.png").stat().st_size > 0
    assert "Steps with J₂ < ½ but rank W ≠ rank Ψ: **0**" in md
    assert "This is a sanity check of the computed projectors, not evidence for the lemma" in md
    l2 = rows[rows["part"] == "lemma2"]
    kept, dropped = l2["kept_over_tol"].min(), l2["dropped_over_tol"].max()
    assert kept > 1e12 and 0 < dropped < 1  # the margin is stated on both sides, each from its own rows
    printed_kept = float(re.search(r"far above the rank threshold d·eps·λ_max \(≥ (\S+) × it\)", md).group(1))
    factor, ratio = map(float, re.search(r"by a factor of (\S+) or more \(≤ (\S+) × it\)", md).groups())
    assert printed_kept <= kept and factor <= 1 / dropped and ratio >= dropped  # printed bounds hold
    assert "Lemma 2 violations 0/300 (a sanity check)" in pr.summary(rows)
    assert "Lemma 2's bound" not in md and "2 tr(Π_WΠ_Ψ) ≥ |rank W − rank Ψ|, a trace identity" in md


def test_dropped_margin_says_how_near_the_threshold_a_dropped_eigenvalue_came():
    from stabkit.studies.projector_rank.report import _dropped_margin
    # 1/0.68 = 1.47…: "a factor of 1.5 or more" would overstate the margin
    assert _dropped_margin(0.68).startswith("lie below it by a factor of 1.4 or more (≤ 0.68 × it)")
    assert _dropped_margin(0.0) == "are exactly 0" and _dropped_margin(float("nan")) == "were not recorded"


def test_printed_bounds_are_rounded_to_the_safe_side(tmp_path):
    """The committed report said the dropped eigenvalues "lie below it by a factor of 1.5 or more (≤ 0.68 × it)"
    where its table's largest dropped_over_tol is 0.6824: factor 1.465, so both printed bounds were false
    (rounded to nearest). Each bound is now rounded toward the side on which it stays true; the checks below
    compare the printed numbers with the table's own extremes."""
    from stabkit.studies import _figures
    from stabkit.studies.projector_rank.report import _lemma1_section, _lemma2_section
    kept_min, dropped_max = 1.46e14, 0.682427  # to nearest, 2 digits: 1.5e14 (> kept_min), 1.5 (> 1/dropped_max), 0.68 (< dropped_max)
    l2 = pd.DataFrame({"d": 8, "rank_a": [2, 3, 3], "rank_b": [3, 3, 2], "proj_dist": [1.0, 0.02, 1.0],
                       "kept_over_tol": [kept_min, 3e14, 2e15], "dropped_over_tol": [0.1, dropped_max, 0.3]})
    md = "\n".join(_lemma2_section(_figures.pyplot(), l2, tmp_path))
    printed_kept = float(re.search(r"\(≥ (\S+) × it\)", md).group(1))
    factor, ratio = map(float, re.search(r"by a factor of (\S+) or more \(≤ (\S+) × it\)", md).groups())
    assert printed_kept <= kept_min and factor <= 1 / dropped_max and ratio >= dropped_max
    assert (printed_kept, factor, ratio) == (1.4e14, 1.4, 0.69)  # still 2 significant digits
    worst = 5.04e-14  # to nearest, "at most 5e-14" would be below it
    l1 = pd.DataFrame({"check": "directional", "d": 6, "r": 1, "rel_err": [1e-15, worst, 2e-15],
                       "fd64_rel_err": [1e-10, 2e-10, 3e-10]})
    at_most = float(re.search(r"relative error of at most (\S+) \(median", "\n".join(_lemma1_section(l1))).group(1))
    assert worst <= at_most <= 5.1e-14


def _trajectory(method, k, seed, j2s, r=3):
    return [{"part": "descent", "method": method, "k": k, "seed": seed, "d": 6, "target_rank": r, "step": i,
             "J2": j, "rank_w": min(k, r) if j < 0.5 else k, "proj_rank": min(k, r) if j < 0.5 else k,
             "finite": bool(np.isfinite(j))} for i, j in enumerate(j2s)]


def test_descent_findings_state_the_number_of_seeds():
    """The descent verdicts came from one trajectory per method × k and never said so; they now say n (seeds,
    trajectories) and, per method, in how many seeds it reached J₂ < 1e-4 with a Clopper–Pearson interval."""
    import importlib
    rep = importlib.import_module("stabkit.studies.projector_rank.report")
    rows = (_trajectory("a", 3, 0, [2.0, 0.3, 1e-6]) + _trajectory("a", 3, 1, [2.0, 0.2, 1e-7])
            + _trajectory("b", 3, 0, [2.0, 0.4, 1e-6]) + _trajectory("b", 3, 1, [2.0, 0.6, 0.55])
            + _trajectory("a", 4, 0, [2.0, 1.0, 0.5]) + _trajectory("a", 4, 1, [2.0, 1.0, 0.5])
            + _trajectory("b", 4, 0, [2.0, 1.0, 0.5]) + _trajectory("b", 4, 1, [2.0, 1.0, 0.5]))
    de = pd.DataFrame(rows)
    tab = rep._descent_table(de)
    assert len(tab) == 8 and "seed" in tab  # one row per trajectory, not one per method × k
    md = "\n".join(rep._descent_findings(de, tab, 3))
    lo2, hi2 = (0.158, 1.0)  # Clopper–Pearson 95% for 2 of 2: [0.025^(1/2), 1]
    assert "of 24 logged steps, from 8 trajectories (2 methods × 2 values of k, n = 2 seeds" in md
    assert f"a (2 of 2 seeds; Clopper–Pearson 95% interval of the per-seed rate {lo2:.2g}–{hi2:.2g})" in md
    assert "b (1 of 2 seeds; Clopper–Pearson 95% interval of the per-seed rate 0.013–0.99)" in md
    assert "diverged: none" in md
    one = de[de["seed"] == 0]
    md1 = "\n".join(rep._descent_findings(one, rep._descent_table(one), 3))
    assert "seed" not in rep._descent_table(one)
    assert "n = 1 seed, one trajectory per method × k × seed" in md1
    assert "a, b (1 of 1 seed; Clopper–Pearson 95% interval of the per-seed rate 0.025–1)" in md1


def test_descent_figure_draws_one_line_per_trajectory(tmp_path, monkeypatch):
    """Two seeds of one method were drawn as one line jumping between them (steps 0, 0, 1, 1, …)."""
    import importlib

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rep = importlib.import_module("stabkit.studies.projector_rank.report")
    de = pd.DataFrame(_trajectory("a", 3, 0, [2.0, 0.3, 1e-6]) + _trajectory("a", 3, 1, [2.0, 0.2, 1e-7])
                      + _trajectory("b", 3, 0, [2.0, 0.4, 1e-6]))
    saved = []
    monkeypatch.setattr(rep._figures, "save", lambda fig, path: saved.append(fig))
    rep._descent_figure(plt, de, 3, tmp_path)
    trajectories = [list(ln.get_xdata()) for ln in saved[0].axes[0].get_lines() if len(ln.get_xdata()) == 3]
    assert trajectories == [[0, 1, 2]] * 3  # a seed 0, a seed 1, b seed 0: each its own line, steps in order
    labels = [ln.get_label() for ln in saved[0].axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["a", "b"]  # one legend entry per method
    plt.close("all")
