"""Study kind ``zca_cifar10``: does ZCA-whitened ResNet-18 training on CIFAR-10 survive each backward?

Wang, Chen, Ma, Salzmann & Fua, "Robust Differentiable SVD", TPAMI 2021, Table IV: success rate of
training (15 runs per cell, 350 epochs) with a ZCA layer of group size d after conv1. One cell here
is one training run (``stabkit.train.train_run``): method × d × dtype × seed, plus a plain
BatchNorm baseline per seed. The default protocol is *short* (a fixed step budget on a subset,
see ``studies/zca-cifar10.toml`` for the time arithmetic), so our failure rates measure failures
early in training: a lower bound on the 350-epoch rates, comparable to Table IV where the paper's
failures happen early (SVD at d ≥ 8, PI at d ≥ 8).

``preset`` (grid key; ``stabkit.train.preset``) chooses the ZCA layer and protocol: ``stabkit``
(the committed studies) or ``paper`` (the authors' public layers per method, with per-method ε;
``studies/zca-cifar10-paper.toml``). Failure outcomes: the paper's criterion is a NaN loss; every
run records it (``paper_outcome``, ``nan_loss_step``) beside this toolkit's outcome (non-finite
loss or gradient, eigensolver error, "diverged"), and the report gives both, in separate columns:
under the ``paper`` preset the rate compared with Table IV is the NaN-loss one.

The report gives success rates with Wilson 95 % intervals per method × d × dtype beside Table IV,
the test error of successful runs, the monitor's early diagnostics per cell, and "the link": a
logistic model predicting failure from the first ``early_frac`` of each run's diagnostics
(log max|K̃|, log(1 + gap events), log of the method's gradient bound max|F|), with a calibration
plot, in-sample and 5-fold cross-validated Brier scores, and the base-rate Brier score beside them.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pandas as pd

from .._markdown import markdown_table
from . import _stats, with_defaults
from ._stats import fit_logistic, predict_logistic
from ..methods import format_spec, parse_spec
from ..train.preset import get_preset

#: Wang et al., TPAMI 2021, Table IV: success rate (%) of 15 runs × 350 epochs per cell.
PAPER_TABLE_IV = {
    "analytic": {4: 46.7, 8: 0.0, 16: 0.0, 32: 0.0, 64: 0.0},      # SVD
    "pi-forward": {4: 100.0, 8: 6.7, 16: 0.0, 32: 0.0, 64: 0.0},   # PI
    "pi": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},   # SVD-PI
    "taylor": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},  # SVD-Taylor
    "clip": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},  # SVD-Clip
}
PAPER_NAMES = {"analytic": "SVD", "pi-forward": "PI", "pi": "SVD-PI", "taylor": "SVD-Taylor", "clip": "SVD-Clip"}

GRID_DEFAULTS = {
    "methods": ["analytic", "pi-forward", "pi", "taylor", "clip"],  # registry specs, e.g. "taylor:K=9"
    "dims": [4, 8, 16, 32, 64],
    "dtypes": ["float32", "float64"],
    "seeds": 8,
    "bn_baseline": True,
    "epochs": 1.0,
    "max_steps": 150,
    "limit_images": 19200,
    "limit_test": 2000,
    "batch_size": 128,
    "lr": 0.1,
    "eps": None,        # None: the preset's ε (stabkit 1e-4; paper per method)
    "preset": "stabkit",
    "milestones": None,      # None: the preset's schedule
    "milestone_unit": None,
    "stop_on": None,
    "tf32": None,
    "width": 1.0,
    "early_frac": 0.2,
    "data": "",
    "device": "auto",
    "baseline_study": "",  # a sibling report (e.g. "zca-cifar10") whose cells this study reruns with another schedule
}


def validate(grid: dict) -> dict:
    g = with_defaults("zca_cifar10", grid, GRID_DEFAULTS)
    if not g["methods"]:
        raise ValueError("zca_cifar10: methods must list at least one method spec")
    g["methods"] = [format_spec(*parse_spec(str(m))) for m in g["methods"]]
    for d in g["dims"]:
        if int(d) < 1 or 64 % int(d):
            raise ValueError(f"zca_cifar10: dims must divide 64 (conv1's channels), got {d}")
    g["dims"] = [int(d) for d in g["dims"]]
    for t in g["dtypes"]:
        if t not in ("float32", "float64"):
            raise ValueError(f"zca_cifar10: dtypes must be float32/float64, got {t!r}")
    if int(g["seeds"]) < 1:
        raise ValueError(f"zca_cifar10: seeds must be ≥ 1, got {g['seeds']}")
    for key in ("epochs", "lr", "eps", "width", "early_frac"):
        if g[key] is not None and not float(g[key]) > 0:
            raise ValueError(f"zca_cifar10: {key} must be > 0, got {g[key]}")
    preset = get_preset(g["preset"])  # ValueError naming the presets
    if preset.rows:
        for spec in g["methods"]:
            name, params = parse_spec(spec)
            preset.layer(name, params)  # ValueError: no row / parameters fixed by the preset
    if g["milestones"] is not None:
        g["milestones"] = [float(m) for m in g["milestones"]]
    if not isinstance(g["baseline_study"], str):
        raise ValueError(f"zca_cifar10: baseline_study must be a report name (a string), got {g['baseline_study']!r}")
    if g["device"] != "auto" and not (g["device"] == "cpu" or str(g["device"]).startswith("cuda")):
        raise ValueError(f"zca_cifar10: device must be auto, cpu or cuda[:N], got {g['device']!r}")
    return g


OPTIONAL_KEYS = ("preset", "milestones", "milestone_unit", "stop_on", "tf32")


def cells(grid: dict) -> list[dict]:
    g = validate(grid)
    common = {k: g[k] for k in ("epochs", "max_steps", "limit_images", "limit_test", "batch_size", "lr", "eps", "width",
                                "early_frac", "data", "device")}
    # keys beyond the original grid only when set, so the committed studies' cells stay as they were
    common.update({k: g[k] for k in OPTIONAL_KEYS if g[k] is not None and not (k == "preset" and g[k] == "stabkit")})
    out = []
    for spec in g["methods"]:
        for d in g["dims"]:
            for dtype in g["dtypes"]:
                for seed in range(int(g["seeds"])):
                    out.append({"cell_id": f"{spec}|d{d}|{dtype}|s{seed}", "norm": "zca", "spec": spec, "d": d,
                                "dtype": dtype, "seed": seed, **common})
    if g["bn_baseline"]:
        for seed in range(int(g["seeds"])):
            out.append({"cell_id": f"bn|s{seed}", "norm": "bn", "spec": "bn", "d": 0, "dtype": "float32", "seed": seed, **common})
    return out


def run_cell(cell: dict) -> list[dict]:
    from ..train.loop import epoch_log_json, train_run

    config = {k: cell[k] for k in ("epochs", "max_steps", "limit_images", "limit_test", "batch_size", "lr", "eps", "width",
                                   "early_frac", "device", "seed", "dtype", "norm")}
    config.update({k: cell[k] for k in OPTIONAL_KEYS if k in cell})
    if "milestones" in config:
        config["milestones"] = tuple(config["milestones"])
    config["data"] = cell["data"] or None
    if cell["norm"] == "zca":
        name, params = parse_spec(cell["spec"])
        config.update(method=name, params=params, d=cell["d"])
    result = train_run(config)
    result["epoch_log"] = epoch_log_json(result["epoch_log"])  # results hold scalar columns: JSON text
    result["backward"] = result["spec"]  # the backward the layer ran (under the paper preset: the row's spec)
    result["spec"] = cell["spec"]
    return [{k: (np.nan if v is None else v) for k, v in result.items()}]


# ------------------------------------------------------------------------------------------ report
def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (Wilson, JASA 1927): ``_stats.wilson``."""
    return _stats.wilson(k, n, z)


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
        name = parse_spec(spec)[0]
        paper = PAPER_TABLE_IV.get(name, {}).get(int(d), np.nan)
        ok = s[s["outcome"] == "ok"]
        fails = s["outcome"][s["outcome"] != "ok"].value_counts()
        rows.append({
            "method": spec, "paper name": PAPER_NAMES.get(name, "—"), "d": int(d), "dtype": dtype, "runs": n,
            "success %": 100 * k / n, "Wilson 95% CI": _ci(k, n),
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
            "no NaN loss %": 100 * ok / known if known else np.nan, "no NaN loss CI": _ci(ok, known) if known else "—"}


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
            "short success": f"{k_s}/{n_s} {_ci(k_s, n_s)}", "long success": f"{k_l}/{n_l} {_ci(k_l, n_l)}",
            "Fisher p": float(fisher_exact([[k_s, n_s - k_s], [k_l, n_l - k_l]])[1]),
            "long fails after short horizon": late,
        })
    return pd.DataFrame(rows)


def _ci(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"


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
    agree = int((table["Fisher p"] >= 0.05).sum())
    late = int(table["long fails after short horizon"].sum())
    return lines + [
        f"The same cells with `{name}`'s schedule ({horizon} steps) and this study's. Success counts with Wilson 95 % "
        "intervals (%); Fisher's exact test of equal success probability. With a few runs per cell only large "
        "differences are detectable, so the last column, failures that happened after the short schedule's last "
        "step, is the direct evidence of what the short protocol misses.",
        "",
        markdown_table(table),
        "",
        f"Cells where the schedules agree (Fisher p ≥ 0.05): {agree}/{len(table)}; long-run failures after step "
        f"{horizon}: {late}.",
        "",
    ]


def _inside_window_note(results: pd.DataFrame, g: dict) -> list[str]:
    """How many failures happened inside the early window (their features stop at the failing step)."""
    zca = results[(results["norm"] == "zca") & (results["outcome"] != "ok")]
    if "steps_total" not in zca or zca.empty:
        return []
    end = np.maximum(1, np.round(g["early_frac"] * pd.to_numeric(zca["steps_total"])))
    inside = int((pd.to_numeric(zca["step"]) < end).sum())
    return [f"{inside} of the {len(zca)} failures happened inside the early window. Their features come from the steps up "
            "to the failing one; every value is logged by a forward eigendecomposition, which runs before that step's "
            "backward, so no feature is measured after the failure — but for these runs the prediction has no lead time.", ""]


def _forward_failure_note(table: pd.DataFrame) -> list[str]:
    if not len(table) or not table["runs with λ_min ≤ 0"].any():
        return []
    n_bad, n_first = int(table["runs with λ_min ≤ 0"].sum()), int(table["… at step 0"].sum())
    return [f"Forward failures: in {n_bad} runs the forward eigendecomposition returned λ_min ≤ 0 for Σ + εI, whose "
            "eigenvalues are ≥ ε in exact arithmetic, so λ^{-1/2} was NaN in the forward pass. In the "
            f"{n_first} of them that failed at step 0 no gradient had been applied yet: those failures are the rounding "
            "of the forward (covariance and eigensolver in the layer's dtype) alone, whatever the backward rule. In the "
            "others a backward update came first, and a large update grows ‖Σ‖ and with it the rounding error.", ""]


def _plots(table: pd.DataFrame, fit: dict | None, out_dir: pathlib.Path, paper_rate: bool = False) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(out_dir / "success_rates.png", dpi=120)
    plt.close(fig)
    names.append("success_rates.png")
    if fit is not None:
        fig, ax = plt.subplots(figsize=(4, 4))
        for key, label in (("p", "in-sample"), ("p_cv", "5-fold CV")):
            bins = np.linspace(0, 1, 6)
            idx = np.clip(np.digitize(fit[key], bins) - 1, 0, 4)
            xs = [fit[key][idx == b].mean() for b in range(5) if (idx == b).any()]
            ys = [fit["y"][idx == b].mean() for b in range(5) if (idx == b).any()]
            ax.plot(xs, ys, marker="o", label=f"{label} (Brier {fit['brier' if key == 'p' else 'brier_cv']:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("predicted P(failure)")
        ax.set_ylabel("observed failure rate")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "calibration.png", dpi=120)
        plt.close(fig)
        names.append("calibration.png")
    return names


def _legacy_note(results: pd.DataFrame) -> list[str]:
    """Runs recorded before presets and SVD-PI's truncated forward existed carry no ``preset``
    column: say what their layer and their ``pi`` were, so no row is read as today's method."""
    if "preset" in results.columns:
        return []
    return ["**Conventions of these runs.** They predate the `paper` preset and the SVD-PI fix: the layer is the "
            "`stabkit` preset (ε = 1e-4 for every method, eigh without a clamp, γ = 1, torch's default init), and "
            "`pi` in these rows is today's `pi-legacy` (whitening with all d pairs, backward dropping pairs: it "
            "differentiates another function than the one it returns). Outcomes other than a NaN loss are this "
            "toolkit's and are not the paper's criterion; at this horizon the successful networks have barely "
            "started to train (see the test errors), so no row is a test of Table IV.", ""]


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
    fit = link(results)
    preset = get_preset(g["preset"])
    paper_rate = preset.stop_on == "nan-loss" and "no NaN loss %" in table
    figs = _plots(table, fit, out_dir, paper_rate) if len(table) else []
    if preset.name != "stabkit":
        return _preset_report(results, g, preset, table, fit, figs, crashed, out_dir)
    steps = f"{g['max_steps']} steps" if g["max_steps"] else f"{g['epochs']:g} epochs"
    eps = "the preset's" if g["eps"] is None else f"{g['eps']:g}"
    lines = [
        "## ZCA whitening in ResNet-18 on CIFAR-10: training success per backward (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"One run per cell: ResNet-18 (conv1 → ZCA(d) → …), SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch "
        f"{g['batch_size']}, ε = {eps}, {steps} on {g['limit_images'] or 50000} training images (step decay ×0.1 at 50 % "
        f"and 75 % of the steps), test error on {g['limit_test'] or 10000} test images; {g['seeds']} seeds per cell. "
        "The paper: 350 epochs, 15 runs per cell, one dtype — its numbers are shown beside both of ours. Our short "
        "protocol sees only failures early in training, so our success rates are upper bounds of the long-run ones.",
        "",
        "Outcomes: ok; eigh-failed (forward eigensolver raised); nonfinite-loss; nonfinite-grad; diverged (loss > 50, "
        "or training accuracy ≤ 15 % at step max(100, steps/4), or final test error ≥ 88 %).",
        "",
        *_legacy_note(results),
    ]
    if figs:
        lines += [f"![success rates]({figs[0]})", ""]
    lines += ["### Success rate per method × d × dtype", "", markdown_table(table) if len(table) else "(no ZCA runs)", ""]
    if "no NaN loss %" in table:
        lines += ["The paper's criterion beside ours: `NaN loss (paper criterion)` counts runs whose loss became NaN; "
                  "`censored` runs stopped at another outcome (above) before any NaN loss, so their fate under the "
                  "paper's rule is unknown; `no NaN loss %` is over the other runs. `success %` is this toolkit's "
                  "(any failure event counts).", ""]
    lines += _forward_failure_note(table)
    bn = results[results["norm"] == "bn"]
    if len(bn):
        k = int((bn["outcome"] == "ok").sum())
        lo, hi = wilson(k, len(bn))
        lines += [f"BatchNorm baseline: {k}/{len(bn)} ok [{100 * lo:.0f}, {100 * hi:.0f}] %, median test error "
                  f"{bn.loc[bn['outcome'] == 'ok', 'test_error'].median():.3f}.", ""]
    if "wall_s" in results.columns and len(results):
        wall = pd.to_numeric(results["wall_s"], errors="coerce")
        lines += [f"Cost: {len(results)} runs, {wall.sum() / 60:.1f} min of summed run time (median {wall.median():.1f} s per run; "
                  "the study's wall time, with concurrent runs, is in the header).", ""]
    if len(crashed):
        lines += [f"{len(crashed)} cell(s) crashed (a bug, not a training outcome): " + "; ".join(crashed["cell_id"].astype(str)[:5]), ""]
    if g["baseline_study"]:
        lines += _schedule_section(results, g, out_dir)
    lines += ["### The link: do early diagnostics predict failure?", ""]
    if fit is None:
        lines += ["Not fitted: every ZCA run had the same outcome (or there were none), so there is nothing to predict.", ""]
    else:
        coef = ", ".join(f"{name} {b:+.2f}" for name, b in zip(["intercept"] + FEATURES, fit["beta"]))
        lines += [
            f"Logistic regression (ridge 1e-2, standardised features) of failure on the first {100 * g['early_frac']:.0f} % "
            f"of each run's monitor diagnostics: log10 max|K̃| (= 1/min gap), log(1 + gap events with relative gap < 1e-5), "
            f"log10 of the method's gradient bound max|F_ij|. n = {fit['n']} runs. Coefficients: {coef}.",
            "",
            *_inside_window_note(results, g),
            f"Brier score: in-sample {fit['brier']:.4f}, 5-fold cross-validated {fit['brier_cv']:.4f}, "
            f"base rate (predict the mean failure rate) {fit['brier_base']:.4f}, the cell alone (leave-one-out failure "
            f"rate of the run's method × d × dtype) {fit['brier_cell']:.4f}. Lower is better. The diagnostics add "
            "something only if the cross-validated score beats both the base rate and the cell alone"
            + (" — here they do not." if fit["brier_cv"] >= fit["brier_cell"] else "."),
            "",
        ]
        if len(figs) > 1:
            lines += [f"![calibration]({figs[1]})", ""]
    return "\n".join(lines)


def _preset_report(results, g, preset, table, fit, figs, crashed, out_dir) -> str:
    """The report of a study under a non-default preset (``paper``): its conventions, the NaN-loss
    rate compared with Table IV, our outcomes beside it, and the deviations from the authors' code."""
    from ..train.preset import PAPER_DEVIATIONS

    steps = f"{g['max_steps']} steps (of {g['epochs']:g} epochs)" if g["max_steps"] else f"{g['epochs']:g} epochs"
    rows = []
    for method, row in preset.rows:
        rows.append({"method": method, "paper name": PAPER_NAMES.get(method, "—"), "backward": row.spec,
                     "ε": row.eps if g["eps"] is None else g["eps"], "forward": row.solver,
                     "σ floor": row.lam_floor if row.lam_floor is not None else "—", "whitening": row.truncation,
                     "authors' code": row.source})
    lines = [
        "## ZCA whitening in ResNet-18 on CIFAR-10 with the authors' layers (Wang et al., TPAMI 2021, Table IV)",
        "",
        f"Preset `{preset.name}`: {preset.description}. SGD lr {g['lr']:g}, momentum 0.9, wd 5e-4, batch "
        f"{g['batch_size']}, {steps} on {g['limit_images'] or 50000} training images, lr ×{preset.gamma:g} at "
        f"{', '.join(f'{m:g}' for m in (g['milestones'] or preset.milestones))} "
        f"({g['milestone_unit'] or preset.milestone_unit}s), input std {preset.input_std}, convs Kaiming-normal fan_out, "
        f"ZCA γ ~ U(0, 1), TF32 {'off' if preset.tf32 is False else 'as torch'}; {g['seeds']} seeds per cell.",
        "",
        markdown_table(pd.DataFrame(rows)),
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
    if len(crashed):
        lines += [f"{len(crashed)} cell(s) crashed (a bug, not a training outcome): " + "; ".join(crashed["cell_id"].astype(str)[:5]), ""]
    if g["baseline_study"]:
        lines += _schedule_section(results, g, out_dir)
        lines += [f"(Here the two studies differ in the layer — preset `{preset.name}` against `{g['baseline_study']}`'s — "
                  "and both columns count this toolkit's outcome, the first failure event of any kind.)", ""]
    lines += ["### Remaining differences from the authors' code", "",
              markdown_table(pd.DataFrame(PAPER_DEVIATIONS, columns=["item", "authors' code", "this preset"])), ""]
    if fit is not None:
        lines += [f"Link (early diagnostics → failure of any kind): Brier in-sample {fit['brier']:.4f}, 5-fold CV "
                  f"{fit['brier_cv']:.4f}, base rate {fit['brier_base']:.4f}, cell alone (leave-one-out) "
                  f"{fit['brier_cell']:.4f}; n = {fit['n']}.", ""]
    return "\n".join(lines)
