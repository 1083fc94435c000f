"""The ``zca_cifar10`` report: the protocol, the success table beside Table IV, the paper's
criterion, forward failures, two schedules compared, the link, and for a non-default preset the
authors' layers and the remaining deviations. Tables: ``tables``; figures: ``_plots``."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from ..._markdown import markdown_table
from ...train import table_iv
from ...train.preset import PAPER_DEVIATIONS, get_preset
from ...train.session import CIFAR10_TRAIN, test_images
from .. import _figures, _landmark, _stats
from . import validate
from .tables import FEATURES, ci, compare_schedules, largest_undetected, link, success_table

def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "error" in results.columns:
        crashed = results[results["error"].notna()]
        results = results[results["error"].isna()]
    else:
        crashed = results.iloc[:0]
    table = success_table(results)
    linked = link(results, g["early_frac"])
    preset = get_preset(g["preset"])
    paper_rate = preset.stop_on == "nan-loss" and "no NaN loss %" in table
    figs = _plots(table, linked["fit"], out_dir, paper_rate) if len(table) else []
    if preset.name != "stabkit":
        return _preset_report(results, g, preset, table, linked, figs, crashed, out_dir)
    lines = _intro(results, g)
    if figs:
        lines += [f"![success rates]({figs[0]})", ""]
    lines += _success_section(table, results, crashed)
    if g["baseline_study"]:
        lines += _schedule_section(results, g, out_dir)
    lines += _link_section(linked, g, figs)
    return "\n".join(lines)


def _horizon(results: pd.DataFrame, g: dict) -> tuple[int | None, float]:
    """The schedule's length: (steps, epochs). Steps: the longest ``steps_total`` recorded (else the
    grid's ``max_steps``; None if neither); epochs: those steps × batch / training images (else the
    grid's ``epochs``)."""
    total = pd.to_numeric(results["steps_total"], errors="coerce").max() if "steps_total" in results else np.nan
    steps = int(total) if total == total else (int(g["max_steps"]) if g["max_steps"] else None)
    if steps is None:
        return None, float(g["epochs"])
    return steps, steps * int(g["batch_size"]) / int(g["limit_images"] or CIFAR10_TRAIN)


def _horizon_text(results: pd.DataFrame, g: dict) -> str:
    """``1200 steps (10 epochs of 15360 images, 0.88 % of the training images the paper's 350 epochs of
    50000 show)``: the fraction counts images seen, since an epoch of a subset is not one of the paper's."""
    steps, epochs = _horizon(results, g)
    paper = get_preset("paper").epochs
    images = g["limit_images"] or CIFAR10_TRAIN
    ep = f"{epochs:.3g} epoch{'' if epochs == 1 else 's'} of {images} images"
    frac = (f"{100 * epochs * images / (paper * CIFAR10_TRAIN):.2g} % of the training images the paper's {paper:g} "
            f"epochs of {CIFAR10_TRAIN} show")
    return f"{steps} steps ({ep}, {frac})" if steps is not None else f"{ep} ({frac})"


def _intro(results: pd.DataFrame, g: dict) -> list[str]:
    """The protocol of the stabkit-preset study and the outcomes it records."""
    steps = f"{g['max_steps']} steps" if g["max_steps"] else f"{g['epochs']:g} epochs"
    eps = "the preset's" if g["eps"] is None else f"{g['eps']:g}"
    return [
        "## ZCA whitening in ResNet-18 on CIFAR-10: training success per backward (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"One run per cell: ResNet-18 (conv1 → ZCA(d) → …), SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch "
        f"{g['batch_size']}, ε = {eps}, {steps} on {g['limit_images'] or CIFAR10_TRAIN} training images (step decay ×0.1 at 50 % "
        f"and 75 % of the steps), test error on {test_images(g)} test images; {g['seeds']} seeds per cell. "
        "The paper: 350 epochs, 15 runs per cell, one dtype — its numbers are shown beside both of ours. This "
        f"schedule, {_horizon_text(results, g)}, is not a prefix of the paper's (its lr drops at 50 % and 75 % of "
        "its steps, and `diverged` is judged at its end), so its success rates are neither upper nor lower bounds "
        "of the paper's.",
        "",
        "Outcomes: ok; eigh-failed (forward eigensolver raised); nonfinite-loss; nonfinite-grad; diverged (loss > 50, "
        "or training accuracy ≤ 15 % at step max(100, steps/4), or final test error ≥ 88 %).",
        "",
        *_legacy_note(results, g),
    ]


def _success_section(table: pd.DataFrame, results: pd.DataFrame, crashed: pd.DataFrame) -> list[str]:
    """The success table, the paper's criterion beside it, forward failures, the BatchNorm baseline,
    the cost and the crashed cells."""
    lines = ["### Success rate per method × d × dtype", "", markdown_table(table) if len(table) else "(no ZCA runs)", ""]
    if "no NaN loss %" in table:
        lines += ["The paper's criterion beside ours: `NaN loss (paper criterion)` counts runs whose loss became NaN; "
                  "`censored` runs stopped at another outcome (above) before any NaN loss, so their fate under the "
                  "paper's rule is unknown; `no NaN loss %` is over the other runs. `success %` is this toolkit's "
                  "(any failure event counts).", ""]
    lines += _forward_failure_note(table)
    bn = results[results["norm"] == "bn"]
    if len(bn):
        k = int((bn["outcome"] == "ok").sum())
        lines += [f"BatchNorm baseline: {k}/{len(bn)} ok {ci(k, len(bn))} % (Wilson 95 %), median test error "
                  f"{bn.loc[bn['outcome'] == 'ok', 'test_error'].median():.3f}.", ""]
    if "wall_s" in results.columns and len(results):
        wall = pd.to_numeric(results["wall_s"], errors="coerce")
        lines += [f"Cost: {len(results)} runs, {wall.sum() / 60:.1f} min of summed run time (median {wall.median():.1f} s per run; "
                  "the study's wall time, with concurrent runs, is in the header).", ""]
    return lines + _crashed_note(crashed)


def _crashed_note(crashed: pd.DataFrame) -> list[str]:
    if not len(crashed):
        return []
    return [f"{len(crashed)} cell(s) crashed (a bug, not a training outcome): " + "; ".join(crashed["cell_id"].astype(str)[:5]), ""]


def _link_section(link: dict, g: dict, figs: list[str]) -> list[str]:
    """The link at a landmark: who enters, the features, and the cross-validated Brier scores of the
    base rate, the cell alone and the cell + diagnostics, with the verdict."""
    lines = ["### The link: do early diagnostics predict a later failure, beyond the cell?", ""]
    table, fit, out = link["table"], link["fit"], link["left_out"]
    at = "/".join(str(s) for s in link["landmark_steps"]) or "—"
    later = table.loc[table["y"] == 1, "outcome"].value_counts()
    lines += [
        f"Landmark design (`stabkit.studies._landmark`; van Houwelingen, Scand. J. Statist. 2007): the landmark L is the "
        f"end of the early window, the first {100 * g['early_frac']:.0f} % of the steps (L = {at} steps). Only ZCA runs "
        f"still alive at L enter: {len(table)} run{'' if len(table) == 1 else 's'}, of which {int(table['y'].sum())} "
        f"failed at a step ≥ L ("
        + (", ".join(f"{o} {n}" for o, n in later.items()) or "none") + "). Left out: "
        f"{out['failed_before']} runs that failed before L (no lead time to predict them), {out['step_unknown']} "
        f"failures without a recorded step and {out['stopped_early']} run{'' if out['stopped_early'] == 1 else 's'} "
        "stopped before the last step without a failure (outcome unknown). Features, from the monitor's records of the steps before L only: "
        + ", ".join(f"`{f}`" for f in FEATURES) + ". Models, scored by the Brier score of repeated stratified "
        "cross-validation: the base rate; the cell (method × d × dtype; its smoothed failure rate in the training "
        "folds) — the baseline to beat; the cell + diagnostics (ridge logistic regression with the cell's logit as "
        "offset, each feature centred on its cell's mean and scaled, both from the training fold: only a run's "
        "deviation from its cell can add to the cell).",
        "",
    ]
    if fit is None:
        return lines + [f"Not fitted: fewer than {_landmark.MIN_EACH} runs of each outcome among the runs alive at L, so "
                        "there is too little to learn from; whether the diagnostics add anything beyond the cell is not "
                        "measurable here.", ""]
    b, z = fit["brier"], fit["gain_z"]
    verdict = ("the diagnostics add to the cell: the improvement exceeds 2 SE" if fit["adds"] else
               "the improvement is not above 2 SE, so at this n the diagnostics are not shown to add anything "
               "beyond the cell")
    lines += [
        f"n = {fit['n']} runs in {fit['cells']} cells, {fit['failures']} failures after L; {fit['repeats']}× "
        f"{fit['folds']}-fold. Brier: base rate {b['base']:.4f}, cell {b['cell']:.4f}, cell + diagnostics "
        f"{b['cell+diag']:.4f}; improvement of cell + diagnostics over the cell {fit['gain']:+.4f} ± {fit['gain_se']:.4f} "
        f"(SE, paired over runs, treating the runs as independent — an approximation for cross-validated scores; "
        f"{z:.2f} SE): {verdict}. " + spread_sentence(link["spread"]),
        "",
    ]
    if len(figs) > 1:
        lines += [f"![calibration]({figs[1]})", ""]
    return lines


def spread_sentence(spread: dict | None) -> str:
    """The improvement's range over fold seeds, and whether the split decides the 2-SE verdict."""
    if spread is None:
        return ""
    lo, hi = spread["z_low"], spread["z_high"]
    tips = " — the split of the folds decides the verdict" if (lo > 2) != (hi > 2) else ""
    return (f"Under fold seeds 0–{spread['seeds'] - 1} ({spread['repeats']} repeats each) the improvement lies "
            f"between {lo:.2f} and {hi:.2f} SE{tips}.")


def _legacy_note(results: pd.DataFrame, g: dict) -> list[str]:
    """Runs recorded before presets and SVD-PI's truncated forward existed carry no ``preset``
    column: say what their layer and their ``pi`` were, so no row is read as today's method, and
    the horizon and the successful runs' test errors, measured, beside chance."""
    if "preset" in results.columns:
        return []
    return ["**Conventions of these runs.** They predate the `paper` preset and the SVD-PI fix: the layer is the "
            "`stabkit` preset (ε = 1e-4 for every method, eigh without a clamp, γ = 1, torch's default init), and "
            "`pi` in these rows is today's `pi-legacy` (whitening with all d pairs, backward dropping pairs: it "
            "differentiates another function than the one it returns). Outcomes other than a NaN loss are this "
            f"toolkit's and are not the paper's criterion. The horizon is {_horizon_text(results, g)}; "
            + _ok_errors_text(results) + " Because of that horizon and that layer, no row is a test of Table IV.", ""]


def _ok_errors_text(results: pd.DataFrame) -> str:
    """The test errors at the end of the successful ZCA runs: range, median and n, beside chance (0.9)."""
    ok = results[(results["norm"] == "zca") & (results["outcome"] == "ok")] if len(results) else results
    err = pd.to_numeric(ok["test_error"], errors="coerce").dropna() if "test_error" in ok else pd.Series(dtype=float)
    if not len(err):
        return "no successful ZCA run has a test error recorded."
    if len(err) == 1:
        return f"the 1 successful ZCA run ends at test error {err.iloc[0]:.2f} (chance: 0.90)."
    return (f"the {len(err)} successful ZCA runs end at test errors {err.min():.2f}–{err.max():.2f} "
            f"(median {err.median():.2f}; chance: 0.90).")


def _schedule_section(results: pd.DataFrame, g: dict, out_dir: pathlib.Path) -> list[str]:
    name = g["baseline_study"]
    path = out_dir.parent / name / "results.parquet"
    lines = [f"### Against the schedule of `{name}`", ""]
    if not path.is_file():
        return lines + [f"No results at `{path}`: run that study first, then `stabkit report {out_dir.name}`.", ""]
    short = pd.read_parquet(path)
    if "error" in short.columns:
        short = short[short["error"].isna()]
    horizon = int(pd.to_numeric(short["steps_total"]).max()) if len(short) else 0
    table = compare_schedules(short, results, horizon)
    if table.empty:
        return lines + [f"No method × d × dtype of this study is in `{name}`.", ""]
    table.insert(table.columns.get_loc("Fisher p") + 1, "Holm p", _stats.holm(table["Fisher p"].to_numpy(float)))
    late = int(table["long fails after short horizon"].sum())
    return lines + [
        f"The same cells with `{name}`'s schedule ({horizon} steps) and this study's. Success counts with Wilson 95 % "
        "intervals (%); Fisher's exact test of equal success probability. With a few runs per cell only large "
        "differences are detectable, so the last column, failures that happened after the short schedule's last "
        "step, is the direct evidence of what the short protocol misses.",
        "",
        markdown_table(table.drop(columns=["short runs", "long runs"])),
        "",
        _schedule_verdict(table) + f" Long-run failures after step {horizon}: {late}.",
        "",
    ]


def _schedule_verdict(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """How many cells show a difference at Holm-adjusted p < ``alpha``; for the others, "no difference
    detected", with the runs per side and the largest difference of success rates that Fisher's test
    does not reject at those sizes (so that no reader takes it for agreement)."""
    m = len(table)
    found = int((table["Holm p"] < alpha).sum())
    sizes = sorted(set(zip(table["short runs"], table["long runs"])))
    text = (f"Difference detected (Holm-adjusted Fisher p < {alpha:g} over the {m} cell{'' if m == 1 else 's'}): "
            f"{found}/{m} cells.")
    if found == m:
        return text
    blind = []
    for n_s, n_l in sizes:
        worst = largest_undetected(int(n_s), int(n_l), alpha)
        if worst is None:
            blind.append(f"{n_s} vs {n_l} runs: no pair of counts can reach p < {alpha:g}")
        else:
            k_s, k_l, p = worst
            blind.append(f"at {n_s} vs {n_l} runs even {k_s}/{n_s} against {k_l}/{n_l}, {100 * k_s / n_s:.0f} % "
                         f"against {100 * k_l / n_l:.0f} %, gives p = {p:.2g} in a single test, before Holm's correction")
    rest = m - found
    where = (("the cell" if m == 1 else f"all {m} cells") if found == 0 else
             ("the other cell" if rest == 1 else f"the other {rest} cells"))
    return (text + f" In {where} no difference is detected, which is not "
            "agreement: with these runs per side only large differences are detectable (" + "; ".join(blind) + ").")


def _forward_failure_note(table: pd.DataFrame) -> list[str]:
    if not len(table) or not table["runs with λ_min ≤ 0"].any():
        return []
    n_bad, n_first = int(table["runs with λ_min ≤ 0"].sum()), int(table["… at step 0"].sum())
    later = n_bad - n_first
    text = (f"Forward failures: in {n_bad} run{'' if n_bad == 1 else 's'} the forward eigendecomposition returned "
            "λ_min ≤ 0 for Σ + εI, whose eigenvalues are ≥ ε in exact arithmetic, so λ^{-1/2} was NaN in the forward "
            "pass. ")
    if n_first:
        text += (f"{n_first} of them failed at step 0, before any gradient had been applied: there the backward rule "
                 "played no part, and the rounding of the forward computation (covariance and eigensolver in the "
                 "layer's dtype) alone gave λ_min ≤ 0. ")
    if later:
        who = (f"The other {later}" if n_first else
               "It failed after step 0" if n_bad == 1 else f"None of them failed at step 0: all {later}")
        text += (f"{who}{'' if who.startswith('It') else ' failed at a later step'}, after backward updates had been "
                 "applied; these records do not show what brought λ_min to ≤ 0 there (‖Σ‖ is not logged), so the "
                 f"backward rule's part in {'it' if later == 1 else 'them'} is not measured.")
    return [text.rstrip(), ""]


def _plots(table: pd.DataFrame, fit: dict | None, out_dir: pathlib.Path, paper_rate: bool = False) -> list[str]:
    plt = _figures.pyplot()
    names = []
    dtypes = list(dict.fromkeys(table["dtype"]))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 3.6), squeeze=False, sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        groups = list(table[table["dtype"] == dtype].groupby("method", sort=False))
        for i, (spec, s) in enumerate(groups):
            ci, rate_col = ("no NaN loss CI", "no NaN loss %") if paper_rate else ("Wilson 95% CI", "success %")
            lo = [float(c.strip("[]").split(",")[0]) if c != "—" else np.nan for c in s[ci]]
            hi = [float(c.strip("[]").split(",")[1]) if c != "—" else np.nan for c in s[ci]]
            rate = s[rate_col].to_numpy(float)
            x = s["d"].to_numpy() * 2.0 ** (0.08 * (i - (len(groups) - 1) / 2))  # side by side, not on top
            ax.errorbar(x, rate, yerr=[rate - lo, np.asarray(hi) - rate], marker="o", capsize=3, label=spec)
            ax.plot(x, s["paper %"], ls=":", color=ax.lines[-1].get_color(), alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(table["d"])), [str(d) for d in sorted(set(table["d"]))], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("group size d")
        ax.set_title(f"{dtype} (dotted: paper Table IV)")
    axes[0][0].set_ylabel("runs without NaN loss %" if paper_rate else "success rate %")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    names.append(_figures.save(fig, out_dir / "success_rates.png", dpi=120))
    if fit is not None:
        fig, ax = plt.subplots(figsize=(4, 4))
        bins = np.linspace(0, 1, 6)
        for key, label in (("cell", "cell"), ("cell+diag", "cell + diagnostics")):
            p = fit["pred"][key]
            idx = np.clip(np.digitize(p, bins) - 1, 0, 4)
            xs = [p[idx == b].mean() for b in range(5) if (idx == b).any()]
            ys = [fit["y"][idx == b].mean() for b in range(5) if (idx == b).any()]
            ax.plot(xs, ys, marker="o", label=f"{label} (CV Brier {fit['brier'][key]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("predicted P(failure after the landmark)")
        ax.set_ylabel("observed failure rate")
        ax.legend(fontsize=7)
        fig.tight_layout()
        names.append(_figures.save(fig, out_dir / "calibration.png", dpi=120))
    else:
        (out_dir / "calibration.png").unlink(missing_ok=True)  # a rebuild's link may no longer be fitted
    return names


def deviations_section() -> list[str]:
    """The differences between the ``paper`` preset and the authors' code that remain (``PAPER_DEVIATIONS``)."""
    return ["### Remaining differences from the authors' code", "",
            markdown_table(pd.DataFrame(PAPER_DEVIATIONS, columns=["item", "authors' code", "this preset"])), ""]


def _preset_report(results, g, preset, table, linked, figs, crashed, out_dir) -> str:
    """The report of a study under a non-default preset (``paper``): its conventions, the NaN-loss
    rate compared with Table IV, our outcomes beside it, and the deviations from the authors' code."""
    steps = f"{g['max_steps']} steps (of {g['epochs']:g} epochs)" if g["max_steps"] else f"{g['epochs']:g} epochs"
    lines = [
        "## ZCA whitening in ResNet-18 on CIFAR-10 with the authors' layers (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"Preset `{preset.name}`: {preset.description}. SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch "
        f"{g['batch_size']}, {steps} on {g['limit_images'] or CIFAR10_TRAIN} training images, lr ×{preset.gamma:g} at "
        f"{', '.join(f'{m:g}' for m in (g['milestones'] or preset.milestones))} "
        f"({g['milestone_unit'] or preset.milestone_unit}s), input std {preset.input_std}, convs Kaiming-normal fan_out, "
        f"ZCA γ ~ U(0, 1), TF32 {'off' if preset.tf32 is False else 'as torch'}; {g['seeds']} seeds per cell.",
        "",
        markdown_table(_preset_rows(preset, g)),
        "",
        "Failure is the paper's criterion: a NaN loss (`no NaN loss %` over the runs whose fate under that rule is "
        "known, compared with `paper %`). Our other outcomes are counted beside it, not merged into it: "
        "`failures` lists the first event of each failed run (nonfinite-grad, nonfinite-loss, eigh-failed, "
        "diverged), and runs go on training through them as the authors' script did.",
        "",
    ]
    if figs:
        lines += [f"![success rates]({figs[0]})", ""]
    lines += ["### Per method × d × dtype", "", markdown_table(table) if len(table) else "(no ZCA runs)", ""]
    bn = results[results["norm"] == "bn"]
    if len(bn):
        k = int((bn["outcome"] == "ok").sum())
        lines += [f"BatchNorm baseline: {k}/{len(bn)} ok.", ""]
    lines += _crashed_note(crashed)
    if g["baseline_study"]:
        lines += _schedule_section(results, g, out_dir)
        lines += [f"(Here the two studies differ in the layer — preset `{preset.name}` against `{g['baseline_study']}`'s — "
                  "and both columns count this toolkit's outcome, the first failure event of any kind.)", ""]
    lines += deviations_section()
    lines += _link_section(linked, g, figs)
    return "\n".join(lines)


def _preset_rows(preset, g: dict) -> pd.DataFrame:
    """One row per Table IV row of the preset: the method, the authors' backward and layer conventions."""
    rows = []
    for name, row in preset.rows:
        rows.append({"method": table_iv.method(name).name, "paper name": name, "backward": str(row.spec),
                     "ε": row.eps if g["eps"] is None else g["eps"], "forward": row.solver,
                     "σ floor": row.lam_floor if row.lam_floor is not None else "—", "whitening": row.truncation,
                     "authors' code": row.source})
    return pd.DataFrame(rows)
