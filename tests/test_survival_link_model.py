"""The landmark link's pieces (``stabkit.studies._landmark``) against hand-worked numbers and independent
computations: eligibility at exactly L, the features, the in-fold standardisation, the cell + diagnostics
model's intercept and the standard error of the Brier gain."""

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from stabkit.studies import _landmark

L = 5.0
SPE = 10


def test_a_run_that_fails_or_stops_exactly_at_the_landmark_is_not_alive_at_it():
    """van Houwelingen's landmark: a run enters only with no NaN loss at or before L and trained past L —
    a NaN loss at exactly L is a failure before, a stop at exactly L without one is a stop before."""
    runs = pd.DataFrame([
        {"time_to_nan_loss_epochs": L, "censored_at_epochs": None},
        {"time_to_nan_loss_epochs": None, "censored_at_epochs": L},
        {"time_to_nan_loss_epochs": L + 0.1, "censored_at_epochs": None},
        {"time_to_nan_loss_epochs": None, "censored_at_epochs": 20.0},
    ]).assign(norm="zca", spec="analytic", d=8, dtype="float32", seed=range(4), epochs=20.0, steps_per_epoch=SPE,
              epoch_log=None)
    table, left = _landmark.landmark_table(runs, L)
    assert left == {"failed_before": 1, "stopped_before": 1, "unknown_after": 0}
    np.testing.assert_array_equal(table["y"], [1.0, 0.0])


def test_features_before_the_landmark_by_hand():
    """Epochs 1–5 (steps 10…50) count, epoch 6 does not: max|K̃| 1e4 → 4, min gap 1e-3 → −3, λ_max/ε
    max 100 → 2, λ_min min 1e-5 → −5, grad max 8 → log10 8, 3 non-finite events → log 4, last loss 0.7,
    conv1 norm 2 → 6: growth log 3."""
    rows = [(1e2, 1e-2, 10, 1e-3, 1.0, 0, 2.0, 2.0), (1e4, 1e-3, 100, 1e-5, 8.0, 1, 1.1, 3.0),
            (1e3, 1e-2, 50, 1e-4, 2.0, 2, 0.9, 4.0), (1e3, 1e-2, 50, 1e-4, 2.0, 0, 0.8, 5.0),
            (1e3, 1e-2, 50, 1e-4, 2.0, 0, 0.7, 6.0), (1e9, 1e-9, 1e9, 1e-9, 1e9, 9, 9.0, 99.0)]
    keys = ("max_abs_K", "min_rel_gap", "lam_max_over_eps", "lam_min", "grad_norm_max", "nonfinite_events",
            "train_loss", "conv1_weight_norm")
    entries = [{"step": SPE * (e + 1), **dict(zip(keys, row))} for e, row in enumerate(rows)]
    got = _landmark.features_before(entries, L * SPE)
    want = {"log10_max_K": 4.0, "log10_min_rel_gap": -3.0, "log10_lam_max_over_eps": 2.0, "log10_lam_min": -5.0,
            "log10_grad_norm_max": math.log10(8.0), "log1p_nonfinite_events": math.log(4.0),
            "last_train_loss": 0.7, "log_conv1_norm_growth": math.log(3.0)}
    assert got == pytest.approx(want, rel=1e-12)


def test_standardisation_centres_each_run_on_its_own_cells_training_mean():
    """Train: cell a (1, 3), cell b (10, 14) → deviations (−1, 1, −2, 2), sd √2.5. Test: 5 in a → 3,
    20 in b → 8, 7 in a cell without training runs → 7 − the training mean 7 = 0; a constant column → 0."""
    train = np.array([[1.0, 4.0], [3.0, 4.0], [10.0, 4.0], [14.0, 4.0]])
    test = np.array([[5.0, 4.0], [20.0, 4.0], [7.0, 4.0]])
    tr, te = _landmark._standardise(train, test, np.array(["a", "a", "b", "b"]), np.array(["a", "b", "c"]))
    sd = math.sqrt(2.5)
    np.testing.assert_allclose(tr, [[-1 / sd, 0], [1 / sd, 0], [-2 / sd, 0], [2 / sd, 0]], rtol=1e-14, atol=0)
    np.testing.assert_allclose(te, [[3 / sd, 0], [8 / sd, 0], [0, 0]], rtol=1e-14, atol=1e-15)


def _table(n_fail, n_ok, seed=0, constant=False):
    """A landmark table of 3 cells with ``n_fail`` failures and ``n_ok`` survivors dealt across them."""
    rng = np.random.default_rng(seed)
    n = n_fail + n_ok
    y = np.r_[np.ones(n_fail), np.zeros(n_ok)]
    table = pd.DataFrame({"spec": np.array(["a", "b", "c"])[np.arange(n) % 3], "d": 8, "dtype": "float32",
                          "seed": range(n), "y": y})
    for f in _landmark.FEATURE_NAMES:
        table[f] = 1.0 if constant else rng.standard_normal(n) + y
    return table


def _logit(p):
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_cell_plus_diagnostics_without_features_is_the_leave_one_out_cell_model_with_a_fitted_intercept():
    """With features constant (standardised to 0) the model is logit P = logit p_c + β₀; β₀ solves the
    score equation Σ_train (σ(o_i + β₀) − y_i) = 0 with o_i the run's cell rate *without itself* (p̄ and
    the cell count both leave-one-out, prior 2): solved here with brentq, predictions compared."""
    table = _table(8, 22, constant=True)
    fit = _landmark.cross_validate(table, folds=3, repeats=1, seed=5, l2=1.0)
    y = table["y"].to_numpy(float)
    cells = table["spec"].to_numpy()
    fold = _landmark.stratified_folds(y, fit["folds"], np.random.default_rng(5))
    want = np.empty(len(y))
    for k in range(fit["folds"]):
        tr = np.flatnonzero(fold != k)
        n_tr, k_tr = len(tr), y[tr].sum()

        def loo_rate(i):
            same = [j for j in tr if cells[j] == cells[i] and j != i]
            pbar = (k_tr - y[i]) / (n_tr - 1)
            return (sum(y[j] for j in same) + 2 * pbar) / (len(same) + 2)

        offsets = [_logit(loo_rate(i)) for i in tr]
        beta0 = brentq(lambda b: sum(_sigmoid(o + b) - y[i] for o, i in zip(offsets, tr)), -20, 20, xtol=1e-14)
        for i in np.flatnonzero(fold == k):
            same = [j for j in tr if cells[j] == cells[i]]
            rate = (sum(y[j] for j in same) + 2 * k_tr / n_tr) / (len(same) + 2)
            want[i] = _sigmoid(_logit(rate) + beta0)
    np.testing.assert_allclose(fit["pred"]["cell+diag"], want, rtol=1e-8)


def test_gain_standard_error_is_the_sample_sd_over_root_n():
    """The 2-SE rule's SE: the per-run Brier gains' sample standard deviation (n − 1, ``statistics.stdev``)
    over √n; with one repeat each run's squared error is (p − y)² of its single prediction."""
    table = _table(12, 28, seed=1)
    fit = _landmark.cross_validate(table, folds=4, repeats=1, seed=2)
    y = fit["y"]
    gain = (fit["pred"]["cell"] - y) ** 2 - (fit["pred"]["cell+diag"] - y) ** 2
    assert fit["gain"] == pytest.approx(float(np.mean(gain)), rel=1e-12)
    assert fit["gain_se"] == pytest.approx(statistics.stdev(gain.tolist()) / math.sqrt(len(y)), rel=1e-12)


def test_folds_never_exceed_the_failures_so_every_test_fold_holds_one():
    """Stratified K-fold: with 6 failures, 10 folds asked become 6, and every fold tests a failure."""
    table = _table(6, 40, seed=3)
    fit = _landmark.cross_validate(table, folds=10, repeats=1, seed=0)
    assert fit["folds"] == 6
    fold = _landmark.stratified_folds(fit["y"], fit["folds"], np.random.default_rng(0))
    assert all(fit["y"][fold == k].sum() >= 1 for k in range(fit["folds"]))


def test_standardisation_gives_a_deviation_that_is_not_known_zero():
    """Column 1: cell a (1, 3, NaN) has mean 2 over the runs that recorded it → deviations (−1, 1, 0),
    cell b (10, 14) → (−2, 2): sd √2; test 5 in a → 3/√2, NaN in b → 0, 100 in a cell without training
    runs → 0 (its deviation from its own cell is unknown; the training mean would put 100 − 5.6 on
    the within-cell scale). Column 2: cell a recorded nothing → its runs 0, cell b (4, 8) → (−2, 2):
    sd √(8/5); test 7 in a → 0, 5 in b → −1/√1.6, 3 in the new cell → 0."""
    nan = float("nan")
    train = np.array([[1.0, nan], [3.0, nan], [nan, nan], [10.0, 4.0], [14.0, 8.0]])
    test = np.array([[5.0, 7.0], [nan, 5.0], [100.0, 3.0]])
    tr, te = _landmark._standardise(train, test, np.array(["a", "a", "a", "b", "b"]), np.array(["a", "b", "c"]))
    s1, s2 = math.sqrt(2.0), math.sqrt(8 / 5)
    np.testing.assert_allclose(tr, [[-1 / s1, 0], [1 / s1, 0], [0, 0], [-2 / s1, -2 / s2], [2 / s1, 2 / s2]],
                               rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(te, [[3 / s1, 0], [0, -1 / s2], [0, 0]], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("nan_share", [0.0, 0.2])
def test_predictions_depend_on_the_features_only_through_each_runs_deviation_from_its_cell(nan_share):
    """"Beyond the cell": adding a different constant to each cell's values of a feature (a change of
    the cells' levels only; NaN stays NaN) must leave every cross-validated prediction as it was —
    also for the runs of a cell of one run (cells e, f), absent from the training part whenever they
    are tested, and (``nan_share``) for runs that did not record a feature. A lone cell centred on the
    training mean, or a NaN imputed with the training median, turned the shifted cell levels into
    deviations (predictions moved by up to 0.15 and 0.34 here)."""
    rng = np.random.default_rng(11)
    cells = np.r_[np.repeat(["a", "b", "c", "d"], 12), ["e", "f"]]
    z = rng.standard_normal(len(cells))
    y = (rng.random(len(cells)) < 1 / (1 + np.exp(-(-1.0 + 2.0 * z)))).astype(float)
    table = pd.DataFrame({"spec": cells, "d": 8, "dtype": "float32", "seed": range(len(cells)), "y": y})
    level = dict(zip("abcdef", (0.0, 1.0, 2.0, 3.0, 1.5, 1.5)))
    shift = dict(zip("abcdef", (0.7, -1.3, 2.1, -0.4, 1.9, -1.6)))
    shifted = table.copy()
    for j, f in enumerate(_landmark.FEATURE_NAMES):
        v = np.array([level[c] for c in cells]) + z + 0.5 * rng.standard_normal(len(cells))
        v[rng.random(len(cells)) < nan_share] = np.nan
        table[f] = v
        shifted[f] = v + (1 + 0.1 * j) * np.array([shift[c] for c in cells])
    assert y.sum() >= 5 and (1 - y).sum() >= 5 and table[list(_landmark.FEATURE_NAMES)].isna().any().all() == (nan_share > 0)
    base = _landmark.cross_validate(table, folds=4, repeats=3, seed=1)
    moved = _landmark.cross_validate(shifted, folds=4, repeats=3, seed=1)
    for m in ("base", "cell", "cell+diag"):
        np.testing.assert_allclose(moved["pred"][m], base["pred"][m], rtol=1e-9, atol=1e-12)
    assert base["brier"]["cell+diag"] < base["brier"]["cell"] - 0.05  # the features do act (z is in them)


def test_fold_seed_spread_is_the_range_of_the_gain_in_se_over_the_seeds():
    """Each seed's z = gain / SE recomputed here from that seed's per-run predictions (one repeat: each
    run's squared error is that of its single prediction); the spread is their lowest and highest."""
    table = _table(12, 28, seed=4)
    z = []
    for seed in range(3):
        fit = _landmark.cross_validate(table, folds=4, repeats=1, seed=seed)
        gain = (fit["pred"]["cell"] - fit["y"]) ** 2 - (fit["pred"]["cell+diag"] - fit["y"]) ** 2
        z.append(float(np.mean(gain)) / (statistics.stdev(gain.tolist()) / math.sqrt(len(gain))))
    assert len(set(z)) == 3  # the seeds split differently
    spread = _landmark.fold_seed_spread(table, seeds=3, repeats=1, folds=4)
    assert (spread["seeds"], spread["repeats"]) == (3, 1)
    assert (spread["z_low"], spread["z_high"]) == pytest.approx((min(z), max(z)), rel=1e-12)
    assert _landmark.fold_seed_spread(_table(2, 28), seeds=3, repeats=1) is None  # too few failures: not fitted


@pytest.mark.parametrize("low, high, decides", [(1.5, 2.4, True), (0.1, 1.9, False), (2.1, 3.0, False), (-1.0, 2.0, False)])
def test_the_report_says_when_the_fold_split_decides_the_verdict(low, high, decides):
    """The 2-SE rule says "adds" above z = 2: a spread across that line means the split decides."""
    from stabkit.studies.zca_cifar10.report import spread_sentence

    text = spread_sentence({"seeds": 5, "repeats": 20, "z_low": low, "z_high": high})
    assert text.startswith(f"Under fold seeds 0–4 (20 repeats each) the improvement lies between {low:.2f} and {high:.2f} SE")
    assert ("the split of the folds decides the verdict" in text) == decides
    assert spread_sentence(None) == ""
