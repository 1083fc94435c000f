"""The projector_rank report: Lemma 1 tables, Lemma 2 violations with the distance histogram, and
the J₂ descent (curves, final values, the consequences of Lemma 2 checked step by step)."""

from __future__ import annotations

import decimal
import math
import pathlib

import numpy as np
import pandas as pd

from ..._markdown import markdown_table
from .. import _figures


def bound_text(x: float, up: bool, sig: int = 2) -> str:
    """The positive number ``x`` to ``sig`` significant digits, rounded up (``up``: the text is ≥ x) or down
    (≤ x), so that a bound printed after "at most", "≥" or "or more" stays a bound. Starts from the shortest
    decimal that reads back as ``x`` (``repr``), so 0.68 prints as 0.68 both ways."""
    value = decimal.Decimal(repr(float(x)))
    step = decimal.Decimal(1).scaleb(value.adjusted() - sig + 1)
    rounded = value.quantize(step, rounding=decimal.ROUND_CEILING if up else decimal.ROUND_FLOOR)
    return f"{float(rounded):.{sig}g}"


def lemma2_violations(df: pd.DataFrame, tol: float = 1e-10) -> int:
    return int(((df["rank_a"] != df["rank_b"]) & (df["proj_dist"] < 1 - tol)).sum())


def descent_contradictions(df: pd.DataFrame) -> int:
    """Steps with J₂ < ½ but rank W ≠ rank Ψ (impossible by ‖Π_W − Π_Ψ‖²_F ≥ |Δrank|)."""
    return int(((df["J2"] < 0.5) & (df["rank_w"] != df["target_rank"])).sum())


def eigen_route_table(eig: pd.DataFrame) -> pd.DataFrame:
    """Per method: the function it is scored against, its errors, and the rows not scored (why) or failed."""
    out = []
    for m, s in eig.groupby("method", sort=False):
        ok = s[s["scored"].isin(["Lemma 1", "own function"])]
        skipped = s[s["scored"] == "not scored"]
        why = "; ".join(skipped["note"].unique())
        out.append({"method": m, "matrices": len(s), "scored against": ", ".join(ok["scored"].unique()) or "—",
                    "max_rel_err": ok["rel_err"].max(), "median_rel_err": ok["rel_err"].median(),
                    "max_full_rel_err": s["full_rel_err"].max(),
                    "not scored (why)": f"{len(skipped)} ({why})" if len(skipped) else "0",
                    "failed": int((s["scored"] == "failed").sum())})
    return pd.DataFrame(out)


def summary(results: pd.DataFrame) -> str:
    parts = []
    l1 = results[(results.get("part") == "lemma1") & (results.get("check") == "directional")] if "check" in results else results.iloc[:0]
    if len(l1):
        parts.append(f"Lemma 1 max rel_err {l1['rel_err'].max():.2g}")
    l2 = results[results["part"] == "lemma2"]
    if len(l2):
        parts.append(f"Lemma 2 violations {lemma2_violations(l2)}/{len(l2)} (a sanity check)")
    de = results[results["part"] == "descent"]
    if len(de):
        parts.append(f"descent: J2<1/2 with rank mismatch in {descent_contradictions(de)} steps")
    return "; ".join(parts)


def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    from . import validate

    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "error" in results:
        errors = results[results["error"].notna()]
        results = results[results["error"].isna()]
    else:
        errors = results.iloc[:0]
    md = []
    plt = _figures.pyplot()

    def part(name):
        return results[results["part"] == name] if "part" in results else results.iloc[:0]

    if not part("lemma1").empty:
        md += _lemma1_section(part("lemma1"))
    if not part("lemma2").empty:
        md += _lemma2_section(plt, part("lemma2"), out_dir)
    if not part("descent").empty:
        md += _descent_section(plt, part("descent"), g, out_dir)
    if len(errors):
        md += [f"{len(errors)} cells failed: " + ", ".join(errors["cell_id"].astype(str).unique()[:10]), ""]
    return "\n".join(md) + "\n"


# ---------------------------------------------------------------- Lemma 1


def _lemma1_section(l1: pd.DataFrame) -> list[str]:
    dirn = l1[l1["check"] == "directional"]
    md = ["## Lemma 1: ∂L/∂A = 2(I − Π)(∂L/∂Π)_sym A⁺ (Ionescu et al., ICCV 2015)", "",
          "Directional derivative along rank-preserving A(t) = (I+tX)A(I+tX)ᵀ against an mpmath 50-digit central "
          "difference; `fd64` = the same central difference in float64 (h = 1e-6).", ""]
    tab = dirn.groupby(["d", "r"]).agg(directions=("rel_err", "size"), max_rel_err=("rel_err", "max"),
                                       median_rel_err=("rel_err", "median"), max_fd64_rel_err=("fd64_rel_err", "max")).reset_index()
    md += [markdown_table(tab), ""]
    md += [f"Over {len(dirn)} (matrix, direction) checks the Lemma 1 gradient agrees with the high-precision truth to a relative "
           f"error of at most {bound_text(dirn['rel_err'].max(), up=True)} (median {dirn['rel_err'].median():.2g}); float64 finite differences reach "
           f"only {dirn['fd64_rel_err'].median():.2g} (median).", ""]
    eig = l1[l1["check"] == "eigen-route"]
    if not eig.empty:
        md += ["Registry methods (projector loss on the top-r eigenvectors, `Spec.evaluate`), each scored against the "
               "function its forward computes: sym(Lemma 1), or for an approximate forward L∘forward "
               "(`compare.iterated_truth`). `full_rel_err`: distance to sym(Lemma 1) whatever the function.", "",
               markdown_table(eigen_route_table(eig)), ""]
        t = eig.groupby("method", sort=False)
        exact = [m for m, s in t if (s["scored"] == "Lemma 1").all() and s["rel_err"].max() < 1e-8]
        own = [m for m, s in t if (s["scored"] == "own function").all() and s["rel_err"].max() < 1e-8]
        md += [f"Methods reproducing Lemma 1 to < 1e-8 on every matrix: {', '.join(exact) if exact else 'none'}.", ""]
        for m in own:
            full = eig.loc[eig["method"] == m, "full_rel_err"]
            md += [f"{m} reproduces the gradient of its own function (L∘forward) to < 1e-8 on every matrix; that gradient is "
                   f"{full.min():.2g}–{full.max():.2g} (relative) from sym(Lemma 1): its forward is not the exact "
                   "decomposition.", ""]
    return md


# ---------------------------------------------------------------- Lemma 2


def _dropped_margin(dropped_over_tol: float) -> str:
    """How close the largest dropped eigenvalue (a multiple of the rank threshold) came to being kept."""
    if not np.isfinite(dropped_over_tol) or dropped_over_tol <= 0:
        return "are exactly 0" if dropped_over_tol == 0 else "were not recorded"
    return (f"lie below it by a factor of {bound_text(1 / dropped_over_tol, up=False)} or more "
            f"(≤ {bound_text(dropped_over_tol, up=True)} × it): "
            "a threshold that much smaller would have kept some of them")


def _lemma2_section(plt, l2: pd.DataFrame, out_dir: pathlib.Path) -> list[str]:
    viol = lemma2_violations(l2)
    same = l2[l2["rank_a"] == l2["rank_b"]]
    diff = l2[l2["rank_a"] != l2["rank_b"]]
    md = ["## Lemma 2: ‖Π_A − Π_B‖₂ < 1 ⇒ rank A = rank B", "",
          f"{len(l2)} random pairs (d = {int(l2['d'].iloc[0])}); {len(diff)} with different ranks, {len(same)} with equal ranks. "
          f"Violations (different ranks and ‖Π_A − Π_B‖₂ < 1 − 1e-10): **{viol}**.", ""]
    if len(diff):
        md.append(f"- Different ranks: ‖Π_A − Π_B‖₂ ∈ [{diff['proj_dist'].min():.17g}, {diff['proj_dist'].max():.17g}].")
    if len(same):
        below = (same["proj_dist"] < 1 - 1e-10).mean()
        md.append(f"- Equal ranks: {below:.1%} of the pairs have ‖Π_A − Π_B‖₂ < 1 (median {same['proj_dist'].median():.3g}).")
    md += ["", "This is a sanity check of the computed projectors, not evidence for the lemma: two orthogonal projectors of "
           "different ranks are always exactly 1 apart in the 2-norm (a unit vector in the range of the larger one and the "
           "kernel of the smaller exists and is mapped to itself), whatever rank rule picks them, so a violation could only "
           "come from eigenvectors that are not orthonormal. The kept eigenvalues lie far above the rank threshold "
           f"d·eps·λ_max (≥ {bound_text(l2['kept_over_tol'].min(), up=False)} × it); the dropped ones, the rounding of eigenvalues built "
           f"as 0, {_dropped_margin(l2['dropped_over_tol'].max())}.", ""]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(0, 1.0001, 60)
    for label, s in (("equal ranks", same), ("different ranks", diff)):
        if len(s):
            ax.hist(s["proj_dist"], bins=bins, alpha=0.6, label=f"{label} ({len(s)})")
    ax.axvline(1, color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("‖Π_A − Π_B‖₂")
    ax.set_ylabel("pairs")
    ax.legend()
    fig.tight_layout()
    _figures.save(fig, out_dir / "lemma2_hist.png")
    return md + ["![Lemma 2 distribution](lemma2_hist.png)", ""]


# ---------------------------------------------------------------- descent


def _descent_section(plt, de: pd.DataFrame, g: dict, out_dir: pathlib.Path) -> list[str]:
    d, r = int(de["d"].iloc[0]), int(de["target_rank"].iloc[0])
    md = [f"## Gradient descent on J₂ = ½‖Π_W − Π_Ψ‖²_F, W = FFᵀ (d = {d}, rank Ψ = {r}, lr = {g['descent_lr']:g}, "
          f"{g['descent_steps']} steps)", "",
          "Π_W from `stabkit.torch.eigh(W, method)` (eigenvectors of the nonzero eigenvalues); `lemma1` = Π_W = WW⁺ with the "
          "Lemma 1 gradient.", ""]
    _descent_figure(plt, de, r, out_dir)
    md += ["![J2 and rank per step](descent.png)", ""]
    tab = _descent_table(de)
    md += [markdown_table(tab), ""]
    md += _descent_findings(de, tab, r)
    md.append("")
    return md


def _descent_figure(plt, de: pd.DataFrame, r: int, out_dir: pathlib.Path) -> None:
    ks = sorted(de["k"].unique())
    fig, axes = plt.subplots(2, len(ks), figsize=(4.5 * len(ks), 7), sharex=True, squeeze=False)
    de = _with_seed(de)
    colours = {m: f"C{i % 10}" for i, m in enumerate(de["method"].unique())}
    for j, k in enumerate(ks):
        for (method, seed), s in de[de["k"] == k].groupby(["method", "seed"], sort=False):  # one line per trajectory
            s = s.sort_values("step")
            label = method if seed == de.loc[de["method"] == method, "seed"].min() else None  # one legend entry
            axes[0, j].plot(s["step"], np.maximum(s["J2"], 1e-16), label=label, color=colours[method], lw=1)
            axes[1, j].plot(s["step"], s["rank_w"], label=label, color=colours[method], lw=1)
        axes[0, j].axhline(0.5, color="k", ls="--", lw=0.8)
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"F is d×{int(k)}")
        axes[1, j].axhline(r, color="k", ls="--", lw=0.8)
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("J₂")
    axes[1, 0].set_ylabel("rank W")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    _figures.save(fig, out_dir / "descent.png")


def _with_seed(de: pd.DataFrame) -> pd.DataFrame:
    """``de`` with a seed on every row (-1 where none was logged: one trajectory per method × k)."""
    return de.assign(seed=de["seed"].fillna(-1) if "seed" in de else -1)


def _seeds(de: pd.DataFrame) -> list:
    return sorted(de["seed"].dropna().unique()) if "seed" in de and de["seed"].notna().any() else [None]


def _descent_table(de: pd.DataFrame) -> pd.DataFrame:
    """One row per trajectory (method, k, seed): its last logged step. A seed column only when there are several."""
    n_seeds = len(_seeds(de))
    de = _with_seed(de)
    keys = ["method", "k", "seed"]
    last = de.sort_values("step").groupby(keys, sort=False).tail(1)
    first_below = de[de["J2"] < 0.5].groupby(keys)["step"].min()
    tab = []
    for row in last.itertuples():
        tab.append({"method": row.method, "k": row.k, "seed": row.seed, "steps run": row.step, "final J₂": row.J2,
                    "final rank W": row.rank_w,
                    "first step J₂<½": first_below.get((row.method, row.k, row.seed), math.nan),
                    "diverged (NaN/Inf)": not row.finite})
    tab = pd.DataFrame(tab).sort_values(["k", "method", "seed"], kind="stable")
    return tab if n_seeds > 1 else tab.drop(columns="seed")


def _per_seed(tab: pd.DataFrame, mask: pd.Series, n: int) -> str:
    """'m1, m2 (k of n seeds, Clopper–Pearson 95% interval lo–hi), …' for the methods where ``mask`` holds in some seed."""
    from .._stats import clopper_pearson

    hits = tab[mask].groupby("method", sort=False).size()
    if hits.empty:
        return ""
    parts = []
    for c in sorted(set(hits), reverse=True):
        lo, hi = clopper_pearson(c, n)
        parts.append(f"{', '.join(m for m in hits.index if hits[m] == c)} ({c} of {n} seed{'s' if n > 1 else ''}; "
                     f"Clopper–Pearson 95% interval of the per-seed rate {lo:.2g}–{hi:.2g})")
    return "; ".join(parts)


def _descent_findings(de: pd.DataFrame, tab: pd.DataFrame, r: int) -> list[str]:
    bad = descent_contradictions(de)
    matched = tab[tab["k"] == r]
    floor = tab[tab["k"] != r]
    n = len(_seeds(de))
    n_traj = len(tab)
    seeds = f"n = {n} seed{'s' if n > 1 else ''}, one trajectory per method × k × seed"
    md = [f"- Steps with J₂ < ½ but rank W ≠ rank Ψ: **{bad}** of {len(de)} logged steps, from {n_traj} trajectories "
          f"({tab['method'].nunique()} methods × {tab['k'].nunique()} values of k, {seeds}); the steps of one "
          "trajectory are not independent samples.",
          f"- With k = rank Ψ = {r} ({seeds}), the final J₂ is below 1e-4 for: "
          f"{_per_seed(matched, matched['final J₂'] < 1e-4, n) or 'no method'}; "
          f"diverged: {_per_seed(matched, matched['diverged (NaN/Inf)'], n) or 'none'}."]
    wrong = de[de["proj_rank"] != de["rank_w"]].groupby("method")["step"].size()
    if len(wrong):
        md.append("- Π_W built from a number of eigenvectors different from rank W (the method's forward did not "
                  "resolve the zero eigenvalues): " + ", ".join(f"{m} in {c} steps" for m, c in wrong.items()) + ".")
    else:
        md.append("- Every method's forward resolved the zero eigenvalues: Π_W always used rank W eigenvectors.")
    if len(floor):
        md.append(f"- With k ≠ {r} the smallest J₂ reached is {de[de['k'] != r]['J2'].min():.4g} (≥ ½·|rank W − rank Ψ|: for orthogonal "
                  "projectors ‖Π_W − Π_Ψ‖²_F = rank W + rank Ψ − 2 tr(Π_WΠ_Ψ) ≥ |rank W − rank Ψ|, a trace identity); "
                  f"rank W stayed equal to k in {int((de[de['k'] != r]['rank_w'] == de[de['k'] != r]['k']).mean() * 100)}% of those steps.")
    return md
