"""The gap_probability report: pooled counts with Wilson 95% intervals (the shared ``_stats``),
the probability figures, one table per event, the findings, and the random-matrix prediction
against the measurement."""

from __future__ import annotations

import decimal
import math
import pathlib

import numpy as np
import pandas as pd

from ..._markdown import markdown_table
from .. import _figures, _stats


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, d, event, τ): pooled count, p̂, Wilson interval, and the means over the pooled
    matrices (predictions, λ_max, λ_min, eigenvalue, n_at_eps): per-chunk means weighted by chunk size."""
    df = results.copy()
    for col in ("lam_mean", "n_at_eps"):  # absent from results of older code
        if col not in df:
            df[col] = np.nan
    # per-chunk means weighted by the chunk's matrices: the pooled mean, also where chunks differ in size
    means = {"pred_mp": "pred_mp", "pred_unfold": "pred_unfold", "lam_max": "lam_max_mean", "lam_min": "lam_min_mean",
             "lam_mean": "lam_mean", "n_at_eps": "n_at_eps"}
    for name, col in means.items():
        df[f"w_{name}"] = df[col] * df["n"]
    g = df.groupby(["source", "d", "event", "tau"], as_index=False).agg(
        count=("count", "sum"), n=("n", "sum"), **{f"w_{name}": (f"w_{name}", lambda s: s.sum(min_count=1)) for name in means},
        chunk_median_min_gap=("median_min_gap", "median"), n_chunks=("chunk", "nunique"),
        n_samples=("n_samples", "first"))
    g["p"] = g["count"] / g["n"]
    g["lo"], g["hi"] = _stats.wilson(g["count"], g["n"])
    for name in means:
        g[name] = g[f"w_{name}"] / g["n"]
    return g.drop(columns=[f"w_{name}" for name in means])


def rank_deficient(grid: dict, source: str, d: int) -> bool:
    """True where the pre-ReLU CIFAR covariance has rank ≤ 27 < d: P(min gap < τ) = 1 by construction."""
    from . import PATCH

    return source == "cifar10" and not grid["cifar_relu"] and int(d) > PATCH


def mark_rank_deficient(agg: pd.DataFrame, grid: dict) -> pd.DataFrame:
    """``agg`` with a boolean column ``rank_deficient`` (:func:`rank_deficient` per row), which every
    part of the report reads."""
    flags = [rank_deficient(grid, source, d) for source, d in zip(agg["source"], agg["d"])]
    return agg.assign(rank_deficient=np.array(flags, dtype=bool))


# ---------------------------------------------------------------- number formatting
# the outward rounding (lower bound down, upper bound up) is ``_stats``'s, shared with the ZCA studies


def interval_text(p: float, lo: float, hi: float, sig: int = 2) -> str:
    """p̂ [lo, hi] with the interval rounded outward: the printed interval contains the computed one.
    p̂ is rounded to nearest, with sig + 1 significant digits of min(p̂, 1 − p̂)."""
    return f"{_stats.round_text(p, sig + 1, decimal.ROUND_HALF_EVEN)} [{_stats.round_down(lo, sig)}, {_stats.round_up(hi, sig)}]"


def _cifar_note(grid):
    relu = "then ReLU" if grid["cifar_relu"] else "no ReLU (the conv output, which the authors' whitening layer sees)"
    norm = "scaled to trace/d = 1, " if grid["cifar_trace_norm"] else "not trace-normalised, "
    return (f"CIFAR-10: mini-batches of {grid['cifar_batch']} training images drawn without replacement from "
            f"{grid['cifar_pool']} (pixels /255, the authors' per-channel Normalize), ONE seeded 3×3 conv with "
            f"{grid['cifar_channels']} output channels (Kaiming-normal, fan_out, zero padding, no bias) of which "
            f"the first d are kept, {relu}; n = {grid['cifar_batch'] * 1024} feature vectors per covariance, "
            f"centred, {norm}+ {grid['zca_eps']:g}·I.")


# ---------------------------------------------------------------- figures


def _probability_panel(ax, sub: pd.DataFrame, colors: dict) -> None:
    for tau, color in colors.items():
        for source, style in (("gaussian", "-o"), ("cifar10", "--s")):
            s = sub[(sub["tau"] == tau) & (sub["source"] == source)].sort_values("d")
            if s.empty:
                continue
            floor = 0.5 / s["n"]
            p = np.maximum(s["p"], floor)
            yerr = [np.clip(p - np.maximum(s["lo"], floor * 0.5), 0, None), np.clip(np.maximum(s["hi"], floor) - p, 0, None)]
            ax.errorbar(s["d"], p, yerr=yerr,
                        fmt=style, color=color, ms=4, capsize=2, label=f"{source}, τ={tau:g}")
            rd = s["rank_deficient"].to_numpy()
            if rd.any():  # P = 1 by construction (rank ≤ 27): drawn white-filled
                ax.plot(s["d"][rd], p[rd], "s", ms=6, mfc="white", mec=color)
            if source == "gaussian":
                ax.plot(s["d"], np.maximum(s["pred_mp"], 1e-7), ":", color=color, lw=2,
                        label=f"Wigner surmise + MP, τ={tau:g}")


def _probability_figure(plt, agg: pd.DataFrame, out_dir: pathlib.Path) -> str:
    colors = dict(zip(sorted(agg["tau"].unique(), reverse=True), plt.cm.viridis(np.linspace(0, 0.85, agg["tau"].nunique()))))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, kind in zip(axes, ("abs", "rel")):
        _probability_panel(ax, agg[agg["event"] == kind], colors)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 1.5)
        ax.set_xlabel("dimension d")
        ax.set_title("min gap < τ" if kind == "abs" else "min gap / λ_max < τ")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("probability (zero counts drawn at ½/N)")
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    _figures.save(fig, out_dir / "gap_probability.png")
    return "gap_probability.png"


def _k_figure(plt, agg: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sub = agg[agg["event"] == "K"]
    for source, style in (("gaussian", "-o"), ("cifar10", "--s")):
        s = sub[sub["source"] == source].sort_values("d")
        if s.empty:
            continue
        ax.errorbar(s["d"], s["p"], yerr=[np.clip(s["p"] - s["lo"], 0, None), np.clip(s["hi"] - s["p"], 0, None)], fmt=style,
                    capsize=2, label=source)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimension d")
    ax.set_ylabel(f"P(max |K̃| > {grid['k_threshold']:g})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _figures.save(fig, out_dir / "k_exceed.png")
    return "k_exceed.png"


def _plot(agg: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> list[str]:
    plt = _figures.pyplot()
    return [_probability_figure(plt, agg, out_dir), _k_figure(plt, agg, grid, out_dir)]


# ---------------------------------------------------------------- text


def _cell_text(r) -> str:
    return interval_text(r.p, r.lo, r.hi)


def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    from . import validate

    grid = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = mark_rank_deficient(aggregate(results), grid)
    figs = _plot(agg, grid, out_dir)
    lines = _intro(grid, figs, agg["rank_deficient"].any())
    lines += _deviations(grid)
    lines += _event_tables(agg)
    lines += _rank_section(agg, grid)
    lines += _k_section(agg, grid, figs)
    lines += ["### Findings", ""]
    lines += [_finding(agg, source, grid) for source in agg["source"].unique()]
    lines += _prediction_section(agg)
    return "\n".join(lines) + "\n"


def _intro(grid: dict, figs: list[str], any_rank_deficient: bool) -> list[str]:
    lines = [
        "## Probability of a small eigenvalue gap (Wang, Dang, Hu, Fua & Salzmann, \"Robust Differentiable SVD\", "
        "TPAMI 2021, Fig. 1(a))",
        "",
        f"Each point pools N covariance matrices (N = {grid['n_matrices']} unless listed below); entries are "
        "p̂ [Wilson 95% interval], the interval rounded outward (lower bound down, upper bound up), so the printed "
        "interval always contains the computed one. Gaussian: C = XᵀX/n, X n×d standard normal, "
        f"n = {grid['n_samples']} ({grid['gaussian_model']} model, see the module docstring); {_cifar_note(grid)}",
        "",
    ]
    if grid["reduced"]:
        lines.append("Reduced sample sizes (time budget): " + ", ".join(f"{k}: {v}" for k, v in grid["reduced"].items()) + ".")
        lines.append("")
    hollow = " White-filled squares: CIFAR-10 points with d > 27, where P = 1 by construction (see below)." \
        if any_rank_deficient else ""
    return lines + [f"![gap probability]({figs[0]})", "", f"Zero counts are drawn at ½/N.{hollow}", ""]


def _deviations(grid: dict) -> list[str]:
    """The setting of the authors' public code beside this study's (the paper's text was not retrieved)."""
    code = "authors' code"
    rows = [
        ("data", "CIFAR-10 training split (the CIFAR loaders of main_imgnet.py, commented out there; the active loader is Tiny ImageNet)",
         "CIFAR-10 training split, mini-batches from a seeded subset of " + str(grid["cifar_pool"]) + " images", code),
        ("preprocessing", "ToTensor (/255), Normalize(mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)); "
         "training adds RandomCrop (padding 4) and a horizontal flip", "the same /255 and Normalize; no augmentation", code),
        ("batch size", "128 (argparse default of main_imgnet.py; its Tiny ImageNet loaders use 100)",
         f"{grid['cifar_batch']} images → n = {grid['cifar_batch'] * 1024} feature vectors", code),
        ("mini-batch sampling", "shuffled loader: an epoch visits each image once",
         "each covariance draws its images without replacement, independently of the others", code),
        ("conv", "conv1: 3×3, 3 → 64 channels, stride 1, padding 1, no bias; Kaiming-normal fan_out (ReLU gain)",
         f"one 3×3 conv, 3 → {grid['cifar_channels']} channels, the same init, one seed ({grid['seed']}) for all matrices", code),
        ("d channels", "a whitening group is a diagonal block of one conv's covariance (torch.chunk): the first group is the "
         "first C/G channels; C = 64 bounds d", f"the first d of the {grid['cifar_channels']} channels (nested across d); "
         "d > 64 goes beyond the authors' conv1 width", code),
        ("conv weights", "whatever the training stage when the covariance is taken (not stated for Fig. 1(a) in the code)",
         "untrained (initialisation)", code),
        ("ReLU", "the whitening layer replaces bn1, before the ReLU", "before ReLU" if not grid["cifar_relu"] else "after ReLU (cifar_relu = true)", code),
        ("covariance", "channel-centred, xxᵀ/(N·H·W)", "the same", code),
        ("ε", "+ε·I; ε = 1e-2 in ZCANormPIv2 (the class main_imgnet.py selects); 1e-4, 1e-5, 1e-10 in other classes",
         f"+{grid['zca_eps']:g}·I", code),
        ("trace normalisation", "none", "trace/d = 1 before +εI" if grid["cifar_trace_norm"] else "none", code),
        ("eigen-solver", "torch.svd of the covariance, float32 tensors during training", "numpy.linalg.eigvalsh, float64", code),
        ("number of matrices, τ values", "not in the code", f"N = {grid['n_matrices']} per d; τ ∈ {{{', '.join(f'{t:g}' for t in grid['taus'])}}}", "—"),
        ("Gaussian reference", "not in the code", f"Wishart XᵀX/n, n = {grid['n_samples']}", "—"),
    ]
    table = pd.DataFrame(rows, columns=["aspect", "paper / authors' code", "this study", "source of the left column"])
    return ["### Deviations from the authors' setting", "",
            "The paper's text could not be retrieved here; every fact in the second column comes from the authors' public "
            "code (github.com/WeiWangTrento/Robust-Differentiable-SVD: models/resnet.py, ZCANorm.py, torch_utils.py, "
            "main_imgnet.py), which has no script for Fig. 1(a).", "",
            markdown_table(table), "",
            "Paper's own values: neither the authors' code nor any text retrievable here gives the numbers behind "
            "Fig. 1(a), so no column of paper values is shown and no point is compared with the paper.", ""]


def _event_tables(agg: pd.DataFrame) -> list[str]:
    lines = []
    for kind, title in (("abs", "absolute gap min(λ_{i+1} − λ_i) < τ"), ("rel", "relative gap min gap / λ_max < τ")):
        sub = agg[agg["event"] == kind]
        lines += [f"### {title}", ""]
        table = []
        for (source, d), s in sub.groupby(["source", "d"]):
            row = {"source": source, "d": d, "N": int(s["n"].iloc[0])}
            for r in s.sort_values("tau", ascending=False).itertuples():
                row[f"τ={r.tau:g}"] = _cell_text(r)
            row["note"] = "rank ≤ 27 < d: 1 by construction" if s["rank_deficient"].iloc[0] else ""
            table.append(row)
        lines += [markdown_table(pd.DataFrame(table)), ""]
    return lines


def _rank_section(agg: pd.DataFrame, grid: dict) -> list[str]:
    if not agg["rank_deficient"].any():
        return []
    s = agg[(agg["source"] == "cifar10") & (agg["event"] == "K")].sort_values("d")
    table = pd.DataFrame([{"d": int(r.d), "d − 27 (if > 0)": max(int(r.d) - 27, 0),
                           "mean count of eigenvalues within 1e-9·λ_max of ε": f"{r.n_at_eps:.6g}",
                           "mean λ_min − ε": f"{r.lam_min - grid['zca_eps']:.3g}"} for r in s.itertuples()])
    big = [int(d) for d in s.loc[s["rank_deficient"], "d"]]
    return ["### Rank of the pre-ReLU CIFAR-10 features: P = 1 by construction for d > 27", "",
            "A 3×3 conv over 3 input channels maps each 27-dim input patch linearly to d features, so the d×d "
            "covariance of the conv output has rank ≤ 27. For d > 27 at least d − 27 eigenvalues of C + εI equal ε "
            "up to rounding; the minimum gap is then a rounding residue (≈ 0), below every τ. P(min gap < τ) = 1 and "
            "P(max abs(K̃) > threshold) = 1 there by construction, whatever the data"
            + (f" (here d = {', '.join(map(str, big))})" if big else "")
            + ": these points measure the rank bound, not the eigenvalue statistics of CIFAR-10 features, and are left "
            "out of the findings and of the comparison with the random-matrix prediction. The same bound holds for the "
            "authors' conv1 (64 output channels from 3 × 3 × 3 = 27 inputs) whenever a whitening group has more than 27 "
            "channels. The count of eigenvalues at ε, measured on every matrix:", "",
            markdown_table(table), ""]


def _k_section(agg: pd.DataFrame, grid: dict, figs: list[str]) -> list[str]:
    sub = agg[agg["event"] == "K"]
    table = pd.DataFrame([{"source": r.source, "d": r.d, "N": r.n, "P": _cell_text(r),
                           "note": "1 by construction" if r.rank_deficient else ""} for r in sub.itertuples()])
    return [f"### P(max abs(K̃_ij) > {grid['k_threshold']:g}) (identical to the absolute event at τ = {1 / grid['k_threshold']:g})", "",
            f"![K exceed]({figs[1]})", "", markdown_table(table), ""]


def _finding(agg: pd.DataFrame, source: str, grid: dict) -> str:
    s = agg[(agg["source"] == source) & (agg["event"] == "abs")]
    some_rank_deficient = s["rank_deficient"].any()
    s = s[~s["rank_deficient"]]
    if s.empty:
        return f"- {source}: no point outside the rank-deficient range."
    tmax = s["tau"].max()
    big = s[s["tau"] == tmax].sort_values("d")
    first = big[big["p"] >= 0.5]
    dmax = int(big["d"].max())
    at = f"first reaches ≥ 50% at d = {int(first['d'].iloc[0])}" if not first.empty else f"stays below 50% up to d = {dmax}"
    kk = agg[(agg["source"] == source) & (agg["event"] == "K") & (agg["d"] == dmax)].iloc[0]
    lo_r, hi_r = big.iloc[0], big.iloc[-1]
    scope = f" (d ≤ {dmax}: larger d are rank-deficient, see above)" if some_rank_deficient else ""
    sizes = f"N = {int(hi_r.n)} each" if lo_r.n == hi_r.n else f"N = {int(lo_r.n)} and {int(hi_r.n)}"  # `reduced` points
    return (f"- {source}{scope}: P(min gap < {tmax:g}) is {interval_text(lo_r.p, lo_r.lo, lo_r.hi)} at d = {int(lo_r.d)} and "
            f"{interval_text(hi_r.p, hi_r.lo, hi_r.hi)} at d = {int(hi_r.d)} ({sizes}) and {at}; "
            f"P(max abs(K̃) > {grid['k_threshold']:g}) is {interval_text(kk.p, kk.lo, kk.hi)} at d = {dmax}. At d = {dmax}: "
            f"mean λ_min {kk.lam_min:.3g}, mean λ_max {kk.lam_max:.3g}, mean eigenvalue {kk.lam_mean:.3g}; median over the "
            f"{int(kk.n_chunks)} chunks of the chunk medians of the min gap: {kk.chunk_median_min_gap:.3g} "
            "(the pooled median is not stored).")


# ---------------------------------------------------------------- prediction against measurement


def informative(s: pd.DataFrame, col: str) -> pd.Series:
    """Points that can tell a prediction from another: not rank-deficient (:func:`mark_rank_deficient`),
    a prediction, and neither (p̂ = 0 and prediction < 3/N: rule of three) nor (p̂ = 1 and
    1 − prediction < 3/N)."""
    both0 = (s["count"] == 0) & (s[col] < 3 / s["n"])
    both1 = (s["count"] == s["n"]) & (1 - s[col] < 3 / s["n"])
    return s[col].notna() & ~both0 & ~both1 & ~s["rank_deficient"]


def chance_range(n: int, coverage: float = 0.95) -> tuple[float, int, int]:
    """Expected count and central 95% range of Binomial(n, coverage): the number of intervals that would
    contain a prediction equal to the true probability, were the n points independent."""
    from scipy import stats

    if n == 0:
        return 0.0, 0, 0
    b = stats.binom(n, coverage)
    return coverage * n, int(b.ppf(0.025)), int(b.ppf(0.975))


def _comparison(agg: pd.DataFrame) -> pd.DataFrame:
    comp = []
    for (source, kind, tau), s in agg[agg["event"] != "K"].groupby(["source", "event", "tau"]):
        for col, label in (("pred_mp", "MP unfolding"), ("pred_unfold", "empirical unfolding")):
            if s[col].isna().all():
                continue
            inf = informative(s, col)
            if not inf.any():
                continue
            ok = inf & (s[col] >= s["lo"]) & (s[col] <= s["hi"])
            ratio = (s["p"] / s[col]).where(inf & (s["count"] >= 20))
            comp.append({"source": source, "event": kind, "τ": tau, "unfolding": label,
                         "inside / informative": f"{int(ok.sum())}/{int(inf.sum())}",
                         "informative d": ",".join(str(int(d)) for d in s.loc[inf, "d"]) or "—",
                         "d inside": ",".join(str(int(d)) for d in s.loc[ok, "d"]) or "—",
                         "measured/predicted (≥20 events)": f"{ratio.min():.2f}–{ratio.max():.2f}" if ratio.notna().any() else "—"})
    return pd.DataFrame(comp)


def _prediction_section(agg: pd.DataFrame) -> list[str]:
    lines = ["", "### Random-matrix prediction (Wigner surmise, P(s < x) ≈ (π/4)x², unfolded)", "",
             "A point is informative unless p̂ = 0 and the prediction is below 3/N (rule of three), or p̂ = 1 and the "
             "prediction is above 1 − 3/N, or it is a rank-deficient CIFAR-10 point. \"Inside\" = the prediction lies in "
             "the Wilson 95% interval of the measurement. (source, event, τ, unfolding) rows without an informative point are "
             "omitted.", ""]
    comp_df = _comparison(agg)
    if comp_df.empty:
        return lines
    lines += [markdown_table(comp_df), ""]
    for label in ("MP unfolding", "empirical unfolding"):
        c = comp_df[comp_df["unfolding"] == label]
        if c.empty:
            continue
        k = sum(int(x.split("/")[0]) for x in c["inside / informative"])
        n = sum(int(x.split("/")[1]) for x in c["inside / informative"])
        mean, lo, hi = chance_range(n)
        lines.append(f"- {label}: the prediction is inside the 95% interval at {k} of {n} informative (source, event, τ, d) "
                     f"points. Were the prediction the true probability at every point and the points independent, the "
                     f"count would be Binomial({n}, 0.95): mean {mean:.1f}, central 95% range {lo}–{hi}. The points are not "
                     "independent (the events and τ of one d share their matrices), so this range is a reference only.")
    lines += _gaussian_ratio_line(agg)
    return lines


def _gaussian_ratio_line(agg: pd.DataFrame) -> list[str]:
    """Measured/MP-predicted over the Gaussian absolute-gap points with ≥ 20 events that are informative
    (:func:`informative`); those left out as uninformative are counted, not used."""
    g = agg[(agg["source"] == "gaussian") & (agg["event"] == "abs") & (agg["count"] >= 20) & agg["pred_mp"].notna()]
    if g.empty:
        return []
    inf = informative(g, "pred_mp")
    dropped = int((~inf).sum())
    left_out = (f" ({dropped} more with ≥ 20 events are uninformative by the rule above and left out)"
                if dropped else "")
    g = g[inf]
    if g.empty:
        return [f"- Gaussian, absolute gap: none of the {dropped} points with ≥ 20 events is informative by the rule "
                "above, so no measured/MP-predicted ratio is stated."]
    r = g["p"] / g["pred_mp"]
    worst = g.loc[(r - 1).abs().idxmax()]
    return [f"- Gaussian, absolute gap, the {len(g)} informative points with ≥ 20 events{left_out}: measured/MP-predicted "
            f"ranges {r.min():.2f}–{r.max():.2f}; the largest deviation from 1 is at d = {int(worst['d'])}, "
            f"τ = {worst['tau']:g}, {worst['p'] / worst['pred_mp']:.2f} (Wilson 95% interval of p̂ over the prediction "
            f"{math.floor(100 * worst['lo'] / worst['pred_mp']) / 100:.2f}–"  # rounded outward
            f"{math.ceil(100 * worst['hi'] / worst['pred_mp']) / 100:.2f}, n = {int(worst['n'])} matrices). "
            "Its cause was not tested here."]
