"""Study kind ``projector_rank``: Ionescu, Vantzos & Sminchisescu, "Matrix backpropagation for deep
networks with structured layers", ICCV 2015 — the projector lemmas of the normalized-cuts layer.

Parts (column ``part``):

* ``lemma1`` — Lemma 1: for Π = A A⁺ (orthogonal projector onto the range of A) and a loss
  L(Π), ∂L/∂A = 2 (I − Π) (∂L/∂Π)_sym A⁺ for symmetric A of constant rank r. Checked for
  L = ⟨G, Π⟩ on random symmetric rank-r matrices A = V diag(s) Vᵀ (s ∈ [1, 2]) along
  rank-preserving directions A(t) = (I + tX) A (I + tX)ᵀ, Ȧ = XA + AXᵀ: the directional
  derivative ⟨∂L/∂A, Ȧ⟩ (float64, numpy pinv) against an mpmath central difference at 50 digits
  of L(t) = ⟨G, Y(YᵀY)⁻¹Yᵀ⟩, Y = (I + tX)V (h = 1e-15, truncation ~h²). A float64 central
  difference (h = 1e-6) is reported beside it. Also: every registry method's ∂L/∂A for the
  ``projector`` loss (top-r eigenvectors, ``methods.gradient``) against sym(Lemma 1) — the eigen
  route gives the same gradient on the symmetric matrices when it is exact.
* ``lemma2`` — Lemma 2: ‖Π_A − Π_B‖₂ < 1 ⇒ rank A = rank B. Random pairs of symmetric PSD
  matrices of chosen ranks whose ranges are close (B's range is A's, truncated or extended,
  perturbed by σ·noise, σ log-uniform); ranks and projectors come from ``numpy.linalg.eigh`` of
  the matrices (numerical rank at d·eps·λ_max). A violation is a pair with different ranks and
  ‖Π_A − Π_B‖₂ < 1 − 1e-10.
* ``descent`` — the J₂ objective of the normalized-cuts section: W = F Fᵀ (F d×k), target
  Ψ = E Eᵀ (E d×r), J₂ = ½‖Π_W − Π_Ψ‖²_F, plain gradient descent on F. Π_W is computed through
  ``stabkit.torch.eigh(W, method=...)``: the eigenvectors of the numerically nonzero eigenvalues
  (λ > d·eps·λ_max), so the gradient is the method's eigenvector backward; the pseudo-method
  ``lemma1`` instead uses Π_W = W W⁺ with the Lemma 1 gradient (numpy). Logged per step: J₂ and
  rank(W). Since ‖Π_W − Π_Ψ‖²_F ≥ |rank W − rank Ψ|, J₂ < ½ forces rank W = rank Ψ (Lemma 2's
  consequence); the report counts the steps that contradict it (must be zero).
"""

from __future__ import annotations

import math
import pathlib

import mpmath
import numpy as np
import pandas as pd

from ..._markdown import markdown_table
from .. import check_choices, with_defaults

PARTS = ("lemma1", "lemma2", "descent")
PSEUDO = ("lemma1",)

GRID_DEFAULTS = {
    "parts": list(PARTS),
    # lemma1
    "lemma1_dims": [6, 10],
    "lemma1_ranks": [1, 3, 5],
    "lemma1_directions": 4,
    "lemma1_seeds": [0, 1],
    "lemma1_methods": ["analytic", "taylor:eps=0.001", "pi", "pi-forward", "clip", "lorentzian", "pade",
                       "taylor-song", "degenerate"],
    # lemma2
    "lemma2_d": 8,
    "lemma2_pairs": 5000,  # per cell
    "lemma2_cells": 4,
    # descent
    "descent_d": 10,
    "descent_target_rank": 3,
    "descent_k": [2, 3, 4],
    "descent_steps": 150,
    "descent_lr": 0.5,
    "descent_methods": ["lemma1", "analytic", "taylor:eps=0.001", "pi", "pi-forward", "clip", "lorentzian", "pade",
                        "taylor-song", "degenerate", "torch"],
    "descent_seeds": [0],
    "seed": 0,
}


def validate(grid: dict) -> dict:
    out = with_defaults("projector_rank", grid, GRID_DEFAULTS)
    check_choices("projector_rank", "parts", out["parts"], PARTS)
    for d in out["lemma1_dims"]:
        if any(not 1 <= r < d for r in out["lemma1_ranks"]):
            raise ValueError(f"projector_rank: lemma1_ranks must satisfy 1 ≤ r < d for every d in {out['lemma1_dims']}")
    if out["lemma2_d"] < 2 or out["lemma2_pairs"] < 1 or out["lemma2_cells"] < 1 or out["lemma1_directions"] < 1:
        raise ValueError("projector_rank: lemma2_d ≥ 2, lemma2_pairs, lemma2_cells and lemma1_directions ≥ 1 required")
    if not 1 <= out["descent_target_rank"] < out["descent_d"] or any(not 1 <= k < out["descent_d"] for k in out["descent_k"]):
        raise ValueError("projector_rank: descent_target_rank and descent_k must lie in [1, descent_d)")
    if out["descent_steps"] < 1 or not out["descent_lr"] > 0:
        raise ValueError("projector_rank: descent_steps ≥ 1 and descent_lr > 0 required")
    from ... import methods

    for spec in [*out["lemma1_methods"], *(m for m in out["descent_methods"] if m not in PSEUDO)]:
        methods.parse_spec(spec)
    return out


def cells(grid: dict) -> list[dict]:
    g = validate(grid)
    out = []
    if "lemma1" in g["parts"]:
        for d in g["lemma1_dims"]:
            for r in g["lemma1_ranks"]:
                for s in g["lemma1_seeds"]:
                    out.append({"cell_id": f"lemma1-d{d}-r{r}-s{s}", "part": "lemma1", "d": int(d), "r": int(r), "seed": int(s),
                                "directions": int(g["lemma1_directions"]), "methods": list(g["lemma1_methods"])})
    if "lemma2" in g["parts"]:
        for c in range(g["lemma2_cells"]):
            out.append({"cell_id": f"lemma2-c{c}", "part": "lemma2", "d": int(g["lemma2_d"]), "pairs": int(g["lemma2_pairs"]),
                        "chunk": c, "seed": int(g["seed"])})
    if "descent" in g["parts"]:
        for m in g["descent_methods"]:
            for k in g["descent_k"]:
                for s in g["descent_seeds"]:
                    out.append({"cell_id": f"descent-{m}-k{k}-s{s}", "part": "descent", "method": m, "k": int(k), "seed": int(s),
                                "d": int(g["descent_d"]), "r": int(g["descent_target_rank"]), "steps": int(g["descent_steps"]),
                                "lr": float(g["descent_lr"])})
    return out


# ---------------------------------------------------------------- Lemma 1


def _orth(M):
    Q, _ = np.linalg.qr(M)
    return Q


def random_rank_r(d: int, r: int, rng):
    """(A, V, s): A = V diag(s) Vᵀ symmetric PSD of rank r, s ∈ [1, 2]."""
    V = _orth(rng.standard_normal((d, r)))
    s = rng.uniform(1, 2, r)
    A = (V * s) @ V.T
    return (A + A.T) / 2, V, s


def lemma1_gradient(A, G, rcond: float = 1e-10):
    """2 (I − Π) G_sym A⁺ with Π = A A⁺ (Ionescu et al. 2015, Lemma 1)."""
    Ap = np.linalg.pinv(A, rcond=rcond, hermitian=True)
    P = A @ Ap
    return 2 * (np.eye(A.shape[0]) - P) @ ((G + G.T) / 2) @ Ap, P


def _mp_loss(G, V, X, t):
    """⟨G, Y (YᵀY)⁻¹ Yᵀ⟩ with Y = (I + tX) V, in mpmath at the current precision."""
    d = V.shape[0]
    M = mpmath.eye(d) + t * mpmath.matrix(X.tolist())
    Y = M * mpmath.matrix(V.tolist())
    P = Y * mpmath.inverse(Y.T * Y) * Y.T
    Gm = mpmath.matrix(G.tolist())
    return mpmath.fsum(Gm[i, j] * P[i, j] for i in range(d) for j in range(d))


def mp_directional_derivative(G, V, X, dps: int = 50, h: str = "1e-15"):
    with mpmath.workdps(dps):
        hh = mpmath.mpf(h)
        return float((_mp_loss(G, V, X, hh) - _mp_loss(G, V, X, -hh)) / (2 * hh))


def _f64_loss(G, V, X, t):
    Y = (np.eye(V.shape[0]) + t * X) @ V
    return float((G * (Y @ np.linalg.solve(Y.T @ Y, Y.T))).sum())


def lemma1_rows(cell):
    from ... import losses, methods

    d, r = cell["d"], cell["r"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, r, 0x1E1]))
    A, V, _ = random_rank_r(d, r, rng)
    G = rng.standard_normal((d, d))
    g, _ = lemma1_gradient(A, G)
    rows = []
    for k in range(cell["directions"]):
        X = rng.standard_normal((d, d))
        Adot = X @ A + A @ X.T
        pred = float((g * Adot).sum())
        truth = mp_directional_derivative(G, V, X)
        h = 1e-6
        fd64 = (_f64_loss(G, V, X, h) - _f64_loss(G, V, X, -h)) / (2 * h)
        rows.append({"part": "lemma1", "check": "directional", "d": d, "r": r, "seed": cell["seed"], "direction": k,
                     "method": "lemma1", "value": pred, "truth": truth, "rel_err": abs(pred - truth) / abs(truth),
                     "fd64_rel_err": abs(fd64 - truth) / abs(truth)})
    ref = (g + g.T) / 2
    loss = losses.make_loss("projector", d, k=r, weight=G)
    for spec in cell["methods"]:
        try:
            gm, _, _, kept = methods.evaluate(spec, A, loss)
            kept = np.asarray(kept, dtype=bool)
            if not kept[d - r:].all():
                # a truncating method (SVD-PI) computes the projector onto fewer pairs: another function,
                # not scored against Lemma 1 (its own function is scored in gradient-accuracy)
                err, note = math.nan, f"not scored: keeps {int(kept[d - r:].sum())} of the top {r} pairs"
            else:
                err = float(np.linalg.norm(gm - ref) / np.linalg.norm(ref)) if np.isfinite(gm).all() else math.nan
                note = "" if np.isfinite(gm).all() else "non-finite gradient"
        except Exception as exc:  # a method may refuse this input; that is a result
            err, note = math.nan, f"{type(exc).__name__}: {exc}"[:120]
        rows.append({"part": "lemma1", "check": "eigen-route", "d": d, "r": r, "seed": cell["seed"], "direction": -1,
                     "method": spec, "value": math.nan, "truth": math.nan, "rel_err": err, "fd64_rel_err": math.nan, "note": note})
    return rows


# ---------------------------------------------------------------- Lemma 2


def projector_and_rank(M):
    """(Π, rank) of symmetric PSD matrices M (..., d, d): eigenvectors with λ > d·eps·λ_max."""
    lam, U = np.linalg.eigh(M)
    tol = M.shape[-1] * np.finfo(np.float64).eps * np.abs(lam).max(-1, keepdims=True)
    keep = (lam > tol).astype(np.float64)
    P = (U * keep[..., None, :]) @ U.swapaxes(-1, -2)
    return P, keep.sum(-1).astype(int)


def lemma2_rows(cell):
    d, n = cell["d"], cell["pairs"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, cell["chunk"], 0x1E2]))
    ra = rng.integers(1, d, n)
    rb = np.clip(ra + rng.integers(-2, 3, n), 1, d - 1)
    sigma = 10 ** rng.uniform(-4, 0, n)
    A = np.empty((n, d, d))
    B = np.empty((n, d, d))
    for i in range(n):
        Q = _orth(rng.standard_normal((d, d)))
        Va = Q[:, :ra[i]]
        Vb = _orth(Q[:, :rb[i]] + sigma[i] * rng.standard_normal((d, rb[i])))
        A[i] = (Va * rng.uniform(0.5, 2, ra[i])) @ Va.T
        B[i] = (Vb * rng.uniform(0.5, 2, rb[i])) @ Vb.T
    A = (A + A.swapaxes(1, 2)) / 2
    B = (B + B.swapaxes(1, 2)) / 2
    PA, rank_a = projector_and_rank(A)
    PB, rank_b = projector_and_rank(B)
    norms = np.linalg.norm(PA - PB, ord=2, axis=(1, 2))
    return [{"part": "lemma2", "chunk": cell["chunk"], "pair": i, "d": d, "rank_a": int(rank_a[i]), "rank_b": int(rank_b[i]),
             "sigma": float(sigma[i]), "proj_dist": float(norms[i])} for i in range(n)]


# ---------------------------------------------------------------- descent


def _target(d, r, seed):
    rng = np.random.default_rng(np.random.SeedSequence([seed, d, r, 0xDE5]))
    E = rng.standard_normal((d, r))
    F0 = rng.standard_normal((d, 16))
    return E, F0


def _proj_lemma1(W):
    Wp = np.linalg.pinv(W, rcond=1e-10, hermitian=True)
    return W @ Wp, Wp


def descent_rows(cell):
    import torch

    from ... import torch as stk

    d, r, k, steps, lr = cell["d"], cell["r"], cell["k"], cell["steps"], cell["lr"]
    E, F0 = _target(d, r, cell["seed"])
    F = F0[:, :k].copy()
    P_psi, _ = projector_and_rank(E @ E.T)
    rows = []
    name, _, rest = cell["method"].partition(":")
    # only the parameters the spec names (eigh resolves the defaults itself)
    params = dict(item.split("=", 1) for item in filter(None, rest.split(",")))
    for step in range(steps + 1):
        W = F @ F.T
        W = (W + W.T) / 2
        rank = int(projector_and_rank(W)[1])
        if name == "lemma1":
            P, Wp = _proj_lemma1(W)
            J = 0.5 * float(((P - P_psi) ** 2).sum())
            G = P - P_psi  # ∂J/∂Π
            gW = 2 * (np.eye(d) - P) @ ((G + G.T) / 2) @ Wp
            gF = (gW + gW.T) @ F
            proj_rank = int(round(float(np.trace(P))))
        else:
            Ft = torch.tensor(F, dtype=torch.float64, requires_grad=True)
            Wt = Ft @ Ft.T
            Wt = (Wt + Wt.T) / 2
            lam, U = stk.eigh(Wt, method=name, **params)
            tol = d * np.finfo(np.float64).eps * float(lam.detach().abs().max())
            mask = (lam > tol).to(torch.float64)
            P = (U * mask) @ U.T
            J_t = 0.5 * ((P - torch.as_tensor(P_psi)) ** 2).sum()
            J_t.backward()
            J = float(J_t.detach())
            proj_rank = int(mask.sum())
            gF = Ft.grad.numpy()
        finite = bool(np.isfinite(gF).all() and math.isfinite(J))
        rows.append({"part": "descent", "method": cell["method"], "k": k, "seed": cell["seed"], "d": d, "target_rank": r,
                     "step": step, "J2": J, "rank_w": rank, "proj_rank": proj_rank, "grad_norm": float(np.linalg.norm(gF)) if finite else math.nan,
                     "finite": finite})
        if not finite or step == steps:
            break
        F = F - lr * gF
    return rows


def run_cell(cell: dict) -> list[dict]:
    part = cell["part"]
    if part == "lemma1":
        return lemma1_rows(cell)
    if part == "lemma2":
        return lemma2_rows(cell)
    if part == "descent":
        return descent_rows(cell)
    raise ValueError(f"projector_rank: unknown part {part!r}")


# ---------------------------------------------------------------- report


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lemma2_violations(df: pd.DataFrame, tol: float = 1e-10) -> int:
    return int(((df["rank_a"] != df["rank_b"]) & (df["proj_dist"] < 1 - tol)).sum())


def descent_contradictions(df: pd.DataFrame) -> int:
    """Steps with J₂ < ½ but rank W ≠ rank Ψ (impossible by ‖Π_W − Π_Ψ‖²_F ≥ |Δrank|)."""
    return int(((df["J2"] < 0.5) & (df["rank_w"] != df["target_rank"])).sum())


def summary(results: pd.DataFrame) -> str:
    parts = []
    l1 = results[(results.get("part") == "lemma1") & (results.get("check") == "directional")] if "check" in results else results.iloc[:0]
    if len(l1):
        parts.append(f"Lemma 1 max rel_err {l1['rel_err'].max():.2g}")
    l2 = results[results["part"] == "lemma2"]
    if len(l2):
        parts.append(f"Lemma 2 violations {lemma2_violations(l2)}/{len(l2)}")
    de = results[results["part"] == "descent"]
    if len(de):
        parts.append(f"descent: J2<1/2 with rank mismatch in {descent_contradictions(de)} steps")
    return "; ".join(parts)


def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "error" in results:
        errors = results[results["error"].notna()]
        results = results[results["error"].isna()]
    else:
        errors = results.iloc[:0]
    md = []
    plt = _plt()

    l1 = results[results["part"] == "lemma1"] if "part" in results else results.iloc[:0]
    if not l1.empty:
        dirn = l1[l1["check"] == "directional"]
        md += ["## Lemma 1: ∂L/∂A = 2(I − Π)(∂L/∂Π)_sym A⁺ (Ionescu et al., ICCV 2015)", "",
               "Directional derivative along rank-preserving A(t) = (I+tX)A(I+tX)ᵀ against an mpmath 50-digit central "
               "difference; `fd64` = the same central difference in float64 (h = 1e-6).", ""]
        tab = dirn.groupby(["d", "r"]).agg(directions=("rel_err", "size"), max_rel_err=("rel_err", "max"),
                                           median_rel_err=("rel_err", "median"), max_fd64_rel_err=("fd64_rel_err", "max")).reset_index()
        md += [markdown_table(tab), ""]
        md += [f"Over {len(dirn)} (matrix, direction) checks the Lemma 1 gradient agrees with the high-precision truth to a relative "
               f"error of at most {dirn['rel_err'].max():.2g} (median {dirn['rel_err'].median():.2g}); float64 finite differences reach "
               f"only {dirn['fd64_rel_err'].median():.2g} (median).", ""]
        eig = l1[l1["check"] == "eigen-route"]
        if not eig.empty:
            t2 = eig.groupby("method", sort=False).agg(matrices=("rel_err", "size"), max_rel_err=("rel_err", "max"),
                                                        median_rel_err=("rel_err", "median"),
                                                        failures=("rel_err", lambda s: int(s.isna().sum()))).reset_index()
            md += ["Registry methods (projector loss on the top-r eigenvectors, `methods.gradient`) against sym(Lemma 1):", "",
                   markdown_table(t2), ""]
            exact = t2[t2["max_rel_err"] < 1e-8]["method"].tolist()
            md += [f"Methods reproducing Lemma 1 to < 1e-8 on every matrix: {', '.join(exact) if exact else 'none'}.", ""]

    l2 = results[results["part"] == "lemma2"] if "part" in results else results.iloc[:0]
    if not l2.empty:
        viol = lemma2_violations(l2)
        same = l2[l2["rank_a"] == l2["rank_b"]]
        diff = l2[l2["rank_a"] != l2["rank_b"]]
        md += ["## Lemma 2: ‖Π_A − Π_B‖₂ < 1 ⇒ rank A = rank B", "",
               f"{len(l2)} random pairs (d = {int(l2['d'].iloc[0])}); {len(diff)} with different ranks, {len(same)} with equal ranks. "
               f"Violations (different ranks and ‖Π_A − Π_B‖₂ < 1 − 1e-10): **{viol}**.", ""]
        if len(diff):
            md.append(f"- Different ranks: ‖Π_A − Π_B‖₂ ∈ [{diff['proj_dist'].min():.17g}, {diff['proj_dist'].max():.17g}].")
        if len(same):
            below = (same["proj_dist"] < 1 - 1e-10).mean()
            md.append(f"- Equal ranks: {below:.1%} of the pairs have ‖Π_A − Π_B‖₂ < 1 (median {same['proj_dist'].median():.3g}).")
        md.append("")
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
        fig.savefig(out_dir / "lemma2_hist.png", dpi=110)
        plt.close(fig)
        md += ["![Lemma 2 distribution](lemma2_hist.png)", ""]

    de = results[results["part"] == "descent"] if "part" in results else results.iloc[:0]
    if not de.empty:
        d, r = int(de["d"].iloc[0]), int(de["target_rank"].iloc[0])
        md += [f"## Gradient descent on J₂ = ½‖Π_W − Π_Ψ‖²_F, W = FFᵀ (d = {d}, rank Ψ = {r}, lr = {g['descent_lr']:g}, "
               f"{g['descent_steps']} steps)", "",
               "Π_W from `stabkit.torch.eigh(W, method)` (eigenvectors of the nonzero eigenvalues); `lemma1` = Π_W = WW⁺ with the "
               "Lemma 1 gradient.", ""]
        ks = sorted(de["k"].unique())
        fig, axes = plt.subplots(2, len(ks), figsize=(4.5 * len(ks), 7), sharex=True, squeeze=False)
        for j, k in enumerate(ks):
            for method, s in de[de["k"] == k].groupby("method", sort=False):
                s = s.sort_values("step")
                axes[0, j].plot(s["step"], np.maximum(s["J2"], 1e-16), label=method, lw=1)
                axes[1, j].plot(s["step"], s["rank_w"], label=method, lw=1)
            axes[0, j].axhline(0.5, color="k", ls="--", lw=0.8)
            axes[0, j].set_yscale("log")
            axes[0, j].set_title(f"F is d×{int(k)}")
            axes[1, j].axhline(r, color="k", ls="--", lw=0.8)
            axes[1, j].set_xlabel("step")
        axes[0, 0].set_ylabel("J₂")
        axes[1, 0].set_ylabel("rank W")
        axes[0, -1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out_dir / "descent.png", dpi=110)
        plt.close(fig)
        md += ["![J2 and rank per step](descent.png)", ""]
        last = de.sort_values("step").groupby(["method", "k"], sort=False).tail(1)
        first_below = de[de["J2"] < 0.5].groupby(["method", "k"])["step"].min()
        tab = []
        for row in last.itertuples():
            tab.append({"method": row.method, "k": row.k, "steps run": row.step, "final J₂": row.J2, "final rank W": row.rank_w,
                        "first step J₂<½": first_below.get((row.method, row.k), math.nan), "diverged (NaN/Inf)": not row.finite})
        tab = pd.DataFrame(tab).sort_values(["k", "method"], kind="stable")
        md += [markdown_table(tab), ""]
        bad = descent_contradictions(de)
        matched = tab[tab["k"] == r]
        conv = matched[matched["final J₂"] < 1e-4]["method"].tolist()
        floor = tab[tab["k"] != r]
        md += [f"- Steps with J₂ < ½ but rank W ≠ rank Ψ: **{bad}** of {len(de)} logged steps.",
               f"- With k = rank Ψ = {r}, the final J₂ is below 1e-4 for: {', '.join(conv) if conv else 'no method'}; "
               f"diverged: {', '.join(matched[matched['diverged (NaN/Inf)']]['method']) or 'none'}."]
        wrong = de[de["proj_rank"] != de["rank_w"]].groupby("method")["step"].size()
        if len(wrong):
            md.append("- Π_W built from a number of eigenvectors different from rank W (the method's forward did not "
                      "resolve the zero eigenvalues): " + ", ".join(f"{m} in {n} steps" for m, n in wrong.items()) + ".")
        else:
            md.append("- Every method's forward resolved the zero eigenvalues: Π_W always used rank W eigenvectors.")
        if len(floor):
            md.append(f"- With k ≠ {r} the smallest J₂ reached is {de[de['k'] != r]['J2'].min():.4g} (≥ ½·|k − r| = ½ by Lemma 2's bound); "
                      f"rank W stayed equal to k in {int((de[de['k'] != r]['rank_w'] == de[de['k'] != r]['k']).mean() * 100)}% of those steps.")
        md.append("")
    if len(errors):
        md += [f"{len(errors)} cells failed: " + ", ".join(errors["cell_id"].astype(str).unique()[:10]), ""]
    return "\n".join(md) + "\n"
