"""The tables of the ``zca_cifar10`` report: success per method × d × dtype beside Table IV, the
paper's NaN-loss criterion beside ours, two schedules compared, and the link (failure ~ early
diagnostics at a landmark, cross-validated against the cell alone)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import methods
from ...train import table_iv
from .. import _landmark, _stats

#: the early-window summary of a run (``early_*``, stabkit.monitor.summarize over steps < L) → the
#: link's features: (name, column, transform)
EARLY_FEATURES = (
    ("log10_max_K", "early_max_K", "log10"),                 # max|K̃| = 1 / min gap
    ("log10_min_rel_gap", "early_min_rel_gap", "log10"),
    ("log10_lam_min", "early_lam_min", "log10"),
    ("log10_bound", "early_max_bound", "log10"),             # the method's max|F_ij|
    ("log10_grad_norm_max", "early_max_grad_norm", "log10"),
    ("log1p_gap_events", "early_gap_events", "log1p"),       # relative gap < 1e-5
    ("log1p_nonfinite_events", "early_nonfinite_events", "log1p"),
)
FEATURES = tuple(f[0] for f in EARLY_FEATURES)
_CAP = 1e30


def landmark_step(steps_total, early_frac: float) -> np.ndarray:
    """The end of the early window in steps done, as the training loop cuts it: max(1, round(f·steps))."""
    return np.maximum(1, np.round(early_frac * pd.to_numeric(steps_total, errors="coerce").to_numpy(float)))


def landmark_table(results: pd.DataFrame, early_frac: float) -> tuple[pd.DataFrame, dict]:
    """The ZCA runs alive at the landmark L = the end of the early window — no failure at a step < L —
    with their early diagnostics (logged at steps < L only) and ``y`` = a failure of any kind at a
    step ≥ L. Returns (table, {"failed_before": …, "step_unknown": …, "stopped_early": …} runs left
    out; ``stopped_early``: stopped before their last step without a failure (a deadline), whose
    outcome is unknown)."""
    zca = results[results["norm"] == "zca"]
    failed = (zca["outcome"] != "ok").to_numpy()
    step = pd.to_numeric(zca["step"], errors="coerce").to_numpy(float) if len(zca) else np.zeros(0)
    L = landmark_step(zca["steps_total"], early_frac) if "steps_total" in zca else np.full(len(zca), np.nan)
    before = failed & (step < L)
    unknown = failed & (np.isnan(step) | np.isnan(L))
    done, total = (pd.to_numeric(zca[c], errors="coerce").to_numpy(float) if c in zca else np.full(len(zca), np.nan)
                   for c in ("steps_done", "steps_total"))
    stopped = ~failed & (done < total)
    keep = ~before & ~unknown & ~stopped
    runs = zca[keep]
    table = pd.DataFrame({k: runs[k].to_numpy() for k in _landmark.CELL_KEYS})
    table["seed"] = runs["seed"].to_numpy() if "seed" in runs else np.nan
    table["outcome"] = runs["outcome"].to_numpy()
    for name, col, transform in EARLY_FEATURES:
        v = pd.to_numeric(runs[col], errors="coerce").to_numpy(float) if col in runs else np.full(len(runs), np.nan)
        v = np.where(np.isposinf(v), _CAP, v)
        table[name] = np.log10(np.clip(v, 1e-30, _CAP)) if transform == "log10" else np.log1p(np.clip(v, 0, None))
    table["y"] = failed[keep].astype(float)
    return table, {"failed_before": int(before.sum()), "step_unknown": int((unknown & ~before).sum()),
                   "stopped_early": int(stopped.sum())}


def link(results: pd.DataFrame, early_frac: float, repeats: int = 100) -> dict:
    """The landmark link of the short protocol (``stabkit.studies._landmark``): the table at the end
    of the early window, its cross-validated Brier scores — base rate, cell, cell + diagnostics —
    and the improvement's spread over fold seeds."""
    table, left_out = landmark_table(results, early_frac)
    fit = _landmark.cross_validate(table, repeats=repeats, features=FEATURES) if len(table) else None
    spread = _landmark.fold_seed_spread(table, features=FEATURES) if fit else None
    L = landmark_step(results.loc[results["norm"] == "zca", "steps_total"], early_frac) if "steps_total" in results else []
    return {"table": table, "left_out": left_out, "fit": fit, "spread": spread,
            "landmark_steps": sorted({int(x) for x in L if x == x})}


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
    """One line for the reports index: runs ok of all runs, then per method (all d and dtypes pooled) and the
    BatchNorm baseline, e.g. ``13/14 runs ok: analytic 5/6, taylor 6/6, BatchNorm 2/2``."""
    ok = results["outcome"] == "ok"
    zca = results["norm"] == "zca"
    per = ok[zca].groupby(results.loc[zca, "spec"], sort=False).agg(["sum", "count"])
    parts = [f"{spec} {k}/{n}" for spec, (k, n) in per.iterrows()]
    if (~zca).any():
        parts.append(f"BatchNorm {int(ok[~zca].sum())}/{int((~zca).sum())}")
    return f"{int(ok.sum())}/{len(results)} runs ok: " + ", ".join(parts)


def compare_schedules(short: pd.DataFrame, long: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Success of the same method × d × dtype under two schedules (one row per cell present in both).

    ``Fisher p``: two-sided Fisher exact test of equal success probability (small p = the schedules
    disagree); ``long fails after short horizon``: failures of the long runs at a step the short
    runs (``horizon`` steps) never reached — the failures the short protocol cannot see; ``short runs``,
    ``long runs``: the runs per side.
    """
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
            "Fisher p": _stats.fisher_exact(k_s, n_s - k_s, k_l, n_l - k_l),  # the test largest_undetected uses
            "long fails after short horizon": late, "short runs": n_s, "long runs": n_l,
        })
    return pd.DataFrame(rows)


def largest_undetected(n_s: int, n_l: int, alpha: float = 0.05) -> tuple[int, int, float] | None:
    """The counts k_s/n_s, k_l/n_l with the largest difference of success rates whose two-sided
    Fisher p is still ≥ ``alpha`` (ties: the smaller p); None if no two counts differ at all."""
    best = None
    for k_s in range(n_s + 1):
        for k_l in range(n_l + 1):
            diff = abs(k_s / n_s - k_l / n_l)
            if diff == 0:
                continue
            p = _stats.fisher_exact(k_s, n_s - k_s, k_l, n_l - k_l)
            if p >= alpha and (best is None or (diff, -p) > (best[0], -best[3])):
                best = (diff, k_s, k_l, p)
    return None if best is None else best[1:]


def ci(k: int, n: int) -> str:
    """The Wilson 95 % interval of k successes in n, in %, as text ``[lo, hi]``, rounded outward
    (``_stats.percent_interval``): the printed interval contains the computed one."""
    return _stats.percent_interval(*_stats.wilson(k, n))
