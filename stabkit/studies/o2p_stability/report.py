"""The o2p_stability report: a reading generated from the data (O2P routes, then the principal
eigenvector), tables of median angles, and two figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ... import methods
from ..._markdown import markdown_table
from ...validation import DTYPE_NAMES
from .. import _figures
from .._checks import family_label, variant_labels

#: The papers' methods whose error is a truncation (power-iteration steps, Taylor terms): the
#: reading says so where their worst angle is as large in float64 as in float32 (see SAME_IN_FLOAT64).
TRUNCATING = ("PI", "SVD-PI", "SVD-Taylor")
#: "As large in float64 as in float32": the float64 worst angle is at least this fraction of the
#: float32 one. An error from rounding would shrink by about eps(float64)/eps(float32) ≈ 1.9e-9.
SAME_IN_FLOAT64 = 0.5
#: The principal vector's exact gradient is called well conditioned at a dtype with machine epsilon u
#: where ‖A‖₂/(λ₁ − λ₂) ≤ u^(−1/2): rounding A (relative size u) then moves the gradient by about
#: u·‖A‖₂/(λ₁ − λ₂) ≤ √u relative (first order), at most half the dtype's digits.
WELL_CONDITIONED_EXPONENT = -0.5
#: The columns that identify the principal-vector part's input: A, B, w depend on (spectrum variant,
#: d, seed) only, not on ε, yet every ε cell recomputes that part.
PC_MATRIX = ["variant", "d", "seed"]


def _med(s):
    """Median angle with non-finite gradients counted as +∞."""
    return float(np.median(s.fillna(np.inf))) if len(s) else math.nan


def report(results: pd.DataFrame, grid: dict, out_dir: Path) -> str:
    from . import DECLARATIVE, validate

    plt = _figures.pyplot()
    out_dir = Path(out_dir)
    df = results.copy()
    if "part" not in df:
        return "No result rows.\n"
    df = df[df["part"].notna()]
    df["variant"] = variant_labels(df)
    df["finite"] = df["finite"].astype(bool)
    full = validate(grid)
    order = [family_label(f) for f in full["families"]]
    pc_order = [m for m in full["pc_methods"] if m not in DECLARATIVE]
    lines = [f"{df['cell_id'].nunique()} cells, {len(df)} rows. Angles: degrees between a gradient and the "
             "mpmath truth (computed on the same rounded input); a NaN/Inf gradient counts as +∞ in medians.\n"]
    o2p = df[df["part"] == "o2p"]
    pc = df[df["part"] == "pc"]
    lines.append("## Reading\n")
    for dt in sorted(o2p["dtype"].unique()):
        lines += _o2p_reading(o2p[o2p["dtype"] == dt], dt)
    if len(o2p):
        lines.append("- On clustered, degenerate and rank-deficient F the SVD and EIG routes' angles are set by the "
                     "eigensolver's rounding inside the clusters, which moves with the LAPACK build and the CPU "
                     "(tests/test_quickstart_reproducible.py): their counts and medians above hold for the machine "
                     "in the header, not for every machine.")
    if len(pc):
        lines += _pc_reading(pc, DECLARATIVE, pc_order)
    lines.append("")
    lines += _o2p_tables(o2p, order)
    if len(pc):
        lines += _pc_tables(pc, order, full["pc_methods"])
    lines += _o2p_figure(plt, o2p, out_dir)
    if len(pc):
        lines += _pc_figure(plt, pc, order, full["pc_methods"], out_dir)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading


def _o2p_reading(sub: pd.DataFrame, dt: str) -> list[str]:
    from . import ROUTES

    fin = sub.groupby("method")["finite"].mean()
    med = sub.groupby("method")["angle_deg"].apply(_med)
    lines = [f"- O2P, {dt}: the SVD route (Prop. 1 + 3) is finite in {fin.get('svd', math.nan):.0%} of cells "
             f"with median angle {med.get('svd', math.nan):.3g}°, the EIG route (Prop. 2 + 4) in "
             f"{fin.get('eig', math.nan):.0%} with median {med.get('eig', math.nan):.3g}°"
             + (f", SVD-DK (cancellation-free divided differences) in {fin['svd-dk']:.0%} with median "
                f"{med['svd-dk']:.3g}°." if "svd-dk" in fin.index else ".")]
    paired = sub.pivot_table(index=["cell_id"], columns="method", values="angle_deg", aggfunc="first")
    if {"svd", "eig"} <= set(paired.columns):
        p = paired.fillna(np.inf)
        better = int((p["svd"] < p["eig"]).sum())
        worse = int((p["svd"] > p["eig"]).sum())
        lines.append(f"  Cell by cell the SVD route is closer to the truth in {better} cells and farther in "
                     f"{worse} (of {len(p)}).")
    for fam in ("cluster(delta=1e-12)", "degenerate", "rank_deficient"):
        s = sub[sub["variant"] == fam]
        if len(s):
            m = s.groupby("method")["angle_deg"].apply(_med)
            lines.append(f"  On {fam}: " + ", ".join(f"{r} median {m[r]:.3g}°" for r in ROUTES if r in m.index) + ".")
    unit = float(np.finfo(dt).eps)
    ill = sorted(e for e in sub["eps"].unique() if e < 10 * unit)
    if ill:
        lines.append(f"  ε = {', '.join(f'{e:g}' for e in ill)} is below 10·eps({dt}) = {10 * unit:.2g} (‖F‖ ≈ 1): "
                     "on rank-deficient F the log's argument is then resolved only to O(1) relative accuracy "
                     "at this precision, so no route can be accurate there.")
    return lines


def pc_matrices(pc: pd.DataFrame) -> pd.DataFrame:
    """The principal-vector rows with the ε duplication dropped: one row per (matrix, dtype, method),
    matrix = PC_MATRIX. Its angle is the largest over the ε cells (NaN/Inf counted as +∞), finite
    only if finite in all of them (they are the same computation, so these agree in practice)."""
    agg = {"angle_deg": ("angle_deg", "max"), "finite": ("finite", "all"), "top_gap": ("top_gap", "first")}
    for col, how in (("exact_ties", "max"), ("a_norm", "first")):
        if col in pc:
            agg[col] = (col, how)
    return (pc.assign(angle_deg=pc["angle_deg"].fillna(np.inf))
            .groupby([*PC_MATRIX, "dtype", "method"], as_index=False, sort=False).agg(**agg))


def _gap_reading(mat: pd.DataFrame) -> str:
    gaps = mat.drop_duplicates([*PC_MATRIX, "dtype"])
    n = len(gaps.drop_duplicates(PC_MATRIX))
    text = (f"- The top gap λ₁ − λ₂ ranges over [{gaps['top_gap'].min():.3g}, {gaps['top_gap'].max():.3g}] "
            f"(n = {n} matrices)")
    a_norm = gaps["a_norm"].astype(float) if "a_norm" in gaps else pd.Series(np.nan, index=gaps.index)
    kappa = a_norm / gaps["top_gap"]
    tail = (" The worst angles below hold for that range only: smaller top gaps, where the declarative layers' "
            "iterations converge slowly, are not in this grid.")
    if not kappa.notna().all():
        return text + "; ‖A‖₂ is not known for every matrix, so its condition is not stated." + tail
    text += (f" and ‖A‖₂/(λ₁ − λ₂) over [{kappa.min():.3g}, {kappa.max():.3g}]. To first order, rounding A "
             "to a dtype with machine epsilon u moves the principal vector's exact gradient by about "
             "u·‖A‖₂/(λ₁ − λ₂) relative; taken as well conditioned where ‖A‖₂/(λ₁ − λ₂) ≤ 1/√u (at most half the "
             "digits lost)")
    over = []
    for dt in sorted(gaps["dtype"].unique()):
        bound = float(np.finfo(dt).eps) ** WELL_CONDITIONED_EXPONENT
        k = int((kappa[gaps["dtype"] == dt] > bound).sum())
        over.append((dt, bound, k, int((gaps["dtype"] == dt).sum())))
    bounds = ", ".join(f"{b:.2g} in {dt}" for dt, b, _, _ in over)
    if not any(k for _, _, k, _ in over):
        return text + f", with 1/√u = {bounds}, that gradient is well conditioned in all {n} matrices." + tail
    return (text + f", with 1/√u = {bounds}, it is not in " + ", ".join(f"{k} of {m} matrices in {dt}" for dt, _, k, m in over)
            + ": there rounding A alone can cost more than half the digits of the gradient, and the angles below "
            "include that loss." + tail)


def _pc_reading(pc: pd.DataFrame, declarative, pc_order: list) -> list[str]:
    mat = pc_matrices(pc)
    lines = [_gap_reading(mat)]
    n_eps = pc["eps"].nunique() if "eps" in pc else 1
    if n_eps > 1:
        lines.append(f"- The principal-vector part does not depend on ε, and each of the {n_eps} ε cells recomputes "
                     "it: below, each matrix is counted once.")
    for dt in sorted(mat["dtype"].unique()):
        lines += _pc_dtype_reading(mat[mat["dtype"] == dt], dt, declarative)
    worst = mat.groupby(["method", "dtype"])["angle_deg"].max().unstack()
    n = mat.groupby(["method", "dtype"]).size().unstack()
    for m in [m for m in pc_order if methods.spec(m).method.paper_name in TRUNCATING]:
        if m in worst.index and set(DTYPE_NAMES) <= set(worst.columns) and n.loc[m].notna().all():
            w32, w64 = worst.loc[m, "float32"], worst.loc[m, "float64"]
            n32, n64 = int(n.loc[m, "float32"]), int(n.loc[m, "float64"])
            text = (f"- {m}'s worst angle is {w32:.3g}° in float32 and {w64:.3g}° in float64 (over "
                    + (f"{n32} matrices each)" if n32 == n64 else f"{n32} and {n64} matrices)"))
            # the attribution compares like with like: the same number of matrices in both dtypes
            if (n32 == n64 and np.isfinite(w32) and np.isfinite(w64) and w32 > 0
                    and w64 >= SAME_IN_FLOAT64 * w32):
                text += (f": in float64 it is at least {SAME_IN_FLOAT64:g}× the float32 value, where a rounding error "
                         f"would be about {np.finfo(np.float64).eps / np.finfo(np.float32).eps:.1g}× smaller: a "
                         "truncation error of the method (power-iteration steps / Taylor terms), not rounding.")
            else:
                text += "."
            lines.append(text)
    return lines


def _pc_dtype_reading(sub: pd.DataFrame, dt: str, declarative) -> list[str]:
    """``sub``: one dtype of :func:`pc_matrices` (one row per matrix and method)."""
    lines = []
    worst = sub.groupby("method")["angle_deg"].max()
    fin = sub.groupby("method")["finite"].agg(["sum", "size"])
    decl = [m for m in declarative if m in worst.index]
    others = [m for m in worst.index if m not in decl]
    for m, bad in sub[~sub["finite"]].groupby("method"):
        tied = int((bad["exact_ties"] > 0).sum()) if "exact_ties" in bad else 0
        every = sub[sub["method"] == m]
        per = ", ".join(f"{v}: {int((bad['variant'] == v).sum())} of {int((every['variant'] == v).sum())}"
                        for v in sorted(bad["variant"].unique()))
        lines.append(f"- {m} ({dt}) returns NaN/Inf for the principal vector in {len(bad)} of {len(every)} matrices "
                     f"({per}); in {tied} of them eigh's eigenvalues hold "
                     "an exact tie, where 1/(λ_j − λ_i) = ∞ meets a zero cotangent (∞ · 0 = NaN) although "
                     "that pair does not enter the principal vector's gradient.")
    if decl:
        lines.append(f"- Principal eigenvector, {dt}: worst angle of the declarative layers " + ", ".join(
            f"{m} {worst[m]:.3g}°" for m in decl) + "; of the eigen-gradient methods " + ", ".join(
            f"{m} {worst[m]:.3g}° (finite in {int(fin.loc[m, 'sum'])} of {int(fin.loc[m, 'size'])} matrices)"
            for m in others) + ".")
    return lines


# ----------------------------------------------------------------------------- tables


def _o2p_tables(o2p: pd.DataFrame, order: list) -> list[str]:
    lines = ["## O2P: median angle (°) by spectrum, route and dtype\n"]
    for eps in sorted(o2p["eps"].unique()):
        sub = o2p[o2p["eps"] == eps]
        t = sub.pivot_table(index="variant", columns=["dtype", "method"], values="angle_deg", aggfunc=_med)
        f = sub.pivot_table(index="variant", columns=["dtype", "method"], values="finite", aggfunc="mean")
        t = t.reindex([v for v in order if v in t.index])
        f = f.reindex(t.index)
        tab = pd.DataFrame({"spectrum": t.index})
        for col in t.columns:
            tab[f"{col[0]} {col[1]} angle"] = t[col].values
            tab[f"{col[0]} {col[1]} finite"] = [f"{x:.0%}" for x in f[col].values]
        lines += [f"ε = {eps:g}:\n", markdown_table(tab), ""]
    return lines


def _pc_tables(pc: pd.DataFrame, order: list, pc_methods: list) -> list[str]:
    lines = ["## Principal eigenvector: median angle (°) by spectrum and method\n"]
    for dt in sorted(pc["dtype"].unique()):
        sub = pc[pc["dtype"] == dt]
        t = sub.pivot_table(index="variant", columns="method", values="angle_deg", aggfunc=_med)
        t = t.reindex([v for v in order if v in t.index])
        cols = [m for m in pc_methods if m in t.columns]
        tab = t[cols].reset_index().rename(columns={"variant": "spectrum"})
        lines += [f"{dt}:\n", markdown_table(tab), ""]
        tm = sub.groupby("method")["seconds"].median().reindex(cols)
        lines.append("Median seconds per gradient (forward + backward, tiny d, 1 thread): " + ", ".join(
            f"{m} {tm[m] * 1e3:.2g} ms" for m in cols) + ".\n")
    return lines


# ----------------------------------------------------------------------------- figures


def _o2p_figure(plt, o2p: pd.DataFrame, out_dir: Path) -> list[str]:
    cl = o2p[o2p["family"] == "cluster"]
    if not len(cl):
        return []
    fig, axes = plt.subplots(1, len(sorted(cl["eps"].unique())), figsize=(11, 4), squeeze=False)
    for ax, eps in zip(axes[0], sorted(cl["eps"].unique())):
        for (dt, route), s in cl[cl["eps"] == eps].groupby(["dtype", "method"]):
            m = s.groupby("delta")["angle_deg"].apply(_med)
            y = np.where(np.isfinite(m.values), np.maximum(m.values, 1e-16), np.nan)
            ax.loglog(m.index, y, marker="o", ls="-" if dt == "float64" else "--", label=f"{route} {dt}")
        ax.set_xlabel("cluster δ (eigenvalue gap of FᵀF)")
        ax.set_ylabel("median angle to truth (°)")
        ax.set_title(f"O2P gradient, ε = {eps:g}")
        ax.invert_xaxis()
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _figures.save(fig, out_dir / "o2p_angle_vs_delta.png")
    return ["![O2P angle vs cluster gap](o2p_angle_vs_delta.png)\n",
            "Missing points: the median gradient is non-finite there.\n"]


def _pc_figure(plt, pc: pd.DataFrame, order: list, pc_methods: list, out_dir: Path) -> list[str]:
    fig, ax = plt.subplots(figsize=(9, 4))
    sub = pc[pc["dtype"] == "float64"] if (pc["dtype"] == "float64").any() else pc
    t = sub.pivot_table(index="variant", columns="method", values="angle_deg", aggfunc=_med)
    t = t.reindex([v for v in order if v in t.index])
    x = np.arange(len(t.index))
    cols = [m for m in pc_methods if m in t.columns]
    width = 0.8 / max(len(cols), 1)
    for i, m in enumerate(cols):
        vals = t[m].values.astype(float)
        ax.bar(x + i * width, np.where(np.isfinite(vals), np.maximum(vals, 1e-16), 90.0), width, label=m,
               hatch=None)
    ax.set_yscale("log")
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels(t.index, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median angle (°); non-finite drawn at 90°")
    ax.set_title(f"principal-eigenvector gradient, {sub['dtype'].iloc[0]}")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    _figures.save(fig, out_dir / "pc_angles.png")
    return ["![principal-vector gradient angles](pc_angles.png)\n"]
