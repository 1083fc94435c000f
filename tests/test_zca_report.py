"""The ``zca_cifar10`` report's sentences from constructed results whose answers are known: the
horizon and the successful runs' test errors are the data's, the forward-failure note states only
counts, the schedule comparison says "no difference detected" (with the runs per side and Holm),
and Wilson intervals are printed rounded outward."""

import importlib
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from stabkit.studies import _stats, zca_cifar10 as study
from stabkit.studies.zca_cifar10 import tables

report_mod = importlib.import_module("stabkit.studies.zca_cifar10.report")  # the package exports a function of that name


def _runs(cells, steps_total=1200):
    """Result rows without a ``preset`` column (the legacy layout): ``cells`` maps (spec, d) to a list of
    (outcome, step, test_error, run_lam_min) per seed."""
    rows = []
    for (spec, d), runs in cells.items():
        for seed, (outcome, step, err, lam) in enumerate(runs):
            rows.append({"cell_id": f"{spec}|d{d}|float32|s{seed}", "norm": "zca", "spec": spec, "d": d, "dtype": "float32",
                         "seed": seed, "outcome": outcome, "step": step, "test_error": err, "steps_total": steps_total,
                         "steps_done": steps_total if outcome == "ok" else step, "early_max_K": 1e3,
                         "early_gap_events": 0, "early_max_bound": 1e3, "run_lam_min": lam, "error": None})
    return pd.DataFrame(rows)


GRID = {"dims": [8, 16], "methods": ["analytic", "taylor"], "max_steps": 1200, "epochs": 10.0, "limit_images": 15360,
        "batch_size": 128, "early_frac": 0.02}


def test_legacy_note_states_the_horizon_and_the_test_errors_not_a_judgement(tmp_path):
    """1200 steps of batch 128 on 15360 images are 10 epochs (153 600 images: 0.88 % of the paper's 350 × 50 000); the ok runs'
    test errors 0.33, 0.36, 0.44 are stated as such (range, median, n, chance), not as 'barely trained'."""
    results = _runs({("analytic", 8): [("ok", np.nan, 0.33, 1e-4), ("ok", np.nan, 0.36, 1e-4)],
                     ("taylor", 8): [("ok", np.nan, 0.44, 1e-4), ("nonfinite-loss", 30.0, np.nan, 1e-4)]})
    text = study.report(results, GRID, tmp_path)
    assert "barely" not in text and "Our short protocol" not in text
    assert "The horizon is 1200 steps (10 epochs of 15360 images, 0.88 % of the training images the paper's 350 epochs of 50000 show)" in text
    assert "the 3 successful ZCA runs end at test errors 0.33–0.44 (median 0.36; chance: 0.90)" in text
    assert "Because of that horizon and that layer, no row is a test of Table IV" in text
    # the intro names this schedule's horizon too (here a 120-step one: 1 epoch)
    short = study.report(results.assign(steps_total=120), {**GRID, "max_steps": 120, "epochs": 1.0}, tmp_path)
    assert "This schedule, 120 steps (1 epoch of 15360 images, 0.088 % of the training images the paper's 350 epochs of 50000 show)" in short


def test_forward_failure_note_states_counts_only():
    """λ_min ≤ 0 in 3 runs, none at step 0: no sentence about the rounding of the forward alone, and no
    unmeasured mechanism (‖Σ‖ growing); with 2 at step 0, those 2 are named and the other 1 too."""
    later = _runs({("analytic", 16): [("nonfinite-loss", 12.0, np.nan, -1e-5), ("nonfinite-loss", 40.0, np.nan, 0.0),
                                      ("nonfinite-loss", 7.0, np.nan, -3e-6), ("ok", np.nan, 0.4, 1e-4)]})
    text = " ".join(report_mod._forward_failure_note(tables.success_table(later)))
    assert "in 3 runs the forward eigendecomposition returned λ_min ≤ 0" in text
    assert "None of them failed at step 0: all 3 failed at a later step" in text and "not measured" in text
    assert "grows ‖Σ‖" not in text and "rounding of the forward" not in text and "In the 0 of them" not in text
    mixed = later.copy()
    mixed.loc[[0, 1], "step"] = 0.0
    text = " ".join(report_mod._forward_failure_note(tables.success_table(mixed)))
    assert "2 of them failed at step 0, before any gradient had been applied" in text
    assert "The other 1 failed at a later step" in text and "grows ‖Σ‖" not in text
    one = later.iloc[[0, 3]]
    text = " ".join(report_mod._forward_failure_note(tables.success_table(one)))
    assert "in 1 run the forward" in text and "It failed after step 0" in text


def test_schedule_comparison_says_no_difference_detected_not_agreement(tmp_path):
    """8/8 against 2/4 (Fisher p = 0.091) is not rejected at 5 %: the report must not call it agreement;
    it says no difference is detected, gives the runs per side and the largest difference of rates those
    sizes cannot detect (brute force over all count pairs), and Holm-adjusts over the cells."""
    ok = ("ok", np.nan, 0.4, 1e-4)
    bad = ("nonfinite-loss", 500.0, np.nan, 1e-4)
    short = _runs({("analytic", 8): [ok] * 8, ("taylor", 8): [ok] * 8}, steps_total=120)
    long = _runs({("analytic", 8): [ok, ok, bad, bad], ("taylor", 8): [ok] * 4})
    (tmp_path / "base").mkdir()
    short.to_parquet(tmp_path / "base" / "results.parquet")
    text = study.report(long, {**GRID, "baseline_study": "base"}, tmp_path / "long")
    assert "schedules agree" not in text
    assert "Difference detected (Holm-adjusted Fisher p < 0.05 over the 2 cells): 0/2 cells" in text
    assert "In all 2 cells no difference is detected, which is not agreement" in text and "at 8 vs 4 runs" in text
    one = study.report(long[long["spec"] == "taylor"], {**GRID, "baseline_study": "base"}, tmp_path / "one")
    assert "0/1 cells. In the cell no difference is detected" in one  # there is no "other" cell
    # the largest undetected difference at 8 vs 4, found independently
    best = max(((abs(a / 8 - b / 4), -sps.fisher_exact([[a, 8 - a], [b, 4 - b]])[1], a, b)
                for a in range(9) for b in range(5) if a / 8 != b / 4
                and sps.fisher_exact([[a, 8 - a], [b, 4 - b]])[1] >= 0.05))
    k_s, k_l, p = tables.largest_undetected(8, 4)
    assert abs(k_s / 8 - k_l / 4) == best[0] and p == pytest.approx(-best[1])  # ties: either side's mirror image
    assert f"even {k_s}/8 against {k_l}/4" in text
    # Holm over the cells, beside the raw p
    table = tables.compare_schedules(short, long, horizon=120)
    p_raw = sps.fisher_exact([[8, 0], [2, 2]])[1]
    assert table.iloc[0]["Fisher p"] == pytest.approx(p_raw) and p_raw > 0.05
    assert "| analytic | 8 | float32 | 8/8 [67, 100] | 2/4 [15, 85] | 0.0909 | 0.182 | 2 |" in text
    assert tables.largest_undetected(1, 1) is not None and tables.largest_undetected(1, 1)[2] == pytest.approx(1.0)


def test_wilson_intervals_are_rounded_outward():
    """8/8: Wilson's lower bound is 67.56 %, printed 67 (nearest would print 68, narrower than computed);
    every printed interval of k of n ≤ 20 contains the computed one."""
    assert tables.ci(8, 8) == "[67, 100]" and tables.ci(3, 3) == "[43, 100]" and tables.ci(5, 8) == "[30, 87]"
    assert tables.ci(0, 8) == "[0, 33]"
    for n in range(1, 21):
        for k in range(n + 1):
            lo, hi = _stats.wilson(k, n)
            plo, phi = (float(x) for x in re.fullmatch(r"\[(.*), (.*)\]", tables.ci(k, n)).groups())
            assert plo <= 100 * lo + 1e-9 and phi >= 100 * hi - 1e-9, (k, n)
            assert (plo == 0) == (k == 0) and (phi == 100) == (k == n), (k, n)  # never rounded onto 0 or 100
