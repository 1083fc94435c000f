"""The tables of the ``zca_cifar10_survival`` report: runs without a NaN loss against Table IV
(Wilson, Clopper–Pearson, Fisher + Holm, power), Kaplan–Meier per cell, test accuracy of the
survivors, the survivors' ids and the one-line summary."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import methods
from ...train import table_iv
from .. import _landmark, _stats

PAPER_RUNS = table_iv.RUNS

# ------------------------------------------------------------------------------------------ tables
def _num(s) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(float)


def _runs(results: pd.DataFrame) -> pd.DataFrame:
    r = results.copy()
    if "error" in r.columns:
        r = r[r["error"].isna()]
    for col in ("time_to_nan_loss_epochs", "censored_at_epochs", "epochs", "epoch_log", "spec", "d", "dtype"):
        if col not in r:  # only crashed cells so far: no run columns
            r[col] = pd.Series(np.nan, index=r.index, dtype=object if col in ("epoch_log", "spec", "dtype") else float)
    if "horizon_epochs" not in r:
        r["horizon_epochs"] = _num(r["epochs"])
    r["t_nan"] = _num(r["time_to_nan_loss_epochs"])
    r["reached"] = np.where(np.isnan(r["t_nan"]), _num(r["censored_at_epochs"]), r["t_nan"])
    r["event"] = ~np.isnan(r["t_nan"])
    if "order" not in r:
        r["order"] = 0
    return r


def _every_seed(r: pd.DataFrame) -> pd.DataFrame:
    """``r`` with each longer horizon's cells completed by the cell's shorter runs of the seeds not run
    that far (the longest such run per seed, relabelled to the longer horizon). ``extend`` reruns only
    survivors to a longer horizon: counted alone, they drop the cell's earlier NaN losses and give the
    survivors' rate, not the cell's. Completed, a NaN loss before the shorter horizon is one before the
    longer too, and a shorter run without one has an unknown outcome there (a censored run)."""
    if "seed" not in r or r.empty:
        return r
    keys = ["spec", "d", "dtype"]
    extra = []
    for h in sorted(r["horizon_epochs"].dropna().unique())[1:]:
        for key, s in r[r["horizon_epochs"] == h].groupby(keys, sort=False):
            cell = r[(r[keys] == pd.Series(key, index=keys)).all(axis=1)]
            shorter = cell[(cell["horizon_epochs"] < h) & ~cell["seed"].isin(s["seed"])]
            extra.append(shorter.sort_values("horizon_epochs").groupby("seed").tail(1).assign(horizon_epochs=h))
    return pd.concat([r, *extra], ignore_index=True) if extra else r


def _groups(r: pd.DataFrame):
    keys = ["spec", "d", "dtype", "horizon_epochs"]
    return sorted(r.groupby(keys, sort=False), key=lambda kv: (kv[0][3], int(kv[1]["order"].min()), kv[0][2]))


def _range_interval(interval, k: int, top: int, n: int) -> str:
    """The 95 % ``interval`` (``_stats.wilson`` or ``_stats.clopper_pearson``) of a count known only to
    lie in k…top of n: from the lower bound at k to the upper bound at top, in %, rounded outward
    (``_stats.percent_interval``: the printed interval contains the computed one)."""
    return _stats.percent_interval(interval(k, n)[0], interval(top, n)[1])


def success_table(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per cell (method, d, dtype, horizon): runs without a NaN loss to the horizon with Wilson and
    Clopper–Pearson intervals, the paper's count, Fisher's two-sided p and its Holm adjustment
    across the cells compared, and the rates detectable with 80 % power against the paper's count.

    A run stopped before the horizon without a NaN loss has an unknown outcome there. Leaving it out
    would bias the count towards failure (the runs that failed before its stop are all kept), so it
    is counted both ways: the count is the range k…k+u of n, the intervals run from the lower bound
    at k to the upper bound at k+u, and Fisher's p is the largest over that range — nothing assumed
    about the stopped runs. ``KM S(horizon)``: the Kaplan–Meier estimate, which counts them as
    censored (valid when stopping does not depend on the run's fate, as a wall-clock deadline). At a
    horizon longer than a cell's first (``extend``), every seed of the cell counts (``_every_seed``)."""
    r = _every_seed(_runs(results))
    rows = []
    for (spec, d, dtype, horizon), s in _groups(r):
        row = table_iv.row_of(methods.spec(spec))  # stored text, read back: the report's edge
        nan = int(s["event"].sum())
        reached = int(((~s["event"]) & (s["reached"] >= horizon - 1e-9)).sum())
        unknown = len(s) - nan - reached  # stopped before the horizon without a NaN loss
        n, top = len(s), reached + unknown
        km = _stats.kaplan_meier(s["reached"].to_numpy(float), s["event"].to_numpy(bool))
        paper = table_iv.COUNTS.get(row, {}).get(int(d))
        p = max(_stats.fisher_exact(k, n - k, paper, PAPER_RUNS - paper) for k in range(reached, top + 1)) \
            if paper is not None else np.nan
        power = _power(n, paper, alpha) if paper is not None else "—"
        rows.append({
            "method": spec, "paper name": row or "—", "d": int(d), "dtype": dtype,
            "horizon (epochs)": float(horizon), "runs": n, "NaN loss": nan,
            "no NaN loss": f"{reached}/{n}" if not unknown else f"{reached}–{top}/{n}",
            "KM S(horizon) %": 100 * _stats.survival_at(km, float(horizon)),
            "Wilson 95 %": _range_interval(_stats.wilson, reached, top, n),
            "Clopper–Pearson 95 %": _range_interval(_stats.clopper_pearson, reached, top, n),
            "stopped early, no NaN": unknown,
            "paper (350 epochs)": f"{paper}/{PAPER_RUNS}" if paper is not None else "—",
            "Fisher p": p, "80 % power if our rate": power,
        })
    table = pd.DataFrame(rows)
    if len(table):  # Holm over the cells of one horizon (one family of comparisons with Table IV)
        holm = np.full(len(table), np.nan)
        for _, idx in table.groupby("horizon (epochs)").groups.items():
            holm[idx] = _stats.holm(table.loc[idx, "Fisher p"].to_numpy(float))
        table.insert(table.columns.get_loc("Fisher p") + 1, "Holm p", holm)
    return table


def _power(n: int, paper: int, alpha: float) -> str:
    """The true rates at which Fisher's test of n runs against the paper's published count rejects
    with power 0.8 (the count held fixed)."""
    lo, hi = _stats.smallest_detectable(n, paper, PAPER_RUNS, 0.8, alpha, grid=100)
    power = (f"≤ {100 * lo:.0f} %" if lo is not None else "") + (" or " if lo is not None and hi is not None else "") + \
            (f"≥ {100 * hi:.0f} %" if hi is not None else "")
    return power or "none"


def km_table(results: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Kaplan–Meier per cell: runs, NaN losses, S at the horizon with its log−log 95 % band, median
    (every seed of the cell at a longer horizon: ``_every_seed``)."""
    r = _every_seed(_runs(results))
    rows, curves = [], {}
    for key, s in _groups(r):
        spec, d, dtype, horizon = key
        km = _stats.kaplan_meier(s["reached"].to_numpy(float), s["event"].to_numpy(bool))
        label = f"{spec} d={int(d)} {dtype}" + (f" ({float(horizon):g} ep)" if r["horizon_epochs"].nunique() > 1 else "")
        curves[label] = (km, float(s["reached"].max()), s.loc[~s["event"], "reached"].to_numpy(float))
        idx = len(km["time"]) - 1
        rows.append({"cell": label, "runs": km["n"], "NaN losses": int(km["events"].sum()),
                     "first NaN (epoch)": float(km["time"][0]) if len(km["time"]) else np.nan,
                     "S(last event)": float(km["survival"][idx]) if idx >= 0 else 1.0,
                     "95 % band, %": _stats.percent_interval(km["lo"][idx], km["hi"][idx])
                     if idx >= 0 and km["survival"][idx] > 0 else "—",
                     "median time to NaN (epochs)": km["median"] if km["median"] is not None else "not reached",
                     "horizon reached (epochs)": float(s["reached"][~s["event"]].max()) if (~s["event"]).any() else np.nan})
    return pd.DataFrame(rows), curves


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy of the runs without a NaN loss: per cell, the median over runs of the last
    evaluated accuracy and of the best, with the epoch of the last evaluation."""
    r = _runs(results)
    rows = []
    for (spec, d, dtype, horizon), s in _groups(r):
        last, best, epochs = [], [], []
        for _, run in s[~s["event"]].iterrows():
            acc = [(e["epoch"], e["test_acc"]) for e in _landmark.epoch_log(run.get("epoch_log"))
                   if e.get("test_acc") is not None]
            if acc:
                last.append(acc[-1][1])
                best.append(max(a for _, a in acc))
                epochs.append(acc[-1][0])
        if last:
            rows.append({"cell": f"{spec} d={int(d)} {dtype}", "horizon (epochs)": float(horizon), "surviving runs": len(last),
                         "last evaluated epoch": int(min(epochs)), "test acc, last (median)": float(np.median(last)),
                         "test acc, best (median)": float(np.median(best))})
    return pd.DataFrame(rows)


def survivors(results: pd.DataFrame) -> list[str]:
    """Cell ids of the base-horizon runs that reached it without a NaN loss (candidates for ``extend``)."""
    r = _runs(results)
    base = r["horizon_epochs"] == r["horizon_epochs"].min()
    ok = base & ~r["event"] & (r["reached"] >= r["horizon_epochs"] - 1e-9)
    return [str(c) for c in r.loc[ok, "cell_id"]] if "cell_id" in r else []


def summary(results: pd.DataFrame) -> str:
    r = _runs(results)
    n_runs = len(r)
    r = _every_seed(r)
    parts = []
    for (spec, d, _, h), s in _groups(r):  # the success table's count: runs stopped earlier make it a range
        alive = ~s["event"]
        k, top = int((alive & (s["reached"] >= h - 1e-9)).sum()), int(alive.sum())
        ci = _range_interval(_stats.wilson, k, top, len(s))
        parts.append(f"{spec} d={int(d)}: {k if k == top else f'{k}–{top}'}/{len(s)} {ci} % without NaN to {float(h):g} ep")
    return f"{n_runs} runs (Wilson 95 %); " + ", ".join(parts[:6]) + (" …" if len(parts) > 6 else "")
