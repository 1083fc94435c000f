"""The link without leakage: do a run's diagnostics before a landmark predict its NaN loss after it,
beyond what its cell (method × d × dtype) already says?

Landmark design (van Houwelingen, Scand. J. Statist. 2007): fix a landmark L (epochs). Only runs
still alive at L (no NaN loss at or before L, and trained past L) enter; the outcome is a NaN loss
after L, within the run's horizon. A run that stopped between L and its horizon without a NaN loss
has an unknown outcome (y = NaN in the table): leaving it out would keep the runs that failed
early and drop those that might have survived, so the link is fitted twice, with those runs counted
as failures and as survivors, and a verdict is stated only where both fits agree. Features come
only from the per-epoch log entries that end at or before step L·steps_per_epoch, so nothing
measured after L is used.

Three predictors, scored by the Brier score of repeated stratified K-fold cross-validation:

* base rate — the training folds' failure rate;
* cell — the cell's smoothed failure rate (k_c + a·p̄)/(n_c + a) on the training folds (a = ``prior``
  pseudo-runs at the training folds' rate p̄): the baseline to beat;
* cell + diagnostics — ridge logistic regression on the features with the cell model's logit as an
  offset, logit P = logit p_c + β₀ + βᵀx. For a training run the offset is its cell rate without
  itself (leave-one-out), so the fit does not learn from its own outcome through the offset. Each
  feature is centred on its cell's mean and scaled, both from the training folds only: x is a run's
  deviation from its cell, and 0 where that is unknown (the feature not recorded for the run, or a
  cell without training runs that recorded it). Raw features would let a diagnostic that merely
  encodes the cell (the same value for all its runs) beat the rough smoothed rates of cells with few
  runs by pooling across cells, and be credited as adding "beyond the cell" (constructed data of 40
  cells × 4 runs: seeds 1, 2 and 4 of 0–5 at 111651d, the last commit with raw features;
  ``tests/test_survival_link.py`` keeps those seeds).

Verdict: the diagnostics add something beyond the cell when the mean per-run Brier improvement of
cell + diagnostics over cell exceeds twice its standard error (per-run squared errors averaged over
the repeats; paired over runs). That SE treats the runs as independent, which cross-validated
scores are not (every run trains the others' models): it is an approximation.
``benchmarks/landmark_calibration.py`` measures the rule on data shaped like the zca-cifar10 study's
landmark table (319 runs, 41 cells, 26 failures; each cell's real feature rows resampled, outcomes
from the cell rates plus β·z for an extra run-level feature z ~ N(0, 1); 20 repeats of 5-fold, where
the report uses 100; 500 data sets per β, run at eacbc57, output in
``benchmarks/results/2026-12-06-cpu-eacbc57/``): the spread of the gain across data sets was
0.81–0.90 of the mean reported SE, and the rule said "adds" in 0/500 data sets at β = 0
(Clopper–Pearson 95 % upper bound 0.74 %), 0/500 at β = 0.5, 3/500 at β = 1 and 128/500 (21.8–29.7 %) at β = 2
(odds ratio 7.4 per SD). So on such data the rule rarely calls noise useful, and misses run-level
signals up to odds ratio 7.4 per SD in most data sets: a "not shown to add" verdict there is weak
evidence of nothing to add.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from ._stats import fit_logistic, predict_logistic

#: per-epoch log keys → features: (name, key, how to aggregate over the epochs before L, transform)
FEATURES = (
    ("log10_max_K", "max_abs_K", "max", "log10"),
    ("log10_min_rel_gap", "min_rel_gap", "min", "log10"),
    ("log10_lam_max_over_eps", "lam_max_over_eps", "max", "log10"),
    ("log10_lam_min", "lam_min", "min", "log10"),
    ("log10_grad_norm_max", "grad_norm_max", "max", "log10"),
    ("log1p_nonfinite_events", "nonfinite_events", "sum", "log1p"),
    ("last_train_loss", "train_loss", "last", "none"),
    ("log_conv1_norm_growth", "conv1_weight_norm", "growth", "none"),
)
FEATURE_NAMES = tuple(f[0] for f in FEATURES)
CELL_KEYS = ("spec", "d", "dtype")
#: failures and survivors each needed before anything is fitted
MIN_EACH = 5
_CAP = 1e30


def epoch_log(value) -> list[dict]:
    """A record's ``epoch_log`` (JSON text as stored in results, or already a list)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return json.loads(value) if value else []
    return list(value)


def _number(v) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _aggregate(entries: list[dict], key: str, how: str, transform: str) -> float:
    vals = np.array([_number(e.get(key)) for e in entries], dtype=float)
    vals = np.where(np.isposinf(vals), _CAP, vals)
    vals = vals[~np.isnan(vals) & ~np.isneginf(vals)]
    if not len(vals):
        return float("nan")
    if how == "growth":
        first, last = vals[0], vals[-1]
        return float(math.log(last / first)) if first > 0 and last > 0 else float("nan")
    v = {"max": vals.max, "min": vals.min, "sum": vals.sum, "last": lambda: vals[-1]}[how]()
    if transform == "log10":
        return float(math.log10(min(max(v, 1e-30), _CAP)))
    if transform == "log1p":
        return float(math.log1p(max(v, 0.0)))
    return float(v)


def features_before(entries: list[dict], last_step: float) -> dict:
    """The features from the log entries that end at or before ``last_step`` (steps done)."""
    kept = [e for e in entries if _number(e.get("step")) <= last_step]
    return {name: _aggregate(kept, key, how, tr) for name, key, how, tr in FEATURES}


def landmark_table(results: pd.DataFrame, landmark_epochs: float) -> tuple[pd.DataFrame, dict]:
    """One row per ZCA run alive at the landmark: the cell, the features, ``y`` (NaN loss after L;
    NaN where unknown: stopped after L, before its horizon, without a NaN loss).

    Needs per run: ``epoch_log``, ``steps_per_epoch``, ``time_to_nan_loss_epochs``,
    ``censored_at_epochs`` and the horizon ``epochs`` (a run without a recorded horizon that stopped
    after L without a NaN loss is of unknown outcome). Returns (table, counts: runs left out —
    failed or stopped by L — and runs of unknown outcome, ``unknown_after``).
    """
    L = float(landmark_epochs)
    if not L > 0:
        raise ValueError(f"landmark must be > 0 epochs, got {landmark_epochs}")
    runs = results[results["norm"] == "zca"] if "norm" in results else results
    rows, counts = [], {"failed_before": 0, "stopped_before": 0, "unknown_after": 0}
    for _, r in runs.iterrows():
        t_nan = _number(r.get("time_to_nan_loss_epochs"))
        reached = _number(r.get("censored_at_epochs"))
        horizon = _number(r.get("epochs"))
        if not math.isnan(t_nan) and t_nan <= L:
            counts["failed_before"] += 1
            continue
        y = float(not math.isnan(t_nan))
        if math.isnan(t_nan):
            if not reached > L:
                counts["stopped_before"] += 1
                continue
            if not reached >= horizon - 1e-9:  # stopped after L before its horizon (or none recorded): fate unknown
                counts["unknown_after"] += 1
                y = math.nan
        spe = _number(r.get("steps_per_epoch"))
        feats = features_before(epoch_log(r.get("epoch_log")), L * spe)
        rows.append({**{k: r[k] for k in CELL_KEYS}, "seed": r.get("seed"), **feats, "y": y})
    table = pd.DataFrame(rows, columns=[*CELL_KEYS, "seed", *FEATURE_NAMES, "y"])
    return table, counts


# -------------------------------------------------------------------------------------- models
def cell_ids(table: pd.DataFrame) -> np.ndarray:
    """Each run's cell (``CELL_KEYS`` joined by ``|``), the grouping of the cell model."""
    return table[list(CELL_KEYS)].astype(str).agg("|".join, axis=1).to_numpy()


def _logit(p):
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _codes(train_cells: np.ndarray, query_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of the training runs' cells (0 … m − 1) and of the queried runs' cells, where a
    cell without training runs gets m: one slot that every per-cell table below leaves empty."""
    names, train = np.unique(train_cells, return_inverse=True)
    if not len(names):
        return train, np.zeros(len(query_cells), dtype=int), 0
    at = np.clip(np.searchsorted(names, query_cells), 0, len(names) - 1)
    return train, np.where(names[at] == query_cells, at, len(names)), len(names)


def cell_rates(train_cells: np.ndarray, train_y: np.ndarray, query_cells: np.ndarray, prior: float,
               leave_one_out: bool = False) -> np.ndarray:
    """Smoothed failure rate per cell from the training runs; ``leave_one_out``: ``query_cells`` are
    the training runs themselves and each one's own outcome is taken out of its cell's count."""
    pbar = float(train_y.mean())
    train, query, m = _codes(train_cells, query_cells)
    kq = np.bincount(train, weights=train_y, minlength=m + 1)[query]
    nq = np.bincount(train, minlength=m + 1)[query].astype(float)
    if leave_one_out:  # the run's own outcome out of its cell's count and of the prior's rate
        kq, nq = kq - train_y, nq - 1
        pbar = (train_y.sum() - train_y) / (len(train_y) - 1)
    return (kq + prior * pbar) / (nq + prior)


def _standardise(train: np.ndarray, test: np.ndarray, train_cells: np.ndarray,
                 test_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each run's deviation from its cell's training mean (over the cell's training runs that
    recorded the feature), scaled by the training sd of those deviations. Where the deviation is
    not known — the run did not record the feature (NaN), or its cell has no training run that did
    (a cell present only in the test fold) — it is 0, the deviation expected of a run of the cell:
    the cell's level never enters, neither through a value imputed from other cells (a global
    median minus the cell's mean) nor through a centre taken from other cells (the training mean),
    which the within-cell scale would multiply by the between-cell spread over the within-cell sd."""
    codes, test_codes, m = _codes(train_cells, test_cells)
    recorded = ~np.isnan(train)
    sums, counts = np.zeros((m + 1, train.shape[1])), np.zeros((m + 1, train.shape[1]))
    for j in range(train.shape[1]):
        sums[:, j] = np.bincount(codes, weights=np.where(recorded[:, j], train[:, j], 0.0), minlength=m + 1)
        counts[:, j] = np.bincount(codes, weights=recorded[:, j], minlength=m + 1)
    with np.errstate(invalid="ignore"):
        means = sums / counts  # NaN skipped; a cell with none recorded, and slot m: 0/0 = NaN
    tr, te = train - means[codes], test - means[test_codes]
    tr, te = np.where(np.isnan(tr), 0.0, tr), np.where(np.isnan(te), 0.0, te)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no spread, left at 0 below
        spread = np.nan_to_num(np.nanstd(train, axis=0), nan=0.0)
    sd = tr.std(0)
    varies = sd > 1e-9 * spread  # within the cells, not only rounding left by the centring
    sd = np.where(varies, sd, 1.0)
    return np.where(varies, tr / sd, 0.0), np.where(varies, te / sd, 0.0)


def stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per run, failures and survivors each dealt round-robin in a random order."""
    fold = np.empty(len(y), dtype=int)
    for value in (0.0, 1.0):
        idx = np.flatnonzero(y == value)
        idx = idx[rng.permutation(len(idx))]
        start = int(rng.integers(folds))
        fold[idx] = (start + np.arange(len(idx))) % folds
    return fold


def cross_validate(table: pd.DataFrame, folds: int = 5, repeats: int = 20, seed: int = 0, prior: float = 2.0,
                   l2: float = 1.0, features: tuple[str, ...] = FEATURE_NAMES) -> dict | None:
    """Cross-validated predictions of the three models (see the module doc) from the ``features``
    columns of ``table``; None with fewer than :data:`MIN_EACH` failures or survivors (the 2-SE rule
    rests on a normal approximation over runs, which a handful of one outcome does not support)."""
    if not prior > 0:
        raise ValueError(f"prior must be > 0 pseudo-runs (a cell without training runs has no rate otherwise), got {prior}")
    y = table["y"].to_numpy(float)
    if np.isnan(y).any():
        raise ValueError("cross_validate needs every outcome known: complete the unknown ones first (landmark_link)")
    n_fail = int(y.sum())
    if n_fail < MIN_EACH or len(y) - n_fail < MIN_EACH:
        return None
    folds = max(2, min(folds, n_fail, len(y) - n_fail))
    cells = cell_ids(table)
    X = table[list(features)].to_numpy(float)
    usable = ~np.isnan(X).all(0)
    X = X[:, usable]
    rng = np.random.default_rng(seed)
    preds = {m: np.zeros((repeats, len(y))) for m in ("base", "cell", "cell+diag")}
    for rep in range(repeats):
        fold = stratified_folds(y, folds, rng)
        for k in range(folds):
            te, tr = fold == k, fold != k
            preds["base"][rep, te] = y[tr].mean()
            p_cell_te = cell_rates(cells[tr], y[tr], cells[te], prior)
            preds["cell"][rep, te] = p_cell_te
            p_cell_tr = cell_rates(cells[tr], y[tr], cells[tr], prior, leave_one_out=True)
            Xtr, Xte = _standardise(X[tr], X[te], cells[tr], cells[te])
            beta = fit_logistic(Xtr, y[tr], _logit(p_cell_tr), l2)
            preds["cell+diag"][rep, te] = predict_logistic(beta, Xte, _logit(p_cell_te))
    sq = {m: ((p - y) ** 2).mean(0) for m, p in preds.items()}  # per-run, averaged over repeats
    gain = sq["cell"] - sq["cell+diag"]
    se = float(gain.std(ddof=1) / math.sqrt(len(y)))
    return {
        "n": len(y), "failures": n_fail, "cells": len(set(cells)), "folds": folds, "repeats": repeats,
        "features": [f for f, u in zip(features, usable) if u],
        "brier": {m: float(s.mean()) for m, s in sq.items()}, "gain": float(gain.mean()), "gain_se": se,
        "gain_z": float(gain.mean()) / se if se > 0 else math.nan,
        "adds": bool(gain.mean() > 2 * se and gain.mean() > 0), "pred": {m: p.mean(0) for m, p in preds.items()},
        "y": y,
    }


def fold_seed_spread(table: pd.DataFrame, seeds: int = 5, repeats: int = 20, **cv) -> dict | None:
    """The improvement of cell + diagnostics over the cell, in SE, under ``seeds`` fold splits
    (cross-validations with seeds 0 … seeds − 1, ``repeats`` repeats each): its lowest and highest
    value, how far a verdict at the 2-SE line rests on one split. None where the link is not fitted."""
    z = []
    for seed in range(seeds):
        fit = cross_validate(table, repeats=repeats, seed=seed, **cv)
        if fit is None:
            return None
        z.append(fit["gain_z"])
    return {"seeds": seeds, "repeats": repeats, "z_low": min(z), "z_high": max(z)}


def landmark_link(results: pd.DataFrame, landmark_epochs: float, **cv) -> dict:
    """The table at the landmark and its cross-validation, with a plain sentence. Where some runs'
    outcome after L is unknown, ``fit`` is None and ``fits`` holds the two completions
    ("as failures", "as survivors"); the sentence states a verdict only where they agree."""
    L = float(landmark_epochs)
    table, left_out = landmark_table(results, L)
    unknown = table["y"].isna()
    if not unknown.any():
        fit = cross_validate(table, **cv) if len(table) else None
        return {"landmark": L, "table": table, "left_out": left_out, "fit": fit, "fits": None,
                "sentence": sentence(L, table, left_out, fit)}
    fits = {label: cross_validate(table.assign(y=table["y"].fillna(value)), **cv)
            for label, value in (("as failures", 1.0), ("as survivors", 0.0))}
    return {"landmark": L, "table": table, "left_out": left_out, "fit": None, "fits": fits,
            "sentence": both_ways_sentence(L, left_out, fits)}


def _runs(n: int, what: str = "run") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _gone(L: float, left_out: dict) -> str:
    return (f"left out: {_runs(left_out['failed_before'])} with a NaN loss by epoch {L:g}, "
            f"{left_out['stopped_before']} stopped at or before it")


def _scores(fit: dict) -> str:
    b = fit["brier"]
    return (f"n = {fit['n']}, {fit['failures']} failures, Brier base rate {b['base']:.4f}, cell {b['cell']:.4f}, "
            f"cell + diagnostics {b['cell+diag']:.4f}, improvement {fit['gain']:+.4f} ± {fit['gain_se']:.4f}")


def both_ways_sentence(L: float, left_out: dict, fits: dict) -> str:
    """The link with the runs of unknown outcome counted both ways; a verdict only where both agree,
    and worded as what it is: a statement about these two completions, not a bound over all of them
    (the Brier gain does not move monotonically as unknown outcomes are filled in)."""
    k = left_out["unknown_after"]
    unfit = [label for label, f in fits.items() if f is None]
    if unfit:
        return (f"Landmark at epoch {L:g}: with the {_runs(k)} stopped after L without a NaN loss counted "
                f"{' and '.join(unfit)}, too few of each outcome remain to fit anything; the diagnostics' value "
                f"beyond the cell is not measurable here ({_gone(L, left_out)}).")
    if any(not f["features"] for f in fits.values()):
        return (f"Landmark at epoch {L:g}: no diagnostic was recorded before L (no per-epoch log): only the cell "
                f"model is measurable ({_gone(L, left_out)}).")
    adds = [f["adds"] for f in fits.values()]
    verdict = (f"the diagnostics add to the cell in both completions (other completions of the {_runs(k)} of "
               f"unknown outcome were not tried)" if all(adds) else
               f"neither completion shows a gain over the cell at 2 SE (other completions of the {_runs(k)} of "
               f"unknown outcome may)" if not any(adds) else
               f"whether the diagnostics add to the cell depends on the {_runs(k)} of unknown outcome")
    parts = "; ".join(f"{label}: {_scores(f)}" for label, f in fits.items())
    repeats, folds = next(iter(fits.values()))["repeats"], next(iter(fits.values()))["folds"]
    return (f"Landmark at epoch {L:g}: {_runs(k)} alive at L stopped before the horizon without a NaN loss, so "
            f"the outcome is unknown; counted both ways (cross-validated Brier, {repeats}× {folds}-fold; "
            f"SE approximate, runs treated as independent) — {parts}: {verdict}. ({_gone(L, left_out)}.)")


def sentence(L: float, table: pd.DataFrame, left_out: dict, fit: dict | None) -> str:
    gone = _gone(L, left_out)
    if fit is None:
        k = int(table["y"].sum()) if len(table) else 0
        return (f"Landmark at epoch {L:g}: {_runs(len(table))} alive, {k} of them failed later — too few of each outcome to "
                f"fit anything; the diagnostics' value beyond the cell is not measurable here ({gone}).")
    b = fit["brier"]
    if not fit["features"]:
        return (f"Landmark at epoch {L:g}: n = {_runs(fit['n'])} alive at L, {fit['failures']} with a NaN loss after L, but no "
                f"diagnostic was recorded before L (no per-epoch log): only the cell model is measurable, Brier "
                f"{b['cell']:.4f} against the base rate's {b['base']:.4f} ({gone}).")
    verdict = ("the diagnostics add to the cell" if fit["adds"] else "no gain of the diagnostics over the cell is shown at 2 SE")
    return (f"Landmark at epoch {L:g}: n = {_runs(fit['n'])} alive at L in {_runs(fit['cells'], 'cell')}, {fit['failures']} with a NaN "
            f"loss after L. Cross-validated Brier ({fit['repeats']}× {fit['folds']}-fold): base rate {b['base']:.4f}, cell "
            f"{b['cell']:.4f}, cell + diagnostics {b['cell+diag']:.4f}; improvement over the cell {fit['gain']:+.4f} "
            f"± {fit['gain_se']:.4f} (SE, approximate: runs treated as independent): {verdict}. ({gone}.)")
