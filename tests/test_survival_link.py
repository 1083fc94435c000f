"""The landmark link on constructed runs whose answer is known: the diagnostic informative beyond the
cell, not informative beyond it, and measured after the landmark (leakage)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from stabkit.studies import _landmark

SPE = 10          # steps per epoch
HORIZON = 20      # epochs
L = 5             # landmark (epochs)
CELLS = [("analytic", 8, "float32", -1.0), ("analytic", 16, "float32", 0.8), ("taylor", 16, "float32", -2.0),
         ("pi", 16, "float32", -0.3)]


def _entry(epoch, K, fail_flag):
    return {"epoch": epoch, "step": epoch * SPE, "train_loss": 1.5, "test_acc": 0.5, "conv1_weight_norm": 3.0,
            "lam_max_over_eps": 1e3, "lam_min": 1e-3, "min_rel_gap": 1 / K, "max_abs_K": K, "grad_norm_max": 2.0,
            "nonfinite_events": 0}


def _runs(mode, n_per_cell=70, seed=0):
    """mode: 'informative' (failure after L depends on x, measured before L), 'cell-only' (x is the
    cell's level plus noise, failure depends on the cell only), 'leak' (x before L is noise; after L
    max|K̃| equals the outcome)."""
    rng = np.random.default_rng(seed)
    rows = []
    for spec, d, dtype, level in CELLS:
        for s in range(n_per_cell):
            x = rng.standard_normal()
            logit = level + (2.5 * x if mode == "informative" else 0.0)
            fails = rng.random() < 1 / (1 + math.exp(-logit))
            if mode == "cell-only":
                x = level + 0.3 * rng.standard_normal()
            t_fail = rng.uniform(L + 0.5, HORIZON) if fails else None
            last_epoch = math.ceil(t_fail) if fails else HORIZON
            log = []
            for e in range(1, last_epoch + 1):
                before = e <= L
                K = 10 ** (3 + x) if before or mode != "leak" else (1e20 if fails else 1e2)
                log.append(_entry(e, K, fails))
            rows.append({"norm": "zca", "spec": spec, "d": d, "dtype": dtype, "seed": s, "epochs": float(HORIZON),
                         "steps_per_epoch": SPE, "epoch_log": json.dumps(log),
                         "time_to_nan_loss_epochs": t_fail, "censored_at_epochs": None if fails else float(HORIZON)})
    return pd.DataFrame(rows)


def test_informative_diagnostic_is_found():
    out = _landmark.landmark_link(_runs("informative"), L, repeats=4)
    fit = out["fit"]
    assert fit["adds"], out["sentence"]
    assert fit["brier"]["cell+diag"] < fit["brier"]["cell"] - 0.02
    assert "the diagnostics add to the cell" in out["sentence"] and f"n = {fit['n']}" in out["sentence"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_level_diagnostic_adds_nothing(seed):
    runs = _runs("cell-only", seed=seed)
    out = _landmark.landmark_link(runs, L, repeats=4)
    fit = out["fit"]
    assert not fit["adds"], out["sentence"]
    assert "no gain of the diagnostics over the cell is shown at 2 SE" in out["sentence"]
    # the cell model is the one that carries the signal: it beats the base rate
    assert fit["brier"]["cell"] < fit["brier"]["base"]
    # and the diagnostic alone does carry the cell's signal (it is not a useless feature)
    tab = out["table"]
    corr = np.corrcoef(tab["log10_max_K"], tab["y"])[0, 1]
    assert corr > 0.1


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_a_diagnostic_that_only_encodes_the_cell_is_not_credited_with_many_small_cells(seed):
    """40 cells of 4 runs: the cells' smoothed rates are rough, and a feature equal to each cell's
    true logit (the same for every run of the cell) would beat them by pooling across cells — raw
    features were credited as adding "beyond the cell" on these seeds. Centred within the cells
    (inside each fold), it carries nothing: cell + diagnostics scores as the cell model."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, level in enumerate(np.linspace(-3.5, 1.5, 40)):
        for s in range(4):
            fails = rng.random() < 1 / (1 + math.exp(-level))
            t_fail = rng.uniform(L + 0.5, HORIZON) if fails else None
            log = [_entry(e, 10 ** (3 + level), fails) for e in range(1, (math.ceil(t_fail) if fails else HORIZON) + 1)]
            rows.append({"norm": "zca", "spec": "analytic", "d": c, "dtype": "float32", "seed": s, "epochs": float(HORIZON),
                         "steps_per_epoch": SPE, "epoch_log": json.dumps(log), "time_to_nan_loss_epochs": t_fail,
                         "censored_at_epochs": None if fails else float(HORIZON)})
    out = _landmark.landmark_link(pd.DataFrame(rows), L, repeats=4)
    fit = out["fit"]
    assert fit["n"] == 160 and not fit["adds"], out["sentence"]
    assert abs(fit["gain"]) < 1e-3  # only the fitted intercept differs from the cell model


def test_feature_after_the_landmark_is_not_used():
    runs = _runs("leak")
    out = _landmark.landmark_link(runs, L, repeats=4)
    assert not out["fit"]["adds"], out["sentence"]
    # the features equal those computed from the entries up to L only, whatever comes after
    cut = runs.copy()
    cut["epoch_log"] = [json.dumps([e for e in json.loads(t) if e["step"] <= L * SPE]) for t in runs["epoch_log"]]
    cut_table, _ = _landmark.landmark_table(cut, L)
    cols = list(_landmark.FEATURE_NAMES)
    pd.testing.assert_frame_equal(out["table"][cols], cut_table[cols])
    # the leak is real: at a later landmark the leaked epochs (6…15) are before it, legitimately, and found
    assert _landmark.landmark_link(runs, 15, repeats=2)["fit"]["adds"]


def test_eligibility_at_the_landmark():
    runs = pd.DataFrame([
        # failed at 3 ≤ L: out; failed at 7 > L: in, y = 1; survived to the horizon: in, y = 0;
        # stopped at 4 without NaN: out; stopped at 12 < horizon without NaN: out (unknown)
        {"time_to_nan_loss_epochs": 3.0, "censored_at_epochs": None},
        {"time_to_nan_loss_epochs": 7.0, "censored_at_epochs": None},
        {"time_to_nan_loss_epochs": None, "censored_at_epochs": 20.0},
        {"time_to_nan_loss_epochs": None, "censored_at_epochs": 4.0},
        {"time_to_nan_loss_epochs": None, "censored_at_epochs": 12.0},
    ]).assign(norm="zca", spec="analytic", d=8, dtype="float32", seed=range(5), epochs=20.0, steps_per_epoch=SPE,
              epoch_log=json.dumps([_entry(e, 10.0 ** e, False) for e in range(1, 21)]))
    table, left = _landmark.landmark_table(runs, L)
    np.testing.assert_array_equal(table["y"], [1.0, 0.0, np.nan])  # the last: stopped at 12, unknown
    assert left == {"failed_before": 1, "stopped_before": 1, "unknown_after": 1}
    # max|K̃| over epochs 1..5 is 1e5
    assert table["log10_max_K"].tolist() == [5.0, 5.0, 5.0]
    with pytest.raises(ValueError, match="every outcome known"):
        _landmark.cross_validate(table)
    assert _landmark.cross_validate(table.iloc[:2]) is None  # one failure: nothing to fit
    assert "not measurable" in _landmark.landmark_link(runs, L)["sentence"]


def test_a_run_without_a_recorded_horizon_that_stopped_after_l_is_of_unknown_outcome():
    runs = pd.DataFrame([{"time_to_nan_loss_epochs": None, "censored_at_epochs": 19.99, "epochs": np.nan},
                         {"time_to_nan_loss_epochs": None, "censored_at_epochs": 20.0, "epochs": 20.0}]).assign(
        norm="zca", spec="analytic", d=8, dtype="float32", seed=range(2), steps_per_epoch=SPE, epoch_log="[]")
    table, left = _landmark.landmark_table(runs, L)
    np.testing.assert_array_equal(table["y"], [np.nan, 0.0])
    assert left["unknown_after"] == 1


def _stop_some_failures(runs, every=4):
    """Every ``every``-th run that failed after L instead stops (no NaN loss) halfway to its failure."""
    runs = runs.copy()
    failed = np.flatnonzero(runs["time_to_nan_loss_epochs"].notna().to_numpy())[::every]
    for i in failed:
        stop = (L + runs.at[i, "time_to_nan_loss_epochs"]) / 2
        runs.at[i, "time_to_nan_loss_epochs"] = None
        runs.at[i, "censored_at_epochs"] = stop
    return runs, len(failed)


def test_runs_stopped_after_the_landmark_are_counted_both_ways():
    """Runs of unknown outcome are neither dropped nor guessed: the link is fitted with them as failures
    and as survivors (the failure counts differ by exactly their number), and the verdict is stated
    only as far as both fits agree."""
    runs, k = _stop_some_failures(_runs("informative"))
    out = _landmark.landmark_link(runs, L, repeats=3)
    fits = out["fits"]
    assert out["fit"] is None and out["left_out"]["unknown_after"] == k > 0
    assert fits["as failures"]["n"] == fits["as survivors"]["n"] == len(out["table"])
    assert fits["as failures"]["failures"] - fits["as survivors"]["failures"] == k
    assert all(f["adds"] for f in fits.values())
    assert "add to the cell in both completions" in out["sentence"] and f"{k} runs alive at L stopped" in out["sentence"]
    assert "other completions" in out["sentence"]  # a statement about two completions, not a bound over all
    runs, k = _stop_some_failures(_runs("cell-only", seed=1))
    out = _landmark.landmark_link(runs, L, repeats=3)
    assert not any(f["adds"] for f in out["fits"].values())
    assert "neither completion shows a gain over the cell at 2 SE" in out["sentence"]
    assert f"other completions of the {k} runs of unknown outcome may" in out["sentence"]


def test_a_verdict_that_depends_on_the_unknown_runs_is_not_stated():
    fits = {"as failures": {"adds": True}, "as survivors": {"adds": False}}
    for f in fits.values():
        f.update(n=50, failures=10, cells=2, folds=5, repeats=2, features=["x"], gain=0.01, gain_se=0.004,
                 brier={"base": 0.2, "cell": 0.15, "cell+diag": 0.14})
    text = _landmark.both_ways_sentence(5.0, {"failed_before": 0, "stopped_before": 0, "unknown_after": 3}, fits)
    assert "depends on the 3 runs of unknown outcome" in text
    assert "both completions" not in text and "neither completion" not in text


def test_standardisation_inside_the_fold():
    runs = _runs("informative", n_per_cell=30)
    table, _ = _landmark.landmark_table(runs, L)
    base = _landmark.cross_validate(table, repeats=1, seed=3)
    # fold assignment depends only on y and the seed: recompute it, move one run's features far away
    fold = _landmark.stratified_folds(table["y"].to_numpy(float), base["folds"], np.random.default_rng(3))
    i = 0
    moved = table.copy()
    moved.loc[i, list(_landmark.FEATURE_NAMES)] += 1e3
    after = _landmark.cross_validate(moved, repeats=1, seed=3)
    same_fold = (fold == fold[i]) & (np.arange(len(fold)) != i)
    # the other test runs of that fold are predicted by models that never saw run i (not even its
    # mean or sd): their predictions do not move
    np.testing.assert_array_equal(after["pred"]["cell+diag"][same_fold], base["pred"]["cell+diag"][same_fold])
    other = fold != fold[i]
    assert not np.allclose(after["pred"]["cell+diag"][other], base["pred"]["cell+diag"][other])


def test_cell_rates_leave_one_out_by_hand():
    cells = np.array(["a", "a", "a", "b"])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    got = _landmark.cell_rates(cells, y, cells, prior=2.0, leave_one_out=True)
    # each run's own outcome leaves its cell's count and the prior's rate p̄ (of the other 3 runs):
    # run 0: cell a 0/2, p̄ = 1/3 → (0 + 2/3)/4; runs 1, 2: 1/2, p̄ = 2/3 → (1 + 4/3)/4; run 3: 0/0, p̄ = 1/3
    assert got == pytest.approx([(2 / 3) / 4, (7 / 3) / 4, (7 / 3) / 4, 1 / 3])
    assert _landmark.cell_rates(cells, y, np.array(["a", "c"]), prior=2.0) == pytest.approx([(1 + 1) / 5, 0.5])


def test_records_without_a_log_fit_only_the_cell():
    runs = _runs("informative", n_per_cell=20).assign(epoch_log=None)
    out = _landmark.landmark_link(runs, L, repeats=2)
    assert out["fit"]["features"] == [] and not out["fit"]["adds"]
    assert "no diagnostic was recorded before L" in out["sentence"]
    assert out["fit"]["brier"]["cell+diag"] == pytest.approx(out["fit"]["brier"]["cell"], abs=1e-3)


def _deadline(runs, share, seed):
    """Independent censoring, as a wall-clock deadline does: a ``share`` of the runs stop at a uniform time
    in (L + 0.5, HORIZON − 0.5); one stopped before its NaN loss has an unknown outcome. Returns the
    runs and the hidden outcomes by (spec, d, seed)."""
    rng = np.random.default_rng(seed)
    runs, hidden = runs.copy(), {}
    for i in range(len(runs)):
        if rng.random() < share:
            stop = rng.uniform(L + 0.5, HORIZON - 0.5)
            t = runs.at[i, "time_to_nan_loss_epochs"]
            failed = t is not None and not math.isnan(t)
            if not failed or t > stop:
                hidden[runs.at[i, "spec"], runs.at[i, "d"], runs.at[i, "seed"]] = float(failed)
                runs.at[i, "time_to_nan_loss_epochs"] = None
                runs.at[i, "censored_at_epochs"] = stop
    return runs, hidden


def test_a_link_the_unknown_runs_hide_is_not_called_absent():
    """The two constant completions bound neither the Brier gain nor its verdict: here both miss a link
    that the runs' real outcomes show, so the sentence may say it was not shown, never that it is absent."""
    runs, hidden = _deadline(_runs("informative", seed=0), 0.9, seed=10)
    out = _landmark.landmark_link(runs, L, repeats=2)
    assert not any(f["adds"] for f in out["fits"].values())
    tab = out["table"]
    real = tab["y"].to_numpy().copy()
    unknown = np.isnan(real)
    real[unknown] = [hidden[k] for k in zip(tab["spec"][unknown], tab["d"][unknown], tab["seed"][unknown])]
    assert _landmark.cross_validate(tab.assign(y=real), repeats=2)["adds"]
    assert "neither completion shows a gain" in out["sentence"] and "add nothing" not in out["sentence"]


def test_counts_in_the_sentences_agree_in_number():
    one = {"failed_before": 1, "stopped_before": 0, "unknown_after": 1}
    fits = {"as failures": None, "as survivors": {"adds": False}}
    text = _landmark.both_ways_sentence(5.0, one, fits)
    assert "the 1 run stopped after L" in text and "1 run with a NaN loss by epoch 5" in text
    assert "counted as failures," in text  # which completion left too few to fit


def test_calibration_draw_keeps_each_cells_runs_and_rate():
    """benchmarks/landmark_calibration.py's null data: every drawn feature row is a real run's row of
    the same cell, and the outcomes follow the cell model's smoothed rates (β = 0), not the features."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import landmark_calibration as lc

    from stabkit.studies.zca_cifar10 import tables

    rng = np.random.default_rng(3)
    cells = np.repeat(["a|8|float32", "b|8|float32", "c|8|float32"], 40)
    table = pd.DataFrame({"spec": [c.split("|")[0] for c in cells], "d": 8, "dtype": "float32", "cell": cells})
    for f in tables.FEATURES:
        table[f] = rng.standard_normal(len(cells)) + (table["spec"] == "b") * 5.0
    table["y"] = np.r_[np.zeros(40), np.ones(10), np.zeros(30), np.ones(40)]
    p_true = {"a": (0 + 2 * 50 / 120) / 42, "b": (10 + 2 * 50 / 120) / 42, "c": (40 + 2 * 50 / 120) / 42}

    ys = {k: [] for k in p_true}
    for i in range(300):
        sim = lc.draw(table, 0.0, np.random.default_rng(i))
        for c in ("a", "b", "c"):
            real = {tuple(r) for r in table.loc[table["spec"] == c, list(tables.FEATURES)].to_numpy()}
            drawn = sim.loc[sim["spec"] == c, list(tables.FEATURES)].to_numpy()
            assert all(tuple(r) in real for r in drawn)
            ys[c].append(sim.loc[sim["spec"] == c, "y"].mean())
    for c, p in p_true.items():   # 300 × 40 draws per cell: SE of the mean ≤ 0.0046
        assert abs(np.mean(ys[c]) - p) < 0.02, (c, np.mean(ys[c]), p)


def test_no_outcome_reaches_a_prediction_of_its_own_fold(monkeypatch):
    """Outcome leakage: with the folds fixed (not drawn from y), flipping one run's outcome moves no
    prediction of its own fold — its own included — under any of the three models (base rate, cell,
    cell + diagnostics: the cell model, the offsets and the fit see training-fold outcomes only);
    the flip does move the other folds' cell predictions. The cell model's predictions are, run by
    run, the smoothed rate of the run's cell over the other folds, computed here by hand."""
    table, _ = _landmark.landmark_table(_runs("informative", n_per_cell=30), L)
    n, folds, prior = len(table), 5, 2.0
    fixed = np.arange(n) % folds
    monkeypatch.setattr(_landmark, "stratified_folds", lambda y, k, rng: fixed)
    base = _landmark.cross_validate(table, folds=folds, repeats=1, prior=prior)
    y, cells = table["y"].to_numpy(float), _landmark.cell_ids(table)
    assert base["folds"] == folds and 10 < y.sum() < n - 10
    for i in range(n):
        train = fixed != fixed[i]
        same = train & (cells == cells[i])
        pbar = y[train].mean()
        assert base["pred"]["cell"][i] == pytest.approx((y[same].sum() + prior * pbar) / (same.sum() + prior), rel=1e-12)
        assert base["pred"]["base"][i] == pytest.approx(pbar, rel=1e-12)
    for i in (int(np.flatnonzero(y == 1)[0]), int(np.flatnonzero(y == 0)[0])):
        flipped = _landmark.cross_validate(table.assign(y=np.where(np.arange(n) == i, 1 - y, y)), folds=folds,
                                           repeats=1, prior=prior)
        own = fixed == fixed[i]
        for model in ("base", "cell", "cell+diag"):
            np.testing.assert_array_equal(flipped["pred"][model][own], base["pred"][model][own])
        others = ~own & (cells == cells[i])
        assert np.abs(flipped["pred"]["cell"][others] - base["pred"]["cell"][others]).min() > 1e-3


def test_the_landmark_boundary_steps():
    """A NaN loss at the last step of epoch L (time (L·SPE − 1 + 1)/SPE = L) is before the landmark: the run
    is out. One at the first step after it (L + 1/SPE) is a failure after L, whose features come from
    epochs 1…L only — the entry ending at step L·SPE is in, the one of epoch L + 1 (where max|K̃| is
    1e20 here) is not."""
    log = [_entry(e, 10.0 ** (e if e <= L else 20), False) for e in range(1, L + 2)]
    runs = pd.DataFrame([{"time_to_nan_loss_epochs": L * SPE / SPE}, {"time_to_nan_loss_epochs": (L * SPE + 1) / SPE}]).assign(
        censored_at_epochs=None, norm="zca", spec="analytic", d=8, dtype="float32", seed=range(2), epochs=20.0,
        steps_per_epoch=SPE, epoch_log=json.dumps(log))
    table, left = _landmark.landmark_table(runs, L)
    assert left["failed_before"] == 1 and table["seed"].tolist() == [1] and table["y"].tolist() == [1.0]
    assert table["log10_max_K"].tolist() == [float(L)]
