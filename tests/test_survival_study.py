"""Study kind zca_cifar10_survival: the study file's order and seeds, the runner keeping that order, and
the report's numbers from constructed run records (train_run replaced by a fake in these tests); runs
stacked by ``--stack`` (real tiny runs) give the records of runs one by one."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from stabkit.studies import _grid, _stats, publish, runner, zca_cifar10_survival as surv
from stabkit.train.preset import get_preset

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "zca-cifar10-survival.toml"
SPE = 391


def test_study_file_cells_in_the_issues_order():
    _, kind, grid = _grid.load_study(STUDY)
    assert kind is surv
    assert grid["preset"] == "paper" and grid["dtypes"] == ["float32"] and grid["epochs"] == 100.0
    assert grid["cells"][:7] == [["analytic", 8], ["analytic", 16], ["taylor", 16], ["pi-forward", 4],
                                 ["pi-forward", 8], ["pi", 16], ["pi", 64]]
    # the rest of Table IV: all 25 method × d pairs, once each
    assert sorted(map(tuple, grid["cells"])) == sorted((m, d) for m in ("analytic", "pi-forward", "pi", "taylor", "clip")
                                                       for d in (4, 8, 16, 32, 64))
    cells = kind.cells(grid)
    ids = [c["cell_id"] for c in cells]
    # the first chunk: SVD d = 8 and d = 16, three seeds each
    assert ids[:6] == [f"analytic|d{d}|float32|s{s}|e100" for d in (8, 16) for s in (1000, 1001, 1002)]
    # every cell gets its first seed block before any cell gets a second
    first_late = min(i for i, c in enumerate(cells) if c["seed"] >= 1003)
    assert first_late == 25 * 3 and {c["seed"] for c in cells[:first_late]} == {1000, 1001, 1002}
    assert len(cells) == 25 * 15 and len(set(ids)) == len(ids)


def test_seeds_disjoint_from_the_other_training_studies():
    _, kind, grid = _grid.load_study(STUDY)
    ours = {c["seed"] for c in kind.cells(grid)}
    for path in sorted((ROOT / "studies").glob("zca-cifar10*.toml")):
        if path == STUDY:
            continue
        _, k, g = _grid.load_study(path)
        theirs = {c["seed"] for c in k.cells(g)}
        assert theirs and not ours & theirs, path.name


def test_paper_counts_are_table_iv():
    # the counts the issue quotes (7/15, 0/15, 1/15, 15/15) and the rest of the table, from percentages
    from stabkit.train import table_iv

    assert table_iv.COUNTS["SVD"] == {4: 7, 8: 0, 16: 0, 32: 0, 64: 0}
    assert table_iv.COUNTS["PI"] == {4: 15, 8: 1, 16: 0, 32: 0, 64: 0}
    for row in ("SVD-PI", "SVD-Taylor", "SVD-Clip"):
        assert set(table_iv.COUNTS[row].values()) == {15}
    # the rows are the registered methods with those paper names, in the paper's order
    assert table_iv.names() == ["analytic", "pi-forward", "pi", "taylor", "clip"]


def test_validation_names_the_problem():
    base = {"cells": [["analytic", 8]]}
    for bad, match in [({"cells": [["analytic", 12]]}, "divide 64"), ({"cells": [["analytic", 8], ["analytic", 8]]}, "twice"),
                       ({"cells": [["nope", 8]]}, "nope"), ({"extend": ["analytic|d8|float32|s1000|e100"]}, "extend_epochs is 0"),
                       ({"extend_epochs": 350.0, "extend": ["analytic|d8|float32|s5|e100"]}, "not a cell"),
                       ({"extend_epochs": 50.0}, "must exceed"), ({"landmarks": [0]}, "landmarks"), ({"seeds": 0}, "seeds"),
                       ({"cells": [["taylor", 16]], "width": 0.125}, "divide conv1.s 8 channels")]:
        with pytest.raises(ValueError, match=match):
            surv.validate({**base, **bad})


def test_fast_path_keys_pass_only_when_set():
    base = {"cells": [["taylor", 16]], "seeds": 1}
    assert surv.cells(base)[0]["train_options"] == {}
    opts = surv.cells({**base, "fast": True, "eval_every": 5, "compile": "default", "train_options": {"check_every": 50}})
    assert opts[0]["train_options"] == {"fast": True, "eval_every": 5, "compile": "default", "check_every": 50}
    _, _, grid = _grid.load_study(STUDY)
    assert grid["fast"] is True and grid["eval_every"] == 1  # the study file: the fast path, accuracy every epoch
    with pytest.raises(ValueError, match="'fast' must be true or false"):
        surv.validate({**base, "fast": "yes"})


def test_extension_runs_come_last():
    grid = {"cells": [["taylor", 16], ["analytic", 8]], "seeds": 2, "extend_epochs": 350.0,
            "extend": ["taylor|d16|float32|s1001|e100"]}
    cells = surv.cells(grid)
    assert [c["cell_id"] for c in cells][-1] == "taylor|d16|float32|s1001|e350"
    assert cells[-1]["epochs"] == 350.0 and cells[-1]["seed"] == 1001 and len(cells) == 5


def test_survival_fields_from_an_older_record():
    rec = {"nan_loss_step": 390, "steps_done": 391, "batch_size": 128, "limit_images": None, "drop_last": False}
    out = surv.survival_fields(rec)
    assert out["steps_per_epoch"] == SPE and out["time_to_nan_loss_epochs"] == 1.0 and out["censored_at_epochs"] is None
    out = surv.survival_fields({"nan_loss_step": None, "steps_done": 782, "batch_size": 128, "limit_images": 15360,
                                "drop_last": True})
    assert out["steps_per_epoch"] == 120 and out["censored_at_epochs"] == pytest.approx(782 / 120)


# ------------------------------------------------------------------------------ constructed runs
def _record(spec, d, seed, t_nan=None, reached=100.0, horizon=100.0, acc=0.85, K=1e3, dtype="float32"):
    """A run record as schema12 describes it: NaN loss at epoch t_nan, or no NaN loss up to ``reached``."""
    end = t_nan if t_nan is not None else reached
    n_epochs = math.ceil(end)
    log = [{"epoch": e, "step": min(e * SPE, round(end * SPE)), "train_loss": 1.0, "test_acc": acc * e / n_epochs,
            "conv1_weight_norm": 3.0, "lam_max_over_eps": 1e3, "lam_min": 1e-3, "min_rel_gap": 1e-3, "max_abs_K": K,
            "grad_norm_max": 2.0, "nonfinite_events": 0} for e in range(1, n_epochs + 1)]
    steps_done = round(end * SPE)
    return {"outcome": "ok" if t_nan is None else "nonfinite-loss", "spec": spec, "norm": "zca", "d": d, "dtype": dtype,
            "seed": seed, "epochs": horizon, "steps_per_epoch": SPE, "steps_done": steps_done,
            "epochs_done": steps_done / SPE, "nan_loss_step": None if t_nan is None else steps_done - 1,
            "paper_outcome": "nan-loss" if t_nan is not None else ("ok" if reached >= horizon else "censored"),
            "time_to_nan_loss_epochs": t_nan, "censored_at_epochs": None if t_nan is not None else reached,
            "test_error": None if t_nan is not None else 1 - acc, "epoch_log": log}


def _results(records, order):
    rows = []
    for r in records:
        row = surv.flatten(surv.survival_fields(r))
        row.update(order=order[r["spec"], r["d"]], horizon_epochs=r["epochs"],
                   cell_id=f"{r['spec']}|d{r['d']}|{r['dtype']}|s{r['seed']}|e{r['epochs']:g}")
        rows.append(row)
    return pd.DataFrame(rows)


RECORDS = [
    # SVD d = 8 (paper 0/15): NaN loss at 2.5 and 7 epochs, one run to 100 epochs
    _record("analytic", 8, 1000, t_nan=2.5), _record("analytic", 8, 1001, t_nan=7.0), _record("analytic", 8, 1002),
    # SVD-Taylor d = 16 (paper 15/15): three to 100 epochs, one stopped at 40 without a NaN loss
    _record("taylor", 16, 1000), _record("taylor", 16, 1001), _record("taylor", 16, 1002),
    _record("taylor", 16, 1003, reached=40.0),
]
ORDER = {("analytic", 8): 0, ("taylor", 16): 1}


def test_success_table_numbers():
    table = surv.success_table(_results(RECORDS, ORDER))
    svd, tay = table.iloc[0], table.iloc[1]
    assert (svd["method"], svd["d"], tay["method"]) == ("analytic", 8, "taylor")
    assert svd["no NaN loss"] == "1/3" and svd["NaN loss"] == 2 and svd["paper (350 epochs)"] == "0/15"
    # the Taylor run stopped at 40 epochs is counted both ways: 3 or 4 of 4
    assert tay["no NaN loss"] == "3–4/4" and tay["stopped early, no NaN"] == 1 and tay["KM S(horizon) %"] == 100.0
    # Wilson for 1/3 from the closed form; Clopper–Pearson from 3/4 (lower) to 4/4 (upper, 1)
    z = 1.959963984540054
    c, h = (1 / 3 + z * z / 6) / (1 + z * z / 3), z * math.sqrt(2 / 27 + z * z / 36) / (1 + z * z / 3)
    assert svd["Wilson 95 %"] == "[6.1, 80]" and 6.1 <= 100 * (c - h) < 6.2 and 79 < 100 * (c + h) <= 80  # outward
    assert tay["Clopper–Pearson 95 %"] == "[19, 100]" and 19 <= 100 * sps.beta.ppf(0.025, 3, 2) < 20
    p_svd = sps.fisher_exact([[1, 2], [0, 15]])[1]
    p_tay = max(sps.fisher_exact([[k, 4 - k], [15, 0]])[1] for k in (3, 4))
    assert svd["Fisher p"] == pytest.approx(p_svd) and tay["Fisher p"] == pytest.approx(p_tay) == 1.0
    assert svd["Holm p"] == pytest.approx(min(1, 2 * p_svd)) and tay["Holm p"] == 1.0
    # 3 runs against 0/15 reject only at k ≥ 2 (p(2/3) = 3/153; p(1/3) = 1/6): power ≥ 0.8 needs
    # 3r²(1 − r) + r³ ≥ 0.8, i.e. r ≥ 0.71…, so the first grid rate (step 0.01) is 72 %
    r = next(x / 100 for x in range(101) if 3 * (x / 100) ** 2 * (1 - x / 100) + (x / 100) ** 3 >= 0.8)
    assert svd["80 % power if our rate"] == f"≥ {100 * r:.0f} %"


def test_a_stopped_run_is_counted_both_ways_never_dropped():
    """Dropping a run stopped early without a NaN loss would bias the count towards failure (the runs
    that failed before its stop all stay): the count is a range, Fisher's p the largest over it."""
    table = surv.success_table(_results(RECORDS + [_record("analytic", 8, 1003, reached=50.0)], ORDER))
    svd = table.iloc[0]
    assert svd["no NaN loss"] == "1–2/4" and svd["runs"] == 4 and svd["stopped early, no NaN"] == 1
    assert svd["Fisher p"] == pytest.approx(max(sps.fisher_exact([[k, 4 - k], [0, 15]])[1] for k in (1, 2)))
    lo = sps.binomtest(1, 4).proportion_ci(method="exact").low
    hi = sps.binomtest(2, 4).proportion_ci(method="exact").high
    assert svd["Clopper–Pearson 95 %"] == "[0.63, 93.3]" and 0.63 <= 100 * lo < 0.64 and 93.2 < 100 * hi <= 93.3
    # Kaplan–Meier: NaN losses at 2.5 (4 at risk) and 7 (3 at risk), censored at 50 and 100 → S(100) = 3/4 · 2/3
    assert svd["KM S(horizon) %"] == pytest.approx(50.0)


def test_the_one_line_summary_counts_as_the_success_table():
    """reports/README.md's line must not count a run stopped early as one that reached the horizon."""
    results = _results(RECORDS, ORDER)
    assert "taylor d=16: 3–4/4 [30, 100] % without NaN to 100 ep" in surv.summary(results)
    assert "analytic d=8: 1/3 [6.1, 80] % without NaN to 100 ep" in surv.summary(results)


def test_eigensolver_failures_are_named_apart_from_clock_stops():
    """A run whose eigensolver raised on a finite input stopped because of its own state: the report
    names those runs and says Kaplan–Meier's censoring of them is informative."""
    import importlib

    from stabkit.studies.zca_cifar10_survival import tables

    report = importlib.import_module("stabkit.studies.zca_cifar10_survival.report")  # the package exports a function of that name
    raised = _record("taylor", 16, 1004, reached=12.0)
    raised["paper_outcome"] = "eigh-failed"
    g, preset = surv.validate({"cells": [["analytic", 8]]}), get_preset("paper")
    text = " ".join(report._horizon_section(tables._runs(_results(RECORDS + [raised], ORDER)), g, preset))
    assert "2 stopped earlier without one" in text and "1 of the early stops are eigensolver failures" in text
    assert "informative" in text
    assert "eigensolver" not in " ".join(report._horizon_section(tables._runs(_results(RECORDS, ORDER)), g, preset))


def test_kaplan_meier_band_is_not_claimed_at_zero():
    every = [_record("analytic", 8, 1000 + i, t_nan=2.0 + i) for i in range(3)]
    km, _ = surv.km_table(_results(every, ORDER))
    assert km.iloc[0]["S(last event)"] == 0.0 and km.iloc[0]["95 % band, %"] == "—"


def test_kaplan_meier_and_accuracy_tables():
    res = _results(RECORDS, ORDER)
    km, curves = surv.km_table(res)
    svd = km.iloc[0]
    # S = 2/3 after 2.5, 1/3 after 7 (3 at risk, then 2)
    assert list(curves["analytic d=8 float32"][0]["survival"]) == pytest.approx([2 / 3, 1 / 3])
    assert sorted(curves["taylor d=16 float32"][2]) == [40.0, 100.0, 100.0, 100.0]  # censoring times
    assert svd["NaN losses"] == 2 and svd["first NaN (epoch)"] == 2.5 and svd["median time to NaN (epochs)"] == 7.0
    # the band is printed in % and rounded outward, as every other interval: it contains the computed one
    lo, hi = (float(x) for x in svd["95 % band, %"].strip("[]").split(","))
    band = curves["analytic d=8 float32"][0]
    assert lo <= 100 * band["lo"][-1] < 100 * band["hi"][-1] <= hi and hi - lo < 100 * (band["hi"][-1] - band["lo"][-1]) + 2
    assert km.iloc[1]["NaN losses"] == 0 and km.iloc[1]["horizon reached (epochs)"] == 100.0
    acc = surv.accuracy_table(res)
    assert list(acc["surviving runs"]) == [1, 4]
    assert acc.iloc[1]["test acc, last (median)"] == pytest.approx(0.85)
    assert acc.iloc[1]["last evaluated epoch"] == 40
    assert surv.survivors(res) == ["analytic|d8|float32|s1002|e100", "taylor|d16|float32|s1000|e100",
                                   "taylor|d16|float32|s1001|e100", "taylor|d16|float32|s1002|e100"]


def test_report_from_records(tmp_path):
    records = RECORDS[:-1] + [dict(RECORDS[-1], deadline_stop=True)]  # the run stopped at 40 epochs ended at a deadline
    res = _results(records + [_record("taylor", 16, 1000, horizon=350.0, reached=350.0, acc=0.93)], ORDER)
    grid = {"cells": [["analytic", 8], ["taylor", 16]], "seeds": 4, "extend_epochs": 350.0,
            "extend": ["taylor|d16|float32|s1000|e100"]}
    text = surv.report(res, grid, tmp_path)
    assert (tmp_path / "km_time_to_nan.png").stat().st_size > 1000 and (tmp_path / "test_accuracy.png").is_file()
    assert "7 runs to a horizon of 100 epochs: 2 with a NaN loss, 4 reached 100 epochs without one, 1 stopped earlier" in text
    assert "1 stopped earlier without one (1 of them at the GPU command's deadline) (censored at 40.0 epochs)." in text and "0 stopped earlier without one." in text and "The longest run reached 350.0 epochs, the paper's 350." in text
    assert "| analytic | SVD | 8 | float32 | 100 | 3 | 2 | 1/3 |" in text
    # extended run: its final test error
    assert "| taylor | 16 | float32 | 1 | 0.07 |" in text
    assert "GPU" in text and "which seeds fail may change" in text and "not measured here" in text
    assert text.count("- Landmark ") == 3 and "not measurable" in text
    assert "stacked in one network" not in text  # every run here ran alone
    # the paper preset's remaining differences from the authors' code, one table row each
    from stabkit.train.preset import PAPER_DEVIATIONS
    assert "### Remaining differences from the authors' code" in text
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731 — a pipe inside a table cell is escaped
    assert all(f"| {item} | {cell(authors)} | {cell(ours)} |" in text for item, authors, ours in PAPER_DEVIATIONS)
    assert "Remaining differences" not in surv.report(res, {**grid, "preset": "stabkit"}, tmp_path)
    res["stacked_runs"] = [3.0, 3.0, 3.0, 1.0, np.nan, 1.0, 1.0, 1.0]  # NaN: a record from before the column existed
    assert "3 of these 8 runs were trained 3 at a time, stacked in one network" in surv.report(res, grid, tmp_path)


def _fake_train_run(calls):
    """train_run's stand-in: a record that follows the schema, NaN loss at epoch 3 for SVD, none else."""
    def fake(config):
        config = {**config, "method": config["method"].name}  # run_cell hands train_run a Spec
        calls.append(config)
        t_nan = 3.0 if config["method"] == "analytic" else None
        rec = _record(config["method"], config["d"], config["seed"], t_nan=t_nan, reached=config["epochs"],
                      horizon=config["epochs"])
        rec.update(backward=config["method"], spec=config["method"], commit="test")
        return rec
    return fake


def test_runner_runs_the_cells_in_file_order_and_reports(tmp_path, monkeypatch):
    from stabkit.train import loop

    calls = []
    monkeypatch.setattr(loop, "train_run", _fake_train_run(calls))
    config = {"study": {"name": "surv-test", "kind": "zca_cifar10_survival"},
              "grid": {"cells": [["taylor", 16], ["analytic", 8]], "seeds": 4, "seed_block": 2, "epochs": 6.0,
                       "landmarks": [1.0], "device": "cpu", "train_options": {"check_every": 5}}}
    out = runner.run_study(config, jobs=1, out_root=tmp_path, progress=False)
    order = [(c["method"], c["seed"]) for c in calls]
    assert order == [("taylor", 1000), ("taylor", 1001), ("analytic", 1000), ("analytic", 1001),
                     ("taylor", 1002), ("taylor", 1003), ("analytic", 1002), ("analytic", 1003)]
    assert all(c["preset"] == "paper" and c["epochs"] == 6.0 and c["limit_images"] is None and c["check_every"] == 5
               and "fast" not in c and "eval_every" not in c for c in calls)
    stored = pd.read_parquet(tmp_path / "surv-test" / "results.parquet")
    assert len(stored) == 8 and isinstance(stored["epoch_log"].iloc[0], str)
    assert json.loads(stored["epoch_log"].iloc[0])[0]["epoch"] == 1
    assert list(stored["cell_id"][:2]) == ["taylor|d16|float32|s1000|e6", "taylor|d16|float32|s1001|e6"]
    readme = publish.build_report("surv-test", out_root=tmp_path).read_text()
    assert "| taylor | SVD-Taylor | 16 | float32 | 6 | 4 | 0 | 4/4 |" in readme
    assert "| analytic | SVD | 8 | float32 | 6 | 4 | 4 | 0/4 |" in readme
    assert out["spec"].tolist()[:2] == ["taylor", "taylor"]


def test_report_with_only_crashed_cells(tmp_path):
    crashed = pd.DataFrame([{"cell_id": "taylor|d16|float32|s1000|e100", "spec": "taylor", "error": "cell failed: X"}])
    text = surv.report(crashed, {"cells": [["taylor", 16]]}, tmp_path)
    assert "No finished runs yet." in text and "1 cell(s) crashed" in text


def test_an_interval_is_not_rounded_onto_0_or_100_percent():
    """Clopper–Pearson for 1 of 15 starts at 0.169 %: printed as 0.16, not as 0 (a bound it does not reach)
    and not as 0.17 (above the bound: the printed interval would be narrower than the computed one)."""
    lo = sps.binomtest(1, 15).proportion_ci(method="exact").low
    assert _stats.percent_interval(lo, 0.3125) == "[0.16, 32]"
    assert _stats.percent_interval(0.0, 1.0) == "[0, 100]" and _stats.percent_interval(0.004, 0.998) == "[0.4, 99.8]"
    assert _stats.percent_interval(0.006, 0.994) == "[0.6, 99.4]"  # nearest would print [1, 99], inside the interval
    # Clopper–Pearson at k = 1 of 60 starts at 0.042 %, at 59 of 60 ends at 99.958 %: more digits, not 0.0 or 100.0
    lo, hi = sps.binomtest(1, 60).proportion_ci(method="exact").low, sps.binomtest(59, 60).proportion_ci(method="exact").high
    assert _stats.percent_interval(lo, hi) == "[0.042, 99.958]" and 0.042 <= 100 * lo and 100 * hi <= 99.958


def test_intervals_are_rounded_outward():
    """3 of 3: Wilson's lower bound is 43.85 %, printed 43 (nearest, 44, would be narrower than computed);
    every printed Wilson and Clopper–Pearson interval of k of n ≤ 15 contains the computed one."""
    import re

    assert _stats.percent_interval(*_stats.wilson(3, 3)) == "[43, 100]"
    for n in range(1, 16):
        for k in range(n + 1):
            for lo, hi in (_stats.wilson(k, n), _stats.clopper_pearson(k, n)):
                plo, phi = (float(x) for x in re.fullmatch(r"\[(.*), (.*)\]", _stats.percent_interval(lo, hi)).groups())
                assert plo <= 100 * lo + 1e-9 and phi >= 100 * hi - 1e-9, (k, n)


def test_stacked_seeds_give_the_rows_of_runs_one_by_one(tmp_path, tiny_batches, float64):
    """``run_study(stack=2)``: the two seeds of each cell train at once, stacked in one network, and
    store the rows that one run per seed stores (float64: to rounding), with ``stacked_runs`` 2."""
    config = {"study": {"name": "surv-stack", "kind": "zca_cifar10_survival"},
              "grid": {"cells": [["taylor", 4], ["analytic", 4]], "seeds": 2, "seed_block": 2, "epochs": 1.0,
                       "width": 0.125, "batch_size": 16, "landmarks": [1.0], "device": "cpu",
                       "data": str(tiny_batches), "dtypes": ["float64"]}}
    alone = runner.run_study(config, jobs=1, out_root=tmp_path / "alone", progress=False)
    stacked = runner.run_study(config, jobs=1, out_root=tmp_path / "stacked", progress=False, stack=2)
    assert json.loads((tmp_path / "stacked" / "surv-stack" / "run.json").read_text())["stack"] == 2
    assert alone["stacked_runs"].tolist() == [1] * 4 and stacked["stacked_runs"].tolist() == [2] * 4
    assert alone["steps_done"].tolist() == [5] * 4  # 80 images, batch 16
    skip = {"wall_s", "train_s", "stacked_runs", "seconds"}
    for col in alone.columns:
        if col in skip:
            continue
        a, b = alone[col].tolist(), stacked[col].tolist()
        if col == "epoch_log":
            a, b = [json.loads(x) for x in a], [json.loads(x) for x in b]
            a = [{k: v for e in log for k, v in e.items()} for log in a]  # one epoch each
            b = [{k: v for e in log for k, v in e.items()} for log in b]
            for x, y in zip(a, b):
                assert x.keys() == y.keys()
                for k in x:
                    assert x[k] == pytest.approx(y[k], rel=1e-9, nan_ok=True) if isinstance(x[k], float) else x[k] == y[k], k
        elif pd.api.types.is_float_dtype(alone[col]):
            np.testing.assert_allclose(a, b, rtol=1e-9, err_msg=col)
        else:
            assert a == b, col


# ------------------------------------------------------------------------------ the horizon sentence
def _horizon_text(records, grid):
    import importlib

    from stabkit.studies.zca_cifar10_survival import tables

    report = importlib.import_module("stabkit.studies.zca_cifar10_survival.report")
    g = surv.validate({"cells": [["analytic", 8]], **grid})
    return " ".join(report._horizon_section(tables._runs(_results(records, ORDER)), g, get_preset(g["preset"])))


def test_horizon_sentence_follows_the_epochs_reached_and_the_schedule():
    """Each clause from the data: 13 epochs lie inside the paper's first lr phase (its drops: 100, 200,
    300, from the paper preset); 150 epochs are past the drop at 100 and not the others; the bound on a
    350-epoch count holds only for runs that follow the paper's schedule (lr 0.1, full epochs)."""
    short = [_record("analytic", 8, 1000 + i, reached=13.0, horizon=13.0) for i in range(3)]
    text = _horizon_text(short, {"epochs": 13.0})
    assert "The longest run reached 13.0 epochs of the paper's 350 (lr ×0.1 at epochs 100, 200, 300)" in text
    assert "every run ended within the paper's first lr phase (lr 0.1, epochs 0–100), so none saw an lr drop" in text
    assert "upper bound of what the same runs would count at 350 epochs" in text
    past = [_record("analytic", 8, 1000, reached=150.0, horizon=150.0)]
    text = _horizon_text(past, {"epochs": 150.0})
    assert "the longest ran past the paper's lr drop at epoch 100" in text and "first lr phase" not in text
    assert "200" not in text.split("past the paper's")[1].split(".")[0]
    # another lr, or shortened epochs: not the paper's schedule, so no bound is claimed
    for grid in ({"epochs": 13.0, "lr": 0.05}, {"epochs": 13.0, "limit_images": 15360}):
        text = _horizon_text(short, grid)
        assert "upper bound" not in text and "no bound of a 350-epoch count" in text, grid
    full = [_record("analytic", 8, 1000, reached=350.0, horizon=350.0)]
    text = _horizon_text(full, {"epochs": 350.0})
    assert "The longest run reached 350.0 epochs, the paper's 350." in text and "upper bound" not in text


def test_seed_caveat_is_a_caveat_not_a_measurement(tmp_path):
    res = _results(RECORDS, ORDER)
    text = surv.report(res, {"cells": [["analytic", 8], ["taylor", 16]], "seeds": 4}, tmp_path)
    assert "is not reproducible" not in text and "Only the failure *rate*" not in text
    assert "not bitwise deterministic" in text and "which seeds fail may change" in text
    assert "No cell was rerun here to measure this" in text


def test_index_line_says_partial_and_gives_intervals(tmp_path):
    """369 of 375 cells not computed: the reports index says so, and each count has its Wilson interval."""
    out = tmp_path / "surv"
    out.mkdir()
    _results([_record("analytic", 8, 1000 + i, reached=13.0, horizon=13.0) for i in range(3)], ORDER).to_parquet(
        out / "results.parquet")
    meta = {"kind": "zca_cifar10_survival", "cells_total": 375, "cells_reused": 0, "cells_computed": 6}
    line = publish._summary(meta, out)
    assert line.startswith("partial, 369 of 375 cells not computed: 3 runs (Wilson 95 %); ")
    assert "analytic d=8: 3/3 [43, 100] % without NaN to 13 ep" in line
    assert not publish._summary({**meta, "cells_computed": 375}, out).startswith("partial")


def test_extended_horizon_counts_every_seed_of_the_cell_not_only_the_extended_survivors():
    """``extend`` reruns only survivors to the longer horizon. Compared with Table IV's count of 15 runs
    of 350 epochs, that horizon's row must count every seed of the cell: a NaN loss before the base
    horizon is one before 350 too, a survivor not extended has an unknown outcome at 350 (counted both
    ways). Counting the extended runs alone (here 1 of 2) drops the early failures: n and the rate
    are those of the survivors, biased towards success."""
    base = [_record("taylor", 16, 1000, t_nan=30.0), _record("taylor", 16, 1001), _record("taylor", 16, 1002),
            _record("taylor", 16, 1003)]
    ext = [_record("taylor", 16, 1001, t_nan=200.0, horizon=350.0), _record("taylor", 16, 1002, reached=350.0, horizon=350.0)]
    results = _results(base + ext, ORDER)
    row = surv.success_table(results).set_index("horizon (epochs)").loc[350.0]
    # seeds at 350: 1000 NaN at 30, 1001 NaN at 200, 1002 no NaN to 350, 1003 unknown (not extended, 100 reached)
    assert (row["runs"], row["NaN loss"], row["no NaN loss"], row["stopped early, no NaN"]) == (4, 2, "1–2/4", 1)
    assert row["Fisher p"] == pytest.approx(max(sps.fisher_exact([[k, 4 - k], [15, 0]])[1] for k in (1, 2)))
    lo = sps.binomtest(1, 4).proportion_ci(method="exact").low
    hi = sps.binomtest(2, 4).proportion_ci(method="exact").high
    assert row["Clopper–Pearson 95 %"] == _stats.percent_interval(lo, hi)
    # Kaplan–Meier to 350 by hand: event at 30 (4 at risk), censored at 100, event at 200 (2 at risk), censored at 350
    assert row["KM S(horizon) %"] == pytest.approx(100 * (3 / 4) * (1 / 2))
    km, _ = surv.km_table(results)
    km350 = km[km["cell"].str.endswith("(350 ep)")].iloc[0]
    assert (km350["runs"], km350["NaN losses"], km350["first NaN (epoch)"]) == (4, 2, 30.0)
    assert "taylor d=16: 1–2/4" in surv.summary(results).split("to 100 ep")[-1]
    # the base horizon's row is unchanged by the extension: 3 of 4 to 100 epochs
    assert surv.success_table(results).set_index("horizon (epochs)").loc[100.0, "no NaN loss"] == "3/4"
