"""Study kind ``o2p_stability``: is DeepO2P's SVD formulation more stable than its EIG one?

Ionescu, Vantzos & Sminchisescu (ICCV 2015) observe that log(FᵀF + εI) back-propagated through
the SVD of F (Prop. 3) is more stable than through the EIG of FᵀF (Prop. 4) when eigenvalues
are close. One cell = (spectrum family variant, d, ε, seed). The cell takes C = Q diag(λ) Qᵀ from
``stabkit.spectra`` (largest λ = 1), sets F = P diag(√λ) Qᵀ (P a seeded Haar rotation, so FᵀF
has exactly the family's spectrum up to rounding), rounds F to each dtype, and scores

* part ``o2p``: ∂L/∂F for L = ⟨G, log(FᵀF + εI)⟩ by the SVD route (Prop. 1 + 3, layer
  :func:`stabkit.layers.o2p` ``route="svd"``) and the EIG route (Prop. 2 + 4, ``route="eig"``,
  analytic backward) against an mpmath truth, plus ``svd-dk`` (SVD forward, cancellation-free
  Daleckii–Krein backward; stabkit's extension, :func:`stabkit.layers.svd_dk_matrix_function`);
* part ``pc``: ∂L/∂A for the principal eigenvector y of A = C (rounded to the dtype),
  L = yᵀBy + (wᵀy)², by LESS, IED (eigh / power forward) and registry eigen-gradient methods.
  A truncating method (``pi``) computes the loss restricted to its kept pairs; this loss depends
  on the principal pair only, so while that pair is kept its function is the loss itself and the
  truth below is its truth; a cell where it drops the principal pair is recorded as an error.

Ground truth (mpmath, 50 digits, on the very float input the layer sees): for O2P, with
FᵀF + εI = Q diag(μ) Qᵀ, ∂L/∂F = 2F Q (D ∘ Qᵀ G_sym Q) Qᵀ, D_ij = (log μ_i − log μ_j)/(μ_i − μ_j)
(1/μ_i on ties) — the Daleckii–Krein formula; for the principal vector, ∂L/∂A = sym(v yᵀ),
v = Σ_{j≠1} q_j q_jᵀ ∂L/∂y / (λ_1 − λ_j) (the implicit-function result, see :mod:`stabkit.layers.ied`).

Grid keys: ``families`` (names or ``{family="cluster", delta=1e-8}`` tables), ``d``, ``eps``
(O2P's ε), ``dtypes``, ``pc_methods``, ``seeds``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import with_defaults
from ..gradient_accuracy import _as_list, _choice_list, _family_entry, _int_list, _no_duplicates, family_label

DELTAS = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12)
PC_METHODS = ("less", "ied", "ied-power", "analytic", "pi", "taylor", "clip", "torch")
DTYPES = ("float32", "float64")
ROUTES = ("svd", "eig", "svd-dk")
DPS = 50

GRID_DEFAULTS: dict = {
    "families": [{"family": "cluster", "delta": d} for d in DELTAS] + ["degenerate", "rank_deficient"],
    "d": [8, 32],
    "eps": [1e-3, 1e-8],
    "dtypes": list(DTYPES),
    "pc_methods": list(PC_METHODS),
    "seeds": [0, 1, 2],
}


# ----------------------------------------------------------------------------- grid


def validate(grid: dict) -> dict:
    full = with_defaults("o2p_stability", grid, GRID_DEFAULTS)
    families = [_family_entry(f) for f in _as_list("families", full["families"])]
    _no_duplicates("families", families)
    eps = []
    for item in _as_list("eps", full["eps"]):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < 1:
            raise ValueError(f"grid key 'eps': O2P's ε must be a number in (0, 1), got {item!r}")
        eps.append(float(item))
    _no_duplicates("eps", eps)
    return {
        "families": families,
        "d": _int_list("d", full["d"], 2, "matrix size"),
        "eps": eps,
        "dtypes": _choice_list("dtypes", full["dtypes"], DTYPES),
        "pc_methods": _choice_list("pc_methods", full["pc_methods"], PC_METHODS),
        "seeds": _int_list("seeds", full["seeds"], 0, "seed"),
    }


def cells(grid: dict) -> list[dict]:
    grid = validate(grid)
    out = []
    for entry in grid["families"]:
        for d in grid["d"]:
            for eps in grid["eps"]:
                for seed in grid["seeds"]:
                    out.append({
                        "cell_id": f"{family_label(entry)}|d={d}|eps={eps:g}|seed={seed}",
                        "family": entry, "d": d, "eps": eps, "seed": seed,
                        "dtypes": grid["dtypes"], "pc_methods": grid["pc_methods"],
                    })
    return out


# ----------------------------------------------------------------------------- ground truth


def _mp_matrix(x):
    import mpmath as mp
    return mp.matrix([[mp.mpf(float(v)) for v in row] for row in x])


def _np(M):
    return np.array(M.tolist(), dtype=np.float64)


def o2p_truth(F: np.ndarray, G: np.ndarray, eps: float) -> np.ndarray:
    """∂⟨G, log(FᵀF + εI)⟩/∂F at the float matrix F, by Daleckii–Krein in mpmath."""
    import mpmath as mp
    with mp.workdps(DPS):
        Fm = _mp_matrix(F)
        d = F.shape[1]
        A = Fm.T * Fm + mp.mpf(eps) * mp.eye(d)
        mu, Q = mp.eigsy(A)
        Gs = _mp_matrix((G + G.T) / 2)
        inner = Q.T * Gs * Q
        for i in range(d):
            for j in range(d):
                if mu[i] == mu[j]:
                    inner[i, j] *= 1 / mu[i]
                else:
                    inner[i, j] *= (mp.log(mu[i]) - mp.log(mu[j])) / (mu[i] - mu[j])
        return _np(2 * Fm * (Q * inner * Q.T))


def pc_truth(A: np.ndarray, B: np.ndarray, w: np.ndarray):
    """(∂L/∂A, top gap) for L = yᵀBy + (wᵀy)², y the principal eigenvector of the float A."""
    import mpmath as mp
    with mp.workdps(DPS):
        Am = _mp_matrix((A.astype(np.float64) + A.astype(np.float64).T) / 2)
        d = A.shape[0]
        lam, Q = mp.eigsy(Am)
        order = sorted(range(d), key=lambda i: -lam[i])
        top = order[0]
        y = Q[:, top]
        wm = _mp_matrix(w[None, :]).T
        gy = _mp_matrix(B + B.T) * y + 2 * (wm.T * y)[0] * wm
        v = mp.matrix(d, 1)
        for j in order[1:]:
            v += Q[:, j] * ((Q[:, j].T * gy)[0] / (lam[top] - lam[j]))
        G = v * y.T
        gap = float(lam[top] - lam[order[1]])
        return _np((G + G.T) / 2), gap


# ----------------------------------------------------------------------------- one cell


def _inputs(cell):
    from ... import spectra
    entry = dict(cell["family"])
    family = entry.pop("family")
    sp = spectra.make(family, cell["d"], seed=cell["seed"], dtype="float64", **entry)
    d = cell["d"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, 0x02F]))
    P, R = np.linalg.qr(rng.standard_normal((d, d)))
    P = P * np.sign(np.diag(R))
    lam = np.clip(sp.eigenvalues, 0, None)
    F = (P * np.sqrt(lam)) @ sp.basis.T
    G = rng.standard_normal((d, d))
    B = rng.standard_normal((d, d))
    w = rng.standard_normal(d)
    return sp, F, G, B, w


def _o2p_grad(F, G, eps, route, dtype):
    import torch
    from ... import layers
    f = torch.tensor(F, dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad((torch.as_tensor(G, dtype=dtype) * layers.o2p(f, eps=eps, route=route)).sum(), f)
    return g.double().numpy()


def _pc_grad(A, B, w, method, dtype):
    import torch
    from ... import layers
    from ... import torch as sktorch
    from ...layers.ied import fix_sign
    a = torch.tensor(A, dtype=dtype, requires_grad=True)
    if method == "less":
        y, _ = layers.less(a)
    elif method in ("ied", "ied-power"):
        Y, _ = layers.ied(a, solver="eigh" if method == "ied" else "power")
        y = Y[..., 0]
    else:
        _, U, kept = sktorch.eigh_kept(sktorch.symmetrize(a), method=method)
        if not bool(kept[..., -1].all()):
            # a truncating method (pi) that drops the principal pair does not compute this loss at all
            raise ValueError(f"{method} drops the principal eigenpair here: its function has no principal vector")
        y = fix_sign(U[..., -1:])[..., 0]
    Bt, wt = torch.as_tensor(B, dtype=dtype), torch.as_tensor(w, dtype=dtype)
    loss = (y * (Bt @ y)).sum() + (wt * y).sum() ** 2
    (g,) = torch.autograd.grad(loss, a)
    return g.double().numpy()


def run_cell(cell: dict) -> list[dict]:
    import torch
    from ... import metrics
    from ..gradient_accuracy import family_params_text

    torch.set_num_threads(1)
    sp, F, G, B, w = _inputs(cell)
    entry = cell["family"]
    base = {
        "family": entry["family"], "family_params": family_params_text(entry),
        "delta": float(entry.get("delta", math.nan)), "d": cell["d"], "eps": cell["eps"], "seed": cell["seed"],
    }
    lam = np.sort(sp.eigenvalues)
    gaps = np.diff(lam)
    base["min_gap"] = float(gaps.min())
    rows = []
    for dtype_name in cell["dtypes"]:
        dtype = getattr(torch, dtype_name)
        Fd = F.astype(dtype_name)
        truth = o2p_truth(Fd.astype(np.float64), G, cell["eps"])
        for route in ROUTES:
            t0 = time.perf_counter()
            err = ""
            try:
                g = _o2p_grad(Fd, G, cell["eps"], route, dtype)
            except Exception as exc:  # a failed solver is a result of the route, not a crash
                g, err = np.full_like(truth, np.nan), f"{type(exc).__name__}: {exc}"[:200]
            rows.append({**base, "part": "o2p", "dtype": dtype_name, "method": route,
                         **metrics.gradient_metrics(g, truth), "seconds": time.perf_counter() - t0,
                         "top_gap": math.nan, "exact_ties": -1, "error": err})
        Ad = sp.matrix.astype(dtype_name)
        truth, top_gap = pc_truth(Ad, B, w)
        ties = int((torch.diff(torch.linalg.eigh(torch.as_tensor(Ad)).eigenvalues) == 0).sum())  # as the methods see them
        for method in cell["pc_methods"]:
            t0 = time.perf_counter()
            err = ""
            try:
                g = _pc_grad(Ad, B, w, method, dtype)
            except Exception as exc:
                g, err = np.full_like(truth, np.nan), f"{type(exc).__name__}: {exc}"[:200]
            rows.append({**base, "part": "pc", "dtype": dtype_name, "method": method,
                         **metrics.gradient_metrics(g, truth), "seconds": time.perf_counter() - t0,
                         "top_gap": top_gap, "exact_ties": ties, "error": err})
    return rows


# ----------------------------------------------------------------------------- report


def _variant(df):
    return np.where(df["family_params"].fillna("") != "", df["family"] + "(" + df["family_params"].fillna("") + ")",
                    df["family"])


def _med(s):
    """Median angle with non-finite gradients counted as +∞."""
    return float(np.median(s.fillna(np.inf))) if len(s) else math.nan


def report(results: pd.DataFrame, grid: dict, out_dir: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..._markdown import markdown_table

    out_dir = Path(out_dir)
    df = results.copy()
    if "part" not in df:
        return "No result rows.\n"
    df = df[df["part"].notna()]
    df["variant"] = _variant(df)
    df["finite"] = df["finite"].astype(bool)
    order = [family_label(f) for f in validate(grid)["families"]]
    lines = [f"{df['cell_id'].nunique()} cells, {len(df)} rows. Angles: degrees between a gradient and the "
             "mpmath truth (computed on the same rounded input); a NaN/Inf gradient counts as +∞ in medians.\n"]
    o2p = df[df["part"] == "o2p"]
    pc = df[df["part"] == "pc"]

    # -- reading, generated from the data
    lines.append("## Reading\n")
    for dt in sorted(o2p["dtype"].unique()):
        sub = o2p[o2p["dtype"] == dt]
        fin = sub.groupby("method")["finite"].mean()
        med = sub.groupby("method")["angle_deg"].apply(_med)
        lines.append(f"- O2P, {dt}: the SVD route (Prop. 1 + 3) is finite in {fin.get('svd', math.nan):.0%} of cells "
                     f"with median angle {med.get('svd', math.nan):.3g}°, the EIG route (Prop. 2 + 4) in "
                     f"{fin.get('eig', math.nan):.0%} with median {med.get('eig', math.nan):.3g}°"
                     + (f", SVD-DK (cancellation-free divided differences) in {fin['svd-dk']:.0%} with median "
                        f"{med['svd-dk']:.3g}°." if "svd-dk" in fin.index else "."))
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
    if len(pc):
        for dt in sorted(pc["dtype"].unique()):
            sub = pc[pc["dtype"] == dt]
            worst = sub.groupby("method")["angle_deg"].apply(lambda s: float(s.fillna(np.inf).max()))
            fin = sub.groupby("method")["finite"].mean()
            decl = [m for m in ("less", "ied", "ied-power") if m in worst.index]
            others = [m for m in worst.index if m not in decl]
            for m, bad in sub[~sub["finite"]].groupby("method"):
                tied = int((bad["exact_ties"] > 0).sum()) if "exact_ties" in bad else 0
                lines.append(f"- {m} ({dt}) returns NaN/Inf for the principal vector in {len(bad)} cells "
                             f"({', '.join(sorted(bad['variant'].unique()))}); in {tied} of them eigh's eigenvalues hold "
                             "an exact tie, where 1/(λ_j − λ_i) = ∞ meets a zero cotangent (∞ · 0 = NaN) although "
                             "that pair does not enter the principal vector's gradient.")
            if decl:
                lines.append(f"- Principal eigenvector, {dt}: worst angle of the declarative layers " + ", ".join(
                    f"{m} {worst[m]:.3g}°" for m in decl) + "; of the eigen-gradient methods " + ", ".join(
                    f"{m} {worst[m]:.3g}° ({fin[m]:.0%} finite)" for m in others) + ".")
        lines.append(f"- The top gap λ₁ − λ₂ ranges over [{pc['top_gap'].min():.3g}, {pc['top_gap'].max():.3g}], so the "
                     "principal vector's exact gradient is well conditioned in every cell.")
        worst = pc.groupby(["method", "dtype"])["angle_deg"].max().unstack()
        for m in ("pi", "taylor"):
            if m in worst.index and {"float32", "float64"} <= set(worst.columns):
                lines.append(f"  {m}'s worst angle is {worst.loc[m, 'float32']:.3g}° in float32 and "
                             f"{worst.loc[m, 'float64']:.3g}° in float64: a truncation error of the method "
                             "(power-iteration steps / Taylor terms), not rounding.")
    lines.append("")

    # -- tables
    lines.append("## O2P: median angle (°) by spectrum, route and dtype\n")
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
        lines.append(f"ε = {eps:g}:\n")
        lines.append(markdown_table(tab))
        lines.append("")
    if len(pc):
        lines.append("## Principal eigenvector: median angle (°) by spectrum and method\n")
        for dt in sorted(pc["dtype"].unique()):
            sub = pc[pc["dtype"] == dt]
            t = sub.pivot_table(index="variant", columns="method", values="angle_deg", aggfunc=_med)
            t = t.reindex([v for v in order if v in t.index])
            cols = [m for m in PC_METHODS if m in t.columns]
            tab = t[cols].reset_index().rename(columns={"variant": "spectrum"})
            lines.append(f"{dt}:\n")
            lines.append(markdown_table(tab))
            lines.append("")
            tm = sub.groupby("method")["seconds"].median().reindex(cols)
            lines.append("Median seconds per gradient (forward + backward, tiny d, 1 thread): " + ", ".join(
                f"{m} {tm[m] * 1e3:.2g} ms" for m in cols) + ".\n")

    # -- figures
    cl = o2p[o2p["family"] == "cluster"]
    if len(cl):
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
        fig.savefig(out_dir / "o2p_angle_vs_delta.png", dpi=110)
        plt.close(fig)
        lines.append("![O2P angle vs cluster gap](o2p_angle_vs_delta.png)\n")
        lines.append("Missing points: the median gradient is non-finite there.\n")
    if len(pc):
        fig, ax = plt.subplots(figsize=(9, 4))
        sub = pc[pc["dtype"] == "float64"] if (pc["dtype"] == "float64").any() else pc
        t = sub.pivot_table(index="variant", columns="method", values="angle_deg", aggfunc=_med)
        t = t.reindex([v for v in order if v in t.index])
        x = np.arange(len(t.index))
        cols = [m for m in PC_METHODS if m in t.columns]
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
        fig.savefig(out_dir / "pc_angles.png", dpi=110)
        plt.close(fig)
        lines.append("![principal-vector gradient angles](pc_angles.png)\n")
    return "\n".join(lines)
