"""The tables of the ``zca_cifar10`` report: success per method × d × dtype beside Table IV, the
paper's NaN-loss criterion beside ours, two schedules compared, and the link (failure ~ early
diagnostics, a ridge logistic model with cross-validated Brier scores)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import methods
from ...train import table_iv
from .. import _stats
from .._stats import fit_logistic, predict_logistic

FEATURES = ["log10_max_K", "log1p_gap_events", "log10_bound"]


def features(results: pd.DataFrame) -> pd.DataFrame:
    """The link's inputs from the early diagnostics (infinite/NaN values clipped to finite caps)."""
    def log10(col, cap=1e30):
        v = pd.to_numeric(results[col], errors="coerce").astype(float).to_numpy()
        v = np.where(np.isnan(v), cap, v)
        return np.log10(np.clip(v, 1e-30, cap))
    return pd.DataFrame({
        "log10_max_K": log10("early_max_K"),
        "log1p_gap_events": np.log1p(pd.to_numeric(results["early_gap_events"], errors="coerce").fillna(0).to_numpy(float)),
        "log10_bound": log10("early_max_bound"),
    }, index=results.index)


def link(results: pd.DataFrame, folds: int = 5, seed: int = 0) -> dict | None:
    """Fit failure ~ early diagnostics on the ZCA runs. None when only one outcome occurred."""
    zca = results[results["norm"] == "zca"]
    if zca.empty:
        return None
    y = (zca["outcome"] != "ok").to_numpy(float)
    if y.min() == y.max():
        return None
    F = features(zca)
    mu, sd = F.mean().to_numpy(), F.std(ddof=0).replace(0, 1).to_numpy()
    X = (F.to_numpy() - mu) / sd
    beta = fit_logistic(X, y)
    p = predict_logistic(beta, X)
    cv = np.empty_like(y)
    order = np.random.default_rng(seed).permutation(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        cv[test] = predict_logistic(fit_logistic(X[train], y[train]), X[test]) if len(np.unique(y[train])) > 1 else y[train].mean()
    return {"beta": beta, "p": p, "p_cv": cv, "y": y, "brier": float(np.mean((p - y) ** 2)),
            "brier_cv": float(np.mean((cv - y) ** 2)), "brier_base": float(np.mean((y.mean() - y) ** 2)), "n": len(y),
            "brier_cell": cell_brier(zca, y)}


def cell_brier(runs: pd.DataFrame, y: np.ndarray) -> float:
    """Leave-one-out Brier score of the cell-identity model: each run predicted by the failure rate of
    the other runs of its cell (method, d, dtype) — what the diagnostics must beat to add anything."""
    cell = runs["spec"].astype(str) + "|" + runs["d"].astype(str) + "|" + runs["dtype"].astype(str)
    fails = pd.Series(y, index=runs.index).groupby(cell).transform("sum").to_numpy()
    size = cell.groupby(cell).transform("size").to_numpy()
    p = np.where(size > 1, (fails - y) / np.maximum(size - 1, 1), y.mean())
    return float(np.mean((p - y) ** 2))


def success_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    zca = results[results["norm"] == "zca"]
    for (spec, d, dtype), s in zca.groupby(["spec", "d", "dtype"], sort=False):
        n, k = len(s), int((s["outcome"] == "ok").sum())
        row = table_iv.row_of(methods.spec(spec))  # stored text, read back: the report's edge
        paper = table_iv.SUCCESS_PCT.get(row, {}).get(int(d), np.nan)
        ok = s[s["outcome"] == "ok"]
        fails = s["outcome"][s["outcome"] != "ok"].value_counts()
        rows.append({
            "method": spec, "paper name": row or "—", "d": int(d), "dtype": dtype, "runs": n,
            "success %": 100 * k / n, "Wilson 95% CI": ci(k, n),
            "paper %": paper,
            "test error (ok runs)": float(ok["test_error"].median()) if len(ok) else np.nan,
            "failures": ", ".join(f"{o} {c}" for o, c in fails.items()) or "—",
            "median fail step": float(s.loc[s["outcome"] != "ok", "step"].median()) if len(fails) else np.nan,
            "early max K̃ (median)": float(pd.to_numeric(s["early_max_K"]).median()),
            "early gap events (mean)": float(pd.to_numeric(s["early_gap_events"]).mean()),
            "early max bound (median)": float(pd.to_numeric(s["early_max_bound"]).median()),
            "runs with λ_min ≤ 0": _nonpositive_lam_runs(s),
            "… at step 0": _nonpositive_lam_runs(s, first_step_only=True),
            **_paper_criterion(s),
        })
    return pd.DataFrame(rows)


def _paper_criterion(s: pd.DataFrame) -> dict:
    """The paper's criterion beside ours: runs with a NaN loss, runs whose eigensolver raised, runs
    stopped by another outcome before the horizon without a NaN loss (censored: unknown under the
    paper's rule), and the NaN-free rate over the uncensored runs, with its Wilson interval. Empty
    for results recorded before ``paper_outcome`` existed."""
    if "paper_outcome" not in s or s["paper_outcome"].isna().all():
        return {}
    po = s["paper_outcome"]
    nan, eig, cens, ok = (int((po == o).sum()) for o in ("nan-loss", "eigh-failed", "censored", "ok"))
    known = len(s) - cens
    return {"NaN loss (paper criterion)": f"{nan}/{len(s)}", "eigensolver raised": eig, "censored": cens,
            "no NaN loss %": 100 * ok / known if known else np.nan, "no NaN loss CI": ci(ok, known) if known else "—"}


def _nonpositive_lam_runs(s: pd.DataFrame, first_step_only: bool = False) -> int:
    """Runs whose forward eigh returned λ_min ≤ 0 for Σ + εI (≥ ε in exact arithmetic), which makes λ^{-1/2} NaN
    in the forward pass; with ``first_step_only``, those that failed at step 0, before any gradient was applied."""
    if "run_lam_min" not in s:
        return 0
    bad = pd.to_numeric(s["run_lam_min"], errors="coerce") <= 0
    if first_step_only:
        bad &= pd.to_numeric(s["step"], errors="coerce") == 0
    return int(bad.sum())


def summary(results: pd.DataFrame) -> str:
    """One line for the reports index: success per method (all d and dtypes pooled) and the BatchNorm baseline."""
    ok = results["outcome"] == "ok"
    zca = results["norm"] == "zca"
    per = ok[zca].groupby(results.loc[zca, "spec"], sort=False).agg(["sum", "count"])
    parts = [f"{spec} {k}/{n}" for spec, (k, n) in per.iterrows()]
    if (~zca).any():
        parts.append(f"BatchNorm {int(ok[~zca].sum())}/{int((~zca).sum())}")
    return f"{len(results)} runs ok: " + ", ".join(parts)


def compare_schedules(short: pd.DataFrame, long: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Success of the same method × d × dtype under two schedules (one row per cell present in both).

    ``Fisher p``: two-sided Fisher exact test of equal success probability (small p = the schedules
    disagree); ``long fails after short horizon``: failures of the long runs at a step the short
    runs (``horizon`` steps) never reached — the failures the short protocol cannot see.
    """
    from scipy.stats import fisher_exact

    rows = []
    keys = ["spec", "d", "dtype"]
    short_zca, long_zca = short[short["norm"] == "zca"], long[long["norm"] == "zca"]
    for key, lg in long_zca.groupby(keys, sort=False):
        sh = short_zca[(short_zca[keys] == pd.Series(key, index=keys)).all(axis=1)]
        if sh.empty:
            continue
        k_s, n_s = int((sh["outcome"] == "ok").sum()), len(sh)
        k_l, n_l = int((lg["outcome"] == "ok").sum()), len(lg)
        failed = lg[lg["outcome"] != "ok"]
        late = int((pd.to_numeric(failed["step"]) >= horizon).sum())
        rows.append({
            "method": key[0], "d": int(key[1]), "dtype": key[2],
            "short success": f"{k_s}/{n_s} {ci(k_s, n_s)}", "long success": f"{k_l}/{n_l} {ci(k_l, n_l)}",
            "Fisher p": float(fisher_exact([[k_s, n_s - k_s], [k_l, n_l - k_l]])[1]),
            "long fails after short horizon": late,
        })
    return pd.DataFrame(rows)


def ci(k: int, n: int) -> str:
    """The Wilson 95 % interval of k successes in n, in %, as text ``[lo, hi]``."""
    lo, hi = _stats.wilson(k, n)
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"
