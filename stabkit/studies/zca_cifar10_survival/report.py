"""The ``zca_cifar10_survival`` report: the protocol, the horizon reached, Kaplan–Meier curves,
runs without a NaN loss against Table IV, test accuracy of the survivors, extended runs, and the
landmark link. Tables: ``tables``."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from ..._markdown import markdown_table
from ...train.preset import get_preset
from ...train.session import test_images
from .. import _figures, _landmark, _stats
from ..zca_cifar10.report import deviations_section
from . import validate
from .tables import PAPER_RUNS, _runs, accuracy_table, km_table, success_table, survivors

#: the SGD learning rate of the paper's first phase and its batch size (the authors' script; the
#: ``paper`` preset's lr drops are in ``stabkit.train.preset``)
PAPER_LR, PAPER_BATCH = 0.1, 128

def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crashed = results[results["error"].notna()] if "error" in results.columns else results.iloc[:0]
    r = _runs(results)
    preset = get_preset(g["preset"])
    lines = _intro(g, preset)
    crash_note = ([f"{len(crashed)} cell(s) crashed (a bug, not a training outcome): "
                   + "; ".join(crashed["cell_id"].astype(str)[:5]), ""] if len(crashed) else [])
    if r.empty:
        return "\n".join(lines + ["No finished runs yet.", ""] + crash_note)
    lines += _horizon_section(r, g, preset)
    km, curves = km_table(results)
    figs = _plots(results, curves, out_dir)
    lines += ["### Kaplan–Meier: time to the first NaN loss", "", f"![Kaplan–Meier]({figs[0]})", "",
              "Per cell, censored at the epochs each run reached without a NaN loss; band: Greenwood's variance on the "
              "log(−log S) scale, 95 %, not defined (—) where S reaches 0 — there the success table's exact interval "
              "applies. Median time to NaN: the first epoch at which S ≤ ½ (R's `survfit` takes the midpoint of a "
              "stretch where S is exactly ½).", "", markdown_table(km), ""]
    lines += _table_section(results, _paper_prefix(g, preset))
    lines += _accuracy_section(results, figs)
    lines += _extension_section(results, r, g)
    lines += deviations_section() if preset.rows else []
    lines += ["### Caveat: which seeds fail may change on a rerun (not measured here)", "",
              "GPU kernels (cuDNN, cuBLAS) are not bitwise deterministic by default: their choice of kernel and "
              "summation order may differ between runs and machines, so a rerun of the same seed need not follow the "
              "same weights, and which seeds fail may change. No cell was rerun here to measure this; the failure "
              "rate of a cell, not the fate of one seed, is what these runs estimate and what a rerun should be "
              "compared on.", ""]
    lines += _stacked_note(r)
    lines += _link_section(r, g)
    return "\n".join(lines + crash_note)


def _stacked_note(r: pd.DataFrame) -> list[str]:
    """How many runs were trained several at a time stacked in one network (``stabkit run --stack``)."""
    stacked = pd.to_numeric(r["stacked_runs"], errors="coerce").fillna(1) if "stacked_runs" in r else pd.Series(dtype=float)
    n = int((stacked > 1).sum())
    if not n:
        return []
    sizes = ", ".join(str(int(k)) for k in sorted(stacked[stacked > 1].unique()))
    return [f"{n} of these {len(r)} runs were trained {sizes} at a time, stacked in one network (`stabkit run --stack`, "
            "`stabkit.train.stacked_loop`): each run computes what it would alone (tested to rounding in float64 on a CPU), "
            "with the stacked kernels' own GPU rounding.", ""]


def _intro(g: dict, preset) -> list[str]:
    return [
        "## ZCA-whitened ResNet-18 on CIFAR-10 at the paper's horizon: time to a NaN loss (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"Preset `{preset.name}` ({preset.description}); SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch {g['batch_size']}, "
        f"{g['limit_images'] or 50000} training images per epoch, test accuracy on {test_images(g)} test images, "
        f"lr ×{preset.gamma:g} at epochs {', '.join(f'{m:g}' for m in preset.milestones)} (StepLR by epoch). "
        f"Seeds {g['seed_start']}…{g['seed_start'] + g['seeds'] - 1} planned (disjoint from the short studies' 0…7), one run "
        "per cell; the tables count only the runs done so far (the header says how many are not). Failure is the paper's criterion: the first NaN loss; time to it in epochs = (step + 1) / steps per epoch.",
        "",
    ]


def _paper_prefix(g: dict, preset) -> bool:
    """Whether a run of this study follows the paper's schedule up to its horizon: the paper preset's
    lr drops (same epochs, unit and factor), the paper's lr and batch size and full 50 000-image epochs."""
    paper = get_preset("paper")
    return (tuple(preset.milestones) == tuple(paper.milestones) and preset.milestone_unit == paper.milestone_unit
            and preset.gamma == paper.gamma and float(g["lr"]) == PAPER_LR and int(g["batch_size"]) == PAPER_BATCH
            and not g["limit_images"])


def _reach_text(max_reached: float, g: dict, preset) -> str:
    """The longest run against the paper's 350 epochs and its lr drops, each clause from the numbers:
    which of the paper's lr phases the runs reached, and whether their count bounds a 350-epoch count
    (only when the runs follow the paper's schedule up to their horizon)."""
    paper = get_preset("paper")
    text = f" The longest run reached {max_reached:.1f} epochs"
    if max_reached >= paper.epochs - 1e-9:
        return text + f", the paper's {paper.epochs:g}."
    drops = [float(m) for m in paper.milestones]
    passed = [m for m in drops if max_reached > m + 1e-9]
    text += (f" of the paper's {paper.epochs:g} (lr ×{paper.gamma:g} at epochs "
             + ", ".join(f"{m:g}" for m in drops) + ")")
    if not passed:
        text += (f": every run ended within the paper's first lr phase (lr {PAPER_LR:g}, epochs 0–{drops[0]:g}), "
                 "so none saw an lr drop")
    else:
        text += (f": the longest ran past the paper's lr drop{'s' if len(passed) > 1 else ''} at epoch"
                 f"{'s' if len(passed) > 1 else ''} " + ", ".join(f"{m:g}" for m in passed))
    if _paper_prefix(g, preset):
        return text + (". These runs follow the paper's schedule up to their horizon, so a run without a NaN loss to "
                       "its horizon may still have one before epoch 350: each count of runs without a NaN loss is an "
                       "upper bound of what the same runs would count at 350 epochs.")
    return text + (". This study's schedule differs from the paper's (lr, batch size, lr drops or epoch length), so its counts are "
                   "no bound of a 350-epoch count.")


def _horizon_section(r: pd.DataFrame, g: dict, preset) -> list[str]:
    """How far the runs got: per horizon, NaN losses, runs that reached it, runs stopped earlier."""
    horizon_lines = []
    for h, s in r.groupby("horizon_epochs"):
        done = s[~s["event"]]
        full = int((done["reached"] >= h - 1e-9).sum())
        early_runs = done[done["reached"] < h - 1e-9]
        early = sorted(early_runs["reached"])
        # runs that ended themselves before the GPU command's deadline (stabkit.train.loop, STABKIT_RUN_DEADLINE)
        at_deadline = int(early_runs["deadline_stop"].map(lambda v: v is True or v == 1).sum()) if "deadline_stop" in s else 0
        # the layer's eigensolver raised on a finite input: the run could not go on (no NaN loss to record)
        eigh = int((early_runs["paper_outcome"] == "eigh-failed").sum()) if "paper_outcome" in s else 0
        where = (", ".join(f"{x:.1f}" for x in early) if len(early) <= 12 else
                 f"{len(early)} times between {early[0]:.1f} and {early[-1]:.1f}")
        horizon_lines.append(f"{len(s)} runs to a horizon of {h:g} epochs: {int(s['event'].sum())} with a NaN loss, {full} "
                             f"reached {h:g} epochs without one, {len(early)} stopped earlier without one"
                             + (f" ({at_deadline} of them at the GPU command's deadline)" if at_deadline else "")
                             + (f" (censored at {where} epochs)." if early else ".")
                             + (f" {eigh} of the early stops are eigensolver failures (the layer's eigh raised on a "
                                f"finite covariance and the run could not go on): the run's own state stopped them, "
                                f"not a clock, so Kaplan–Meier's censoring of them is informative and its S(horizon) "
                                f"leans high; the success range counts them both ways." if eigh else ""))
    max_reached = float(r["reached"].max())
    return ["**Horizon reached.** " + " ".join(horizon_lines) + _reach_text(max_reached, g, preset)
            + " Runs not yet done are not counted anywhere.", ""]


def _table_section(results: pd.DataFrame, prefix: bool = True) -> list[str]:
    table = success_table(results)
    return ["### Runs without a NaN loss against Table IV", "", markdown_table(table), "",
            "`no NaN loss`: runs that reached the horizon without a NaN loss, of all the cell's runs. A run stopped "
            "earlier without a NaN loss (`stopped early, no NaN`) has an unknown outcome at the horizon; it is counted "
            "both ways, so the count becomes a range (k–k+u/n), each interval runs from its lower bound at k to its upper "
            "bound at k+u, and `Fisher p` is the largest over the range — no assumption about those runs (leaving them "
            "out would bias the count towards failure). `KM S(horizon) %`: the Kaplan–Meier estimate, which counts them "
            "as censored instead. At a horizon longer than a cell's first (runs extended with `extend`, survivors only), "
            "every seed of the cell counts: a seed not run that far counts with its shorter run — a NaN loss there is one "
            "at the longer horizon too, a run without one has an unknown outcome there (`stopped early, no NaN`) — so "
            "the early failures are not dropped. Intervals: Wilson and Clopper–Pearson (exact), 95 %. `Fisher p`: two-sided Fisher exact "
            f"test of our count against the paper's count of {PAPER_RUNS} runs; `Holm p`: Holm's correction over the cells "
            "of one horizon. `80 % power if our rate`: the true rates at which this test, with our number of runs against "
            f"the paper's published count (held fixed), would reject at 5 % with probability ≥ 0.8 (exact binomial "
            "power, searched on a 1 % grid: each true bound lies less than 1 point nearer the paper's rate) — rates "
            "more than 1 point inside those bounds would be detected with probability below 0.8, so a large p is not "
            "agreement. " + ("The horizon is a prefix of the paper's 350-epoch schedule, so a failure after it is not "
                             "seen: more runs without a NaN loss than the paper's is what a shorter horizon gives anyway; "
                             "fewer, with a small Holm p, is evidence against Table IV." if prefix else
                             "This study's schedule is not a prefix of the paper's (see the horizon above), so neither "
                             "direction of a difference is evidence about Table IV's 350-epoch count."), ""]


def _accuracy_section(results: pd.DataFrame, figs: list[str]) -> list[str]:
    acc = accuracy_table(results)
    lines = ["### Test accuracy of the runs without a NaN loss", "", f"![test accuracy]({figs[1]})", ""]
    lines += [markdown_table(acc), ""] if len(acc) else ["No surviving run has a test accuracy recorded.", ""]
    return lines + ["Accuracies are fractions of the test images. A ResNet-18 held at lr 0.1 (the paper's first 100 "
                    "epochs) should plateau well above 0.80 when it really trains (the issue's expectation, not a number "
                    "measured here); runs far below that trained poorly even without a NaN loss.", ""]


def _extension_section(results: pd.DataFrame, r: pd.DataFrame, g: dict) -> list[str]:
    """Final test errors of the runs extended past the lr drops, or which survivors could be."""
    ext = r[(r["horizon_epochs"] > float(g["epochs"]) + 1e-9) & ~r["event"]]
    lines = ["### Runs extended past the lr drops", ""]
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
    return lines


def _link_section(r: pd.DataFrame, g: dict) -> list[str]:
    lines = ["### The link: do diagnostics before a landmark predict a NaN loss after it, beyond the cell?", "",
             "Landmark design (`stabkit.studies._landmark`): runs alive at L only; features from the per-epoch "
             "diagnostics of the epochs that ended by L (" + ", ".join(_landmark.FEATURE_NAMES) + "), each centred on "
             "its cell's mean and scaled inside each cross-validation fold, so that only a run's deviation from its "
             "cell can add to the cell; the cell's smoothed failure rate as the baseline to beat; fitted only with "
             f"at least {_landmark.MIN_EACH} runs of each outcome. A run "
             "stopped after L before its horizon without a NaN loss is counted both ways (as a failure and as a "
             "survivor), and a verdict is stated only where both fits agree — a statement about those two "
             "completions, not a bound over every outcome the unknown runs could have had. Each landmark is "
             "tested on its own at 2 SE, with no correction for testing several.", ""]
    base = r[np.isclose(r["horizon_epochs"], float(g["epochs"]))]  # one record per seed: the base horizon's
    for L in g["landmarks"]:
        lines += ["- " + _landmark.landmark_link(base, float(L), repeats=10)["sentence"]]
    return lines + [""]


# ------------------------------------------------------------------------------------------ figures
def _plots(results: pd.DataFrame, curves: dict, out_dir: pathlib.Path) -> list[str]:
    plt = _figures.pyplot()
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
    names.append(_figures.save(fig, out_dir / "km_time_to_nan.png", dpi=120))

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
    names.append(_figures.save(fig, out_dir / "test_accuracy.png", dpi=120))
    return names
