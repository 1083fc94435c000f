"""Study kind ``zca_cifar10_survival``: time to a NaN loss of ZCA-whitened ResNet-18s at the paper's horizon.

Wang, Chen, Ma, Salzmann & Fua, "Robust Differentiable SVD", TPAMI 2021, Table IV: the success rate
(out of 15 runs of 350 epochs, failure = a NaN loss) of a ResNet-18 with a ZCA layer of group size
d after conv1, per backward: SVD, PI, SVD-PI, SVD-Taylor, SVD-Clip. Here each run is one cell
(``stabkit.train.train_run`` with the ``paper`` preset: the authors' layers, StepLR by epoch, full
50 000-image epochs), trained to a horizon of ``epochs`` (100: the paper's whole lr = 0.1 phase),
and analysed as survival data: the time to the first NaN loss (epochs), right-censored at the
horizon reached.

Cells run in the study file's order (``cells`` = [method, d] pairs, most informative first) and,
within that order, in blocks of ``seed_block`` seeds: the first block of every cell before the
second block of any, so a time-boxed session does the first cells first and every cell gets some
runs before any gets many. ``extend_epochs`` (e.g. 350) with ``extend`` (the cell ids of survivors,
listed by the report) adds runs of those seeds to the longer horizon, past the lr drops.

Report (``report``): Kaplan–Meier curves of time to NaN loss per cell; runs without NaN loss with
Wilson and Clopper–Pearson intervals; Fisher's exact test of each cell against the paper's count
with Holm's correction across cells and the rates the test would detect with 80 % power; test
accuracy per epoch of the surviving runs; final test errors of extended runs; the landmark link
(``stabkit.studies._landmark``). Statistics: ``stabkit.studies._stats``.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pandas as pd

from .._markdown import markdown_table
from ..methods import format_spec, parse_spec
from ..train.preset import get_preset
from . import _landmark, _stats, with_defaults
from .zca_cifar10 import PAPER_NAMES, PAPER_TABLE_IV

#: Table IV as counts out of 15 runs (the percentages of ``zca_cifar10.PAPER_TABLE_IV`` × 15).
PAPER_RUNS = 15
PAPER_COUNTS = {m: {d: int(round(pct * PAPER_RUNS / 100)) for d, pct in row.items()} for m, row in PAPER_TABLE_IV.items()}

#: the issue's order: SVD d = 8, 16 (paper 0/15); SVD-Taylor d = 16 (control); PI d = 4, 8 (15/15,
#: 1/15); SVD-PI d = 16, 64 (15/15); then the rest of Table IV.
FIRST_CELLS = [["analytic", 8], ["analytic", 16], ["taylor", 16], ["pi-forward", 4], ["pi-forward", 8], ["pi", 16], ["pi", 64]]
REST_CELLS = [[m, d] for m in ("analytic", "pi-forward", "pi", "taylor", "clip") for d in (4, 8, 16, 32, 64)
              if [m, d] not in FIRST_CELLS]

GRID_DEFAULTS = {
    "cells": FIRST_CELLS + REST_CELLS,   # [method spec, d] in run order
    "dtypes": ["float32"],
    "seeds": 15,
    "seed_start": 1000,        # disjoint from the short studies' seeds 0…7
    "seed_block": 3,
    "epochs": 100.0,           # the horizon
    "extend_epochs": 0.0,      # > epochs: a second horizon for the runs listed in ``extend``
    "extend": [],              # base cell ids (survivors) to rerun to extend_epochs
    "preset": "paper",
    "limit_images": 0,         # 0: all 50 000
    "limit_test": 0,           # 0: all 10 000
    "batch_size": 128,
    "lr": 0.1,
    "eps": None,               # None: the preset's per-method ε
    "width": 1.0,
    "landmarks": [5.0, 10.0, 25.0],   # epochs
    "fast": False,             # train_run's fast path (bf16 trunk, ...): passed only when true
    "eval_every": 1,           # test evaluation every N epochs: passed only when not 1
    "compile": None,           # torch.compile mode of the fast path: passed only when set
    "train_options": {},       # more train_run options, passed as they are
    "data": "",
    "device": "auto",
}


def validate(grid: dict) -> dict:
    g = with_defaults("zca_cifar10_survival", grid, GRID_DEFAULTS)
    kind = "zca_cifar10_survival"
    if not g["cells"]:
        raise ValueError(f"{kind}: cells must list at least one [method, d] pair")
    cells = []
    for item in g["cells"]:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"{kind}: each entry of cells must be [method, d], got {item!r}")
        spec, d = format_spec(*parse_spec(str(item[0]))), int(item[1])
        if d < 1 or 64 % d:
            raise ValueError(f"{kind}: d must divide 64 (conv1's channels), got {d} in {item!r}")
        cells.append([spec, d])
    if len({tuple(c) for c in cells}) != len(cells):
        raise ValueError(f"{kind}: cells lists a [method, d] pair twice")
    g["cells"] = cells
    channels = int(round(64 * float(g["width"])))
    for spec, d in cells:
        if channels % d:
            raise ValueError(f"{kind}: d = {d} ({spec}) must divide conv1's {channels} channels at width {g['width']}")
    for t in g["dtypes"]:
        if t not in ("float32", "float64"):
            raise ValueError(f"{kind}: dtypes must be float32/float64, got {t!r}")
    for key in ("seeds", "seed_block"):
        if int(g[key]) < 1:
            raise ValueError(f"{kind}: {key} must be ≥ 1, got {g[key]}")
    if int(g["seed_start"]) < 0:
        raise ValueError(f"{kind}: seed_start must be ≥ 0, got {g['seed_start']}")
    for key in ("epochs", "lr", "width", "batch_size"):
        if not float(g[key]) > 0:
            raise ValueError(f"{kind}: {key} must be > 0, got {g[key]}")
    if g["eps"] is not None and not float(g["eps"]) > 0:
        raise ValueError(f"{kind}: eps must be > 0, got {g['eps']}")
    if float(g["extend_epochs"]) and float(g["extend_epochs"]) <= float(g["epochs"]):
        raise ValueError(f"{kind}: extend_epochs ({g['extend_epochs']}) must exceed epochs ({g['epochs']}), or be 0")
    if g["extend"] and not float(g["extend_epochs"]):
        raise ValueError(f"{kind}: extend lists runs but extend_epochs is 0")
    if not all(float(x) > 0 for x in g["landmarks"]):
        raise ValueError(f"{kind}: landmarks must be positive epochs, got {g['landmarks']}")
    if not isinstance(g["fast"], bool):
        raise ValueError(f"{kind}: fast must be true or false, got {g['fast']!r}")
    if int(g["eval_every"]) < 0:
        raise ValueError(f"{kind}: eval_every must be ≥ 0 epochs, got {g['eval_every']}")
    if not isinstance(g["train_options"], dict):
        raise ValueError(f"{kind}: train_options must be a table of train_run options, got {g['train_options']!r}")
    preset = get_preset(g["preset"])
    if preset.rows:
        for spec, _ in cells:
            preset.layer(*parse_spec(spec))  # ValueError: no row for the method under this preset
    if g["device"] != "auto" and not (g["device"] == "cpu" or str(g["device"]).startswith("cuda")):
        raise ValueError(f"{kind}: device must be auto, cpu or cuda[:N], got {g['device']!r}")
    base_ids = {_cell_id(spec, d, t, s, float(g["epochs"])) for spec, d in cells for t in g["dtypes"] for s in _seeds(g)}
    unknown = [c for c in g["extend"] if c not in base_ids]
    if unknown:
        raise ValueError(f"{kind}: extend names {unknown[0]!r}, not a cell of this grid")
    return g


def _seeds(g: dict) -> list[int]:
    return list(range(int(g["seed_start"]), int(g["seed_start"]) + int(g["seeds"])))


def _cell_id(spec: str, d: int, dtype: str, seed: int, epochs: float) -> str:
    return f"{spec}|d{d}|{dtype}|s{seed}|e{epochs:g}"


def cells(grid: dict) -> list[dict]:
    """Every run, in run order: seed blocks outermost, then the file's cells, dtypes, seeds; the
    extension runs (if any) after all of them."""
    g = validate(grid)
    common = {k: g[k] for k in ("preset", "limit_images", "limit_test", "batch_size", "lr", "eps", "width", "data",
                                "device")}
    # the fast-path keys only when they differ from train_run's defaults, so a loop without them runs the rest
    common["train_options"] = {**({"fast": True} if g["fast"] else {}),
                               **({"eval_every": int(g["eval_every"])} if int(g["eval_every"]) != 1 else {}),
                               **({"compile": g["compile"]} if g["compile"] is not None else {}),
                               **g["train_options"]}
    seeds, block = _seeds(g), int(g["seed_block"])
    out = []
    for b in range(0, len(seeds), block):
        for order, (spec, d) in enumerate(g["cells"]):
            for dtype in g["dtypes"]:
                for seed in seeds[b:b + block]:
                    out.append({"cell_id": _cell_id(spec, d, dtype, seed, float(g["epochs"])), "spec": spec, "d": d,
                                "dtype": dtype, "seed": seed, "epochs": float(g["epochs"]), "order": order, **common})
    by_id = {c["cell_id"]: c for c in out}
    for base in g["extend"]:
        c = by_id[base]
        out.append({**c, "cell_id": _cell_id(c["spec"], c["d"], c["dtype"], c["seed"], float(g["extend_epochs"])),
                    "epochs": float(g["extend_epochs"])})
    return out


def run_cell(cell: dict) -> list[dict]:
    from ..train.loop import train_run

    name, params = parse_spec(cell["spec"])
    config = {"preset": cell["preset"], "method": name, "params": params, "d": cell["d"], "dtype": cell["dtype"],
              "norm": "zca", "seed": cell["seed"], "epochs": cell["epochs"], "batch_size": cell["batch_size"],
              "lr": cell["lr"], "eps": cell["eps"], "width": cell["width"], "device": cell["device"],
              "limit_images": cell["limit_images"] or None, "limit_test": cell["limit_test"] or None,
              "data": cell["data"] or None, **cell.get("train_options", {})}
    result = train_run(config)
    result["backward"] = result.get("spec")
    result["spec"] = cell["spec"]
    result["order"] = cell["order"]
    result["horizon_epochs"] = cell["epochs"]
    return [flatten(survival_fields(result))]


def survival_fields(result: dict) -> dict:
    """The survival fields of the run-record schema, derived from ``nan_loss_step``/``steps_done`` when
    the record lacks them (records written before they existed)."""
    r = dict(result)
    if r.get("steps_per_epoch") is None:
        images = int(r.get("limit_images") or 50000)
        batch = int(r["batch_size"])
        r["steps_per_epoch"] = images // batch if r.get("drop_last") else -(-images // batch)
    spe = float(r["steps_per_epoch"])
    if r.get("epochs_done") is None:
        r["epochs_done"] = float(r["steps_done"]) / spe
    if "time_to_nan_loss_epochs" not in r:
        step = r.get("nan_loss_step")
        r["time_to_nan_loss_epochs"] = None if step is None else (int(step) + 1) / spe
    if "censored_at_epochs" not in r:
        r["censored_at_epochs"] = float(r["epochs_done"]) if r["time_to_nan_loss_epochs"] is None else None
    return r


def flatten(result: dict) -> dict:
    """Scalars as they are (None → NaN); ``epoch_log`` and any other list/dict as JSON text."""
    out = {}
    for k, v in result.items():
        if isinstance(v, (list, tuple, dict)):
            out[k] = json.dumps(v, default=_json_number)
        elif v is None:
            out[k] = np.nan
        else:
            out[k] = v
    return out


def _json_number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


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


def _groups(r: pd.DataFrame):
    keys = ["spec", "d", "dtype", "horizon_epochs"]
    return sorted(r.groupby(keys, sort=False), key=lambda kv: (kv[0][3], int(kv[1]["order"].min()), kv[0][2]))


def _pct(lo_hi) -> str:
    lo, hi = lo_hi
    return "—" if math.isnan(lo) else f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def success_table(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per cell (method, d, dtype, horizon): runs without a NaN loss to the horizon with Wilson and
    Clopper–Pearson intervals, the paper's count, Fisher's two-sided p and its Holm adjustment
    across the cells compared, and the rates detectable with 80 % power against the paper's."""
    r = _runs(results)
    rows = []
    for (spec, d, dtype, horizon), s in _groups(r):
        name = parse_spec(spec)[0]
        nan = int(s["event"].sum())
        reached = int(((~s["event"]) & (s["reached"] >= horizon - 1e-9)).sum())
        unknown = len(s) - nan - reached  # stopped before the horizon without a NaN loss
        n = nan + reached
        paper = PAPER_COUNTS.get(name, {}).get(int(d))
        p = _stats.fisher_exact(reached, nan, paper, PAPER_RUNS - paper) if paper is not None and n else np.nan
        if paper is not None and n:
            lo, hi = _stats.smallest_detectable(n, PAPER_RUNS, paper / PAPER_RUNS, 0.8, alpha, grid=100)
            power = (f"≤ {100 * lo:.0f} %" if lo is not None else "") + (" or " if lo is not None and hi is not None else "") + \
                    (f"≥ {100 * hi:.0f} %" if hi is not None else "")
            power = power or "none"
        else:
            power = "—"
        rows.append({
            "method": spec, "paper name": PAPER_NAMES.get(name, "—"), "d": int(d), "dtype": dtype,
            "horizon (epochs)": float(horizon), "runs": len(s), "NaN loss": nan,
            "no NaN loss": f"{reached}/{n}", "no NaN loss %": 100 * reached / n if n else np.nan,
            "Wilson 95 %": _pct(_stats.wilson(reached, n)) if n else "—",
            "Clopper–Pearson 95 %": _pct(_stats.clopper_pearson(reached, n)) if n else "—",
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


def km_table(results: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Kaplan–Meier per cell: runs, NaN losses, S at the horizon with its log−log 95 % band, median."""
    r = _runs(results)
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
                     "95 % band": f"[{km['lo'][idx]:.2f}, {km['hi'][idx]:.2f}]" if idx >= 0 else "—",
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
    parts = [f"{spec} d={int(d)}: {int((~s['event']).sum())}/{len(s)} without NaN to {float(h):g} ep"
             for (spec, d, _, h), s in _groups(r)]
    return f"{len(r)} runs; " + ", ".join(parts[:6]) + (" …" if len(parts) > 6 else "")


# ------------------------------------------------------------------------------------------ figures
def _plots(results: pd.DataFrame, curves: dict, out_dir: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (km, end, censored) in curves.items():
        t = np.concatenate([[0.0], km["time"], [max(end, km["time"][-1] if len(km["time"]) else 0.0)]])
        s = np.concatenate([[1.0], km["survival"], [km["survival"][-1] if len(km["survival"]) else 1.0]])
        line, = ax.step(t, s, where="post", label=label)
        if len(km["time"]):
            lo = np.concatenate([[1.0], km["lo"], [km["lo"][-1]]])
            hi = np.concatenate([[1.0], km["hi"], [km["hi"][-1]]])
            ax.fill_between(t, lo, hi, step="post", color=line.get_color(), alpha=0.12)
        if len(censored):  # censoring ticks at S(t)
            ax.plot(censored, [_stats.survival_at(km, c) for c in censored], "|", color=line.get_color(), ms=9)
    ax.set_xlabel("epochs")
    ax.set_ylabel("runs without NaN loss (Kaplan–Meier; | censored)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "km_time_to_nan.png", dpi=120)
    plt.close(fig)
    names.append("km_time_to_nan.png")

    r = _runs(results)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = {}
    for _, run in r[~r["event"]].iterrows():
        acc = [(e["epoch"], e["test_acc"]) for e in _landmark.epoch_log(run.get("epoch_log")) if e.get("test_acc") is not None]
        if not acc:
            continue
        label = f"{run['spec']} d={int(run['d'])} {run['dtype']}"
        x, y = zip(*acc)
        kw = {"color": colours[label]} if label in colours else {"label": label}
        line, = ax.plot(x, y, lw=0.8, alpha=0.8, **kw)
        colours.setdefault(label, line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title("runs without a NaN loss")
    if colours:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "test_accuracy.png", dpi=120)
    plt.close(fig)
    names.append("test_accuracy.png")
    return names


# ------------------------------------------------------------------------------------------ report
def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crashed = results[results["error"].notna()] if "error" in results.columns else results.iloc[:0]
    r = _runs(results)
    preset = get_preset(g["preset"])
    lines = [
        "## ZCA-whitened ResNet-18 on CIFAR-10 at the paper's horizon: time to a NaN loss (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"Preset `{preset.name}` ({preset.description}); SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch {g['batch_size']}, "
        f"{g['limit_images'] or 50000} training images per epoch, test accuracy on {g['limit_test'] or 10000} test images, "
        f"lr ×{preset.gamma:g} at epochs {', '.join(f'{m:g}' for m in preset.milestones)} (StepLR by epoch). "
        f"Seeds {g['seed_start']}…{g['seed_start'] + g['seeds'] - 1} (disjoint from the short studies' 0…7), one run per "
        "cell. Failure is the paper's criterion: the first NaN loss; time to it in epochs = (step + 1) / steps per epoch.",
        "",
    ]
    crash_note = ([f"{len(crashed)} cell(s) crashed (a bug, not a training outcome): "
                   + "; ".join(crashed["cell_id"].astype(str)[:5]), ""] if len(crashed) else [])
    if r.empty:
        return "\n".join(lines + ["No finished runs yet.", ""] + crash_note)
    horizon_lines = []
    for h, s in r.groupby("horizon_epochs"):
        done = s[~s["event"]]
        full = int((done["reached"] >= h - 1e-9).sum())
        early = sorted(done.loc[done["reached"] < h - 1e-9, "reached"])
        horizon_lines.append(f"{len(s)} runs to a horizon of {h:g} epochs: {int(s['event'].sum())} with a NaN loss, {full} "
                             f"reached {h:g} epochs without one, {len(early)} stopped earlier without one"
                             + (f" (censored at {', '.join(f'{x:.1f}' for x in early)} epochs)." if early else "."))
    max_reached = float(r["reached"].max())
    lines += ["**Horizon reached.** " + " ".join(horizon_lines) + f" The longest run reached {max_reached:.1f} epochs"
              + ("; the paper trained 350 epochs with lr drops at 100, 200 and 300, so these runs cover only its lr = 0.1 "
                 "phase and their success is an upper bound of a 350-epoch success." if max_reached < 350 - 1e-9 else
                 ", the paper's 350.") + " Runs not yet done are not counted anywhere.", ""]
    km, curves = km_table(results)
    figs = _plots(results, curves, out_dir)
    lines += ["### Kaplan–Meier: time to the first NaN loss", "", f"![Kaplan–Meier]({figs[0]})", "",
              "Per cell, censored at the epochs each run reached without a NaN loss; band: Greenwood's variance on the "
              "log(−log S) scale, 95 %.", "", markdown_table(km), ""]
    table = success_table(results)
    lines += ["### Runs without a NaN loss against Table IV", "", markdown_table(table), "",
              "`no NaN loss`: runs that reached the horizon without a NaN loss, over those whose fate is known (a run "
              "stopped earlier without a NaN loss is left out and counted in `stopped early, no NaN`). Intervals: Wilson "
              "and Clopper–Pearson (exact), 95 %. `Fisher p`: two-sided Fisher exact test of our count against the paper's "
              f"count of {PAPER_RUNS} runs; `Holm p`: Holm's correction over the cells of "
              "one horizon. `80 % power if our rate`: the true rates at which this test, with our number of runs against "
              f"the paper's {PAPER_RUNS}, would reject at 5 % with probability ≥ 0.8 (exact, both samples binomial) — "
              "rates between those bounds would usually go undetected, so a large p is not agreement. At a horizon "
              "shorter than the paper's 350 epochs a failure after it is not seen: more runs without a NaN loss than the "
              "paper's is what a shorter horizon gives anyway, fewer is evidence against Table IV.", ""]
    acc = accuracy_table(results)
    lines += ["### Test accuracy of the runs without a NaN loss", "", f"![test accuracy]({figs[1]})", ""]
    lines += [markdown_table(acc), ""] if len(acc) else ["No surviving run has a test accuracy recorded.", ""]
    lines += ["A ResNet-18 held at lr 0.1 plateaus well above 80 % test accuracy when it really trains; runs far below "
              "that trained poorly even without a NaN loss.", ""]
    ext = r[(r["horizon_epochs"] > float(g["epochs"]) + 1e-9) & ~r["event"]]
    lines += ["### Runs extended past the lr drops", ""]
    if len(ext):
        err = ext.groupby(["spec", "d", "dtype"], sort=False)["test_error"].agg(["count", "median", "min", "max"]).reset_index()
        err.columns = ["method", "d", "dtype", "runs", "final test error (median)", "min", "max"]
        lines += [markdown_table(err), "", "The paper's final errors for these cells are not transcribed in this "
                  "repository; compare them with Table IV of the paper directly.", ""]
    else:
        lines += [f"None yet: extending survivors to {g['extend_epochs'] or 350:g} epochs needs `extend_epochs` and `extend` "
                  "in the study file.", ""]
    cand = survivors(results)
    if cand and not g["extend"]:
        lines += ["Survivors that could be extended (`extend = [...]`): " + ", ".join(f"`{c}`" for c in cand[:20])
                  + (f" … ({len(cand)} in all)" if len(cand) > 20 else ""), ""]
    lines += ["### Which seeds fail is not reproducible on a GPU", "",
              "cuDNN and cuBLAS pick kernels and summation orders that vary between runs and machines, so the same seed "
              "does not give the same sequence of weights twice: a rerun of a cell can fail where the first run survived "
              "and the reverse. Only the failure *rate* of a cell is a reproducible quantity; compare rates, not seeds.", ""]
    lines += ["### The link: do diagnostics before a landmark predict a NaN loss after it, beyond the cell?", "",
              "Landmark design (`stabkit.studies._landmark`): runs alive at L only; features from the per-epoch "
              "diagnostics of the epochs that ended by L (" + ", ".join(_landmark.FEATURE_NAMES) + "); standardised "
              "inside each cross-validation fold; the cell's smoothed failure rate as the baseline to beat.", ""]
    base = r[np.isclose(r["horizon_epochs"], float(g["epochs"]))]  # one record per seed: the base horizon's
    for L in g["landmarks"]:
        lines += ["- " + _landmark.landmark_link(base, float(L), repeats=10)["sentence"]]
    lines += [""]
    return "\n".join(lines + crash_note)
