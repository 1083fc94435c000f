"""The gradient_accuracy study kind: grid validation, cells, rows against the truth, report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from stabkit import methods, spectra
from stabkit.studies import gradient_accuracy as ga


def test_defaults_are_the_full_grid():
    grid = ga.validate({})
    assert grid["methods"] == list(methods.NAMES)
    assert grid["d"] == [4, 8, 16, 32, 64, 128, 256]
    assert grid["dtypes"] == ["float32", "float64"] and grid["losses"] == ["zca", "eigvec", "sqrt"]
    labels = [ga.family_label(f) for f in grid["families"]]
    assert labels[:2] == ["separated", "cluster(delta=0.01)"] and "cluster(delta=1e-12)" in labels
    assert [f.get("mode") for f in grid["families"] if f["family"] == "lapack"] == [1, 2, 3, 4, 5, 6]
    assert len(labels) == 16
    assert len(ga.cells(grid)) == 16 * 7 * 2 * 3 * 1


def test_validate_normalises_and_names_the_bad_key():
    grid = ga.validate({"methods": ["taylor:K=19", "analytic"], "families": "separated", "d": 4, "losses": "zca"})
    assert grid["methods"] == ["taylor:K=19", "analytic"]
    assert grid["families"] == [{"family": "separated"}] and grid["d"] == [4] and grid["losses"] == ["zca"]
    cases = [
        ({"methods": ["nope"]}, "'methods'"), ({"families": ["nope"]}, "'families'"),
        ({"families": [{"delta": 1e-3}]}, "'families'"), ({"d": [1]}, "'d'"), ({"d": [4.5]}, "'d'"),
        ({"d": [True]}, "'d'"), ({"seeds": [-1]}, "'seeds'"), ({"losses": ["l2"]}, "'losses'"),
        ({"d": [4, 4]}, "twice"), ({"d": []}, "empty"), ({"size": [4]}, "'size'"),
    ]
    for grid, named in cases:
        with pytest.raises(ValueError, match=named):
            ga.validate(grid)
    # an impossible family parameter is caught by building the family before any work
    with pytest.raises(ValueError, match="'families'"):
        ga.validate({"families": [{"family": "cluster", "nonexistent_parameter": 3}], "d": [4]})


def test_cell_ids_are_unique_and_deterministic():
    grid = ga.validate({"d": [4, 8], "seeds": [0, 1], "families": ["separated", {"family": "cluster", "delta": 1e-4}]})
    ids = [c["cell_id"] for c in ga.cells(grid)]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2 * 3 * 2
    assert ids == [c["cell_id"] for c in ga.cells(ga.validate(dict(grid)))]
    assert ids[0] == "separated|d=4|float32|zca|seed=0"


def _cell(family, d, dtype, loss, methods_=("analytic", "taylor:K=19", "clip"), **params):
    return {"cell_id": "x", "family": family, "family_params": params, "d": d, "dtype": dtype, "loss": loss,
            "seed": 0, "methods": list(methods_)}


def test_rows_score_methods_against_the_truth():
    rows = ga.run_cell(_cell("separated", 6, "float64", "sqrt"))
    assert [r["method"] for r in rows] == ["analytic", "taylor:K=19", "clip"]
    for row in rows:
        assert set(row) == set(ga.COLUMNS)
        assert row["truth_certified"] and row["truth_digits"] >= 12 and row["error"] is None
    analytic = rows[0]
    # the analytic formula is exact on a well separated float64 spectrum: at rounding level
    assert analytic["finite"] and analytic["rel_err"] < 1e-9 and analytic["angle_deg"] < 1e-7
    assert analytic["norm_ratio"] == pytest.approx(1, abs=1e-9)
    # the diagnostics are those of the spectrum the cell built
    lam = np.sort(spectra.make("separated", 6, seed=0).eigenvalues)
    assert analytic["min_abs_gap"] == pytest.approx(np.diff(lam).min(), rel=1e-6)
    assert analytic["max_abs_K"] == pytest.approx(1 / np.diff(lam).min(), rel=1e-6)
    assert analytic["condition"] == pytest.approx(np.abs(lam).max() / np.abs(lam).min(), rel=1e-6)
    assert analytic["numerical_rank"] == 6
    # float32 input: analytic is exact only up to float32 rounding of the backward pass
    rows32 = ga.run_cell(_cell("separated", 6, "float32", "sqrt"))
    assert 0 < rows32[0]["rel_err"] < 1e-4


def test_a_tight_cluster_breaks_the_bounded_approximations():
    rows = {r["method"]: r for r in ga.run_cell(_cell("cluster", 6, "float64", "eigvec", delta=1e-8))}
    assert rows["analytic"]["min_rel_gap"] < 1e-7 and rows["analytic"]["max_abs_K"] > 1e7
    # For the eigenvector loss the truth is dominated by the cluster pair's (w_i − w_j)/(λ_i − λ_j)
    # term, ~1e8 larger than the rest; Taylor (K=19) and clipping bound that factor, so they miss
    # almost all of the gradient: rel_err → 1 as δ → 0, while the analytic formula stays accurate.
    for name in ("taylor:K=19", "clip"):
        assert rows[name]["rel_err"] > 0.99 and rows[name]["angle_deg"] > 10
    assert rows["analytic"]["rel_err"] < 1e-6


def test_undefined_losses_give_error_rows_not_crashes():
    for family, loss in (("rank_deficient", "zca"), ("degenerate", "eigvec")):
        rows = ga.run_cell(_cell(family, 6, "float64", loss))
        assert len(rows) == 3
        for row in rows:
            assert row["error"].startswith("undefined:") and math.isnan(row["angle_deg"])
            assert math.isnan(row["truth_digits"]) and not row["truth_certified"]


def _synthetic():
    """A results table with known medians: family A best=m1 (tie m2), family B best=m2, m3 NaN."""
    rows = []
    angles = {("A", "m1"): [1.0, 2.0, 3.0], ("A", "m2"): [2.0, 2.2, 2.4], ("A", "m3"): [50.0, 60.0, 70.0],
              ("B", "m1"): [10.0, 20.0, 30.0], ("B", "m2"): [0.1, 0.2, 0.3], ("B", "m3"): [np.nan, np.nan, 1.0]}
    for (fam, m), values in angles.items():
        for i, a in enumerate(values):
            rows.append({"cell_id": f"{fam}{i}", "family": fam, "family_params": "", "d": [4, 8, 16][i],
                         "dtype": "float64", "loss": "zca", "seed": 0, "method": m, "angle_deg": a,
                         "rel_err": a / 100, "norm_ratio": 1.0, "finite": not np.isnan(a), "seconds": 0.0,
                         "truth_digits": 30.0, "truth_certified": True, "min_abs_gap": 10.0 ** -i,
                         "min_rel_gap": 10.0 ** -i, "max_abs_K": 10.0 ** i, "numerical_rank": 4,
                         "condition": 2.0, "error": None})
    return pd.DataFrame(rows)


def test_verdicts_and_report_from_known_numbers(tmp_path):
    df = _synthetic()
    v = ga.verdicts(df).set_index("variant")
    assert v.loc["A", "best"] == "m1" and v.loc["A", "median_angle_deg"] == 2.0 and v.loc["A", "ties"] == ["m2"]
    assert v.loc["B", "best"] == "m2" and v.loc["B", "median_angle_deg"] == pytest.approx(0.2)
    assert v.loc["B", "ties"] == []
    grid = {"methods": ["m1", "m2", "m3"], "families": [{"family": "A"}, {"family": "B"}]}
    body = ga.report(df, grid, tmp_path)
    for png in ("angle_by_family.png", "angle_vs_gap.png", "angle_vs_d.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"]({png})" in body
    assert "| A | m1 | 2–2.2° | — | m2 | 3 |" in body and "| B | m2 | 0.2° | — | — | 3 |" in body  # 3 cells: no interval
    # the relative errors are a table (rel_err = angle / 100 in this table): medians 0.02, 0.022, 0.6 for A
    assert "| A | 0.02 | 0.022 | 0.6 |" in body and "| B | 0.2 | 0.002 | ∞ |" in body
    # NaN/Inf rate: m3 non-finite on 2 of 3 cells of B, none of A; overall 2 of 6
    assert "| B | 0% | 0% | 67% |" in body and "m3 33%" in body
    # the reading states the overall extremes from the data: m2 median 1.15°, m3 non-finite-heavy median 65°
    # with their distribution-free 95 % intervals: at n = 6 cells the binomial ranks are 1 and 6 (1/64 ≤ 0.025)
    # — m2's [0.1°, 2.4°]; m3's upper end is one of its non-finite angles
    assert ("lowest median angle is m2's (1.15°, 95 % CI [0.1°, 2.4°]) and the highest is m3's (65°, 95 % CI "
            "[1°, non-finite])") in body
    assert ga.summary(df).startswith("6 scored cells; lowest median angle: m2 (1.15°)")


def test_uncertified_truths_are_listed_not_scored(tmp_path):
    """A cell whose truth has < 12 digits changes no verdict and is named in the report."""
    df = _synthetic()
    extra = df[df["cell_id"] == "A0"].copy()
    extra["cell_id"], extra["d"] = "A9", 32
    extra["angle_deg"], extra["truth_digits"], extra["truth_certified"] = 0.0, 9.5, False
    extra.loc[extra["method"] == "m3", "angle_deg"] = 0.0  # would make m3 best if it were scored
    both = pd.concat([df, extra], ignore_index=True)
    pd.testing.assert_frame_equal(ga.verdicts(both), ga.verdicts(df))
    body = ga.report(both, {"methods": ["m1", "m2", "m3"], "families": [{"family": "A"}, {"family": "B"}]}, tmp_path)
    assert "1 cells have a ground truth with fewer than 12" in body
    assert "- A, loss zca, float64: d = 32 (9.5 digits)" in body


def _two_dtypes(first: float, second: float) -> pd.DataFrame:
    """m1 and m2 at median angles ``first`` and ``second`` (float64); m3 NaN/Inf on 2 of 4 float32 cells."""
    df = _synthetic()
    df = df[df["family"] == "A"].copy()
    df.loc[df["method"] == "m1", "angle_deg"] = first
    df.loc[df["method"] == "m2", "angle_deg"] = second
    f32 = df.copy()
    f32["dtype"], f32["cell_id"] = "float32", f32["cell_id"] + "-32"
    f32.loc[(f32["method"] == "m3") & f32["cell_id"].isin(["A0-32", "A1-32"]), ["angle_deg", "finite"]] = [np.nan, False]
    extra = f32[f32["cell_id"] == "A0-32"].copy()
    extra["cell_id"] = "A3-32"
    extra.loc[extra["method"] == "m3", ["angle_deg", "finite"]] = [5.0, True]
    return pd.concat([df, f32, extra], ignore_index=True)


def test_rankings_treat_rounding_noise_as_ties(tmp_path):
    # the same results on two machines: m1 and m2 swap places by 1e-5 relative (BLAS rounding)
    here, there = _two_dtypes(1.0, 1.0 + 1e-5), _two_dtypes(1.0 + 1e-5, 1.0)
    assert ga.summary(here) == ga.summary(there)
    assert ga.summary(here).startswith("7 scored cells; lowest median angle: m1, m2 (tied within ×1.25: 1°–1°)")
    grid = {"methods": ["m1", "m2", "m3"], "families": [{"family": "A"}]}
    verdict = [line for line in ga.report(here, grid, tmp_path).splitlines() if line.startswith("| A |")][0]
    assert verdict == [line for line in ga.report(there, grid, tmp_path).splitlines() if line.startswith("| A |")][0]
    assert verdict == "| A | m1 | 1–1° | [1°, 1°] | m2 | 7 |"  # 7 cells: ranks 1 and 7 (1/128 ≤ 0.025)
    # a real difference (×1.3 > TIE_FACTOR) is still a ranking
    assert ga.summary(_two_dtypes(1.0, 1.3)).startswith("7 scored cells; lowest median angle: m1 (1°)")


def test_the_angle_figure_separates_dtypes_and_shows_the_failure_share(tmp_path, monkeypatch):
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig

    monkeypatch.setattr(ga._plots, "save", keep)
    ga.report(_two_dtypes(1.0, 2.0), {"methods": ["m1", "m2", "m3"], "families": [{"family": "A"}]}, tmp_path)
    fig = figures["angle_by_family.png"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["float32: angle (deg)", "float64: angle (deg)"]
    f32, f64 = fig.axes
    # float32: m3 is NaN/Inf on 2 of 4 cells, so its median is +inf: drawn as × on the NaN/Inf line, "50%" beside it
    crosses = [line for line in f32.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_ydata()) == [ga.NONFINITE_Y]
    assert crosses[0].get_xdata()[0] == pytest.approx(2.0)
    assert [t.get_text() for t in f32.texts if t.get_text().endswith("%")] == ["50%"]
    # float64: every gradient finite, medians 1, 2 and 60 at x = 0, 1, 2
    assert not [t for t in f64.texts if t.get_text().endswith("%")]
    dots = [line for line in f64.get_lines() if line.get_marker() == "o"][0]
    assert list(dots.get_xdata()) == [0.0, 1.0, 2.0] and list(dots.get_ydata()) == [1.0, 2.0, 60.0]
    for name in ("angle_vs_gap.png", "angle_vs_d.png"):
        assert [ax.get_title() for ax in figures[name].axes] == ["float32", "float64"]


def _rows(angles: dict, gaps=None, dtype="float64") -> pd.DataFrame:
    """Rows of real method names, one per (method, cell): ``angles[method]`` lists ``(angle, kept)`` per
    cell (kept < d: the method dropped pairs, so the row is scored against its own function; angle
    None: no certified truth for that row, so it is not scored)."""
    rows = []
    for m, values in angles.items():
        for i, (a, kept) in enumerate(values):
            gap = 10.0 ** -i if gaps is None else gaps[i]
            rows.append({"cell_id": f"F|d={8 + i}|{dtype}|zca|seed=0", "family": "F", "family_params": "", "d": 8 + i,
                         "dtype": dtype, "loss": "zca", "seed": 0, "method": m,
                         "angle_deg": np.nan if a is None else a, "angle_full_deg": 90.0 if kept < 8 + i else a,
                         "kept": kept, "rel_err": 0.01, "norm_ratio": 1.0, "finite": True, "seconds": 0.0,
                         "truth_digits": np.nan if a is None else 30.0, "truth_certified": a is not None,
                         "min_abs_gap": gap, "min_rel_gap": gap, "max_abs_K": 1.0, "numerical_rank": 8,
                         "condition": 2.0,
                         "error": "no truth for the method's own function: test" if a is None else None})
    return pd.DataFrame(rows)


def _reading_of(body: str, start: str) -> str:
    """The line of the report's Reading that begins with ``start`` ('' if none)."""
    return next((line for line in body.splitlines() if line.startswith(f"- {start}")), "")


def _full(values, start=0):
    """``(angle, kept = d)`` for cells start, start + 1, …: rows scored against the loss itself."""
    return [(a, 8 + start + i) for i, a in enumerate(values)]


def test_the_lowest_median_is_taken_on_the_cells_every_method_shares(tmp_path):
    # analytic-trunc truncates on cells 3 and 4 (large angles for analytic there): over its own 3 cells its
    # median is 2°, analytic's over all 5 is 3° (×1.5, past the tie factor); on the 3 shared cells both are 2°
    df = _rows({"analytic": _full([1.0, 2.0, 3.0, 10.0, 10.0]),
                "analytic-trunc": _full([1.0, 2.0, 3.0]) + [(0.5, 2), (0.5, 3)],
                "pi-legacy": _full([50.0] * 5),
                "pi": [(1e-3, 1)] * 5})
    body = ga.report(df, {"methods": ["analytic", "analytic-trunc", "pi-legacy", "pi"]}, tmp_path)
    assert "lowest median angle is analytic-trunc's" not in body  # not a sole winner: a tie on like cells
    assert ("Over the 3 of 5 scored cells common to all methods scored against the loss itself, the lowest "
            "median angle is shared by analytic, analytic-trunc (2° to 2°, within the tie factor 1.25; 95 % CIs "
            "analytic none (too few cells), analytic-trunc none (too few cells)) and the highest is pi-legacy's "
            "(50°, 95 % CI none (too few cells)); not ranked (no row scored against the loss itself): pi.") in body
    assert ga.summary(df).startswith("5 scored cells; lowest median angle over the 3 cells common to all methods "
                                     "scored against the loss itself: analytic, analytic-trunc (tied within ×1.25: 2°–2°)")
    # the family verdict and the size sentence compare the same cells too
    assert "| F | analytic | 2–2° | — | analytic-trunc | 3 |" in body.splitlines()
    assert "From d=8 (1 cells) to d=10 (1 cells), on the same cells for every method, no method's" in body


def test_the_dtype_ratio_is_taken_on_matched_cells(tmp_path):
    # float64 has 4 cells more than float32 (the loss undefined there in float32): analytic's angle is
    # 100° on them, so over all cells its ratio would be 1/100; on the 3 matched cells it is 1
    f64 = _rows({"analytic": _full([1.0, 1.0, 1.0, 100.0, 100.0, 100.0, 100.0]),
                 "pade": _full([6.0] * 7), "torch": _full([1.0] * 7), "taylor": _full([1.0] * 7)})
    f32 = _rows({"analytic": _full([1.0] * 3), "pade": _full([3.0] * 3), "torch": _full([10.0] * 3),
                 "taylor": _full([1.0, None, None])}, dtype="float32")
    f32.loc[(f32["method"] == "taylor") & f32["angle_deg"].isna(), ["truth_digits", "truth_certified", "error",
                                                                     "finite"]] = [30.0, True, None, False]
    body = ga.report(pd.concat([f64, f32], ignore_index=True), {"methods": ["analytic", "pade", "torch", "taylor"]},
                     tmp_path)
    assert "(analytic" not in _reading_of(body, "float32 against float64")  # 1/100 only on unmatched cells
    assert ("float32 against float64, each method on the cells scored in both dtypes (rows scored against the loss "
            "itself): the ratio of median angles (float32 / float64) ranges from 0.5 (pade, 3 cell pairs) to 10 "
            "(torch, 3 cell pairs); no finite ratio for taylor (float32 median non-finite, float64 1°).") in body


def test_the_gap_sentence_ranks_rows_scored_against_the_loss_and_says_its_metric(tmp_path):
    # 8 cells, gaps 1 … 1e-7: a quarter of 2 cells at each end. pi drops a pair everywhere (scored against its
    # own function: not ranked); by difference of medians pi-legacy (5° → 10°, +5°) rises most, by ratio analytic
    # (1e-6° → 1°, ×1e6) would
    df = _rows({"analytic": _full([1e-6, 1e-6, 0.1, 0.1, 0.1, 0.1, 1.0, 1.0]),
                "pi-legacy": _full([5.0, 5.0, 7.0, 7.0, 7.0, 7.0, 10.0, 10.0]),
                "taylor": _full([5.0, 5.0, 6.0, 6.0, 6.0, 6.0, 9.5, 9.5]),
                "pi": [(a, 7 + i) for i, a in enumerate([1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 60.0, 60.0])]})
    body = ga.report(df, {"methods": ["analytic", "pi-legacy", "taylor", "pi"]}, tmp_path)
    assert "pi 1° → 60°" not in body and "is pi." not in body  # pi's rows are scored against its own function
    assert ("Over the same 8 cells, from the quarter with the largest relative gap (≥ 0.033, 2 cells) to the quarter "
            "with the smallest (≤ 7.8e-06, 2 cells), the median angle moves: analytic 1e-06° → 1°; pi-legacy 5° → 10°; "
            "taylor 5° → 9.5°.") in body
    assert ("The largest rise of the median angle (small-gap quarter minus large-gap quarter, in degrees) is "
            "pi-legacy's (+5°: 5° (2 cells, too few for a 95 % CI) → 10° (2 cells, too few for a 95 % CI)); within "
            "the tie factor 1.25 of it: taylor (+4.5°: 5° (2 cells, too few for a 95 % CI) → 9.5° (2 cells, too few "
            "for a 95 % CI)).") in body


def test_the_gap_and_size_claims_carry_the_medians_intervals(tmp_path):
    # 24 cells, d = 8 for the first 12 (the large gaps) and d = 32 for the last 12: a quarter is 6 cells, and for
    # n ≤ 8 the distribution-free 95 % interval of a median is [min, max] (P(B = 0) = 2⁻ⁿ ≤ 0.025 < (n + 1)·2⁻ⁿ).
    # (n = 12: ranks 3 and 10, as C(12, 0) + C(12, 1) + C(12, 2) = 79 ≤ 0.025 · 2¹² = 102.4 < 79 + C(12, 3)).
    # analytic rises from 1…6° to 101…106° with the gap and from a median of 1° to 54° with d; taylor stays at 1°
    analytic = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] + [1.0] * 6 + [7.0] * 6 + [101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
    df = _rows({"analytic": _full(analytic), "taylor": _full([1.0] * 24)})
    df["d"] = np.where(df["cell_id"].str.extract(r"d=(\d+)")[0].astype(int) < 20, 8, 32)
    df["kept"] = df["d"]
    body = ga.report(df, {"methods": ["analytic", "taylor"]}, tmp_path)
    assert ("is analytic's (+100°: 3.5° (95 % CI [1°, 6°]) → 104° (95 % CI [101°, 106°]))."
            in _reading_of(body, "The largest rise"))
    assert ("the median angle grows more than tenfold for analytic (1° (95 % CI [1°, 4°]) → 54° "
            "(95 % CI [7°, 104°]))." in _reading_of(body, "From d=8 (12 cells) to d=32 (12 cells)"))



def test_a_median_turning_nonfinite_at_small_gaps_is_named(tmp_path):
    # analytic's gradient is NaN/Inf on the 2 smallest-gap cells: its rise is +∞, not left out of the comparison
    df = _rows({"analytic": _full([1e-6, 1e-6, 0.1, 0.1, 0.1, 0.1, None, None]),
                "pi-legacy": _full([5.0, 5.0, 7.0, 7.0, 7.0, 7.0, 10.0, 10.0])})
    df.loc[df["angle_deg"].isna(), ["truth_digits", "truth_certified", "error", "finite"]] = [30.0, True, None, False]
    body = ga.report(df, {"methods": ["analytic", "pi-legacy"]}, tmp_path)
    assert "the median angle moves: analytic 1e-06° → non-finite; pi-legacy 5° → 10°." in body
    assert ("The median angle goes from finite in the large-gap quarter to NaN/Inf in the small-gap quarter for "
            "analytic.") in body


def test_extremes_with_one_or_no_ranked_method_say_so(tmp_path):
    one = _rows({"analytic": _full([1.0, 2.0, 3.0]), "pi": [(1e-3, 1)] * 3})
    body = ga.report(one, {"methods": ["analytic", "pi"]}, tmp_path)
    assert "the highest is analytic's" not in body  # it used to be both the lowest and the highest
    assert ("Over all 3 scored cells, only analytic is ranked: its median angle is 2° (95 % CI none (too few cells)) "
            "(rows scored against the loss itself); not ranked (no row scored against the loss itself): pi.") in body
    none = _rows({"pi": [(1e-3, 1)] * 3})
    body = ga.report(none, {"methods": ["pi"]}, tmp_path)
    assert "No method is ranked: no row is scored against the loss itself; not ranked" in body
    assert ga.summary(none).startswith("3 scored cells; lowest median angle: none (no row is scored against the loss itself)")
