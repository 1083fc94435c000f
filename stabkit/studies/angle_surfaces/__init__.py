"""Study kind ``angle_surfaces``: where the Taylor / clipped gradients lose direction, as surfaces.

Parts (the ``part`` column of the results):

* ``energy`` — Wang et al., "Robust Differentiable SVD", TPAMI 2021, Fig. 4: the degree-K Taylor
  expansion (1/λ_i) Σ_{k≤K} r^k of 1/(λ_i − λ_j), r = λ_j/λ_i < 1, equals the exact value times
  1 − r^{K+1}, so the share of the gradient factor it discards is r^{K+1}. Measured from the
  registry kernels (``taylor.kernel`` against ``analytic.kernel`` on the spectrum (λ_j, λ_i)) and
  compared with the closed form.
* ``angle3`` — the appendix analysis of the same paper (Fig. 11): for a 3×3 spectrum
  λ₁ ≥ λ₂ ≥ λ₃ > 0 (λ₁ = 1) the column of K̃ belonging to λ₁, k = (1/(λ₁ − λ₂), 1/(λ₁ − λ₃)),
  against its Taylor (degree K) and clipped (τ) versions over the (λ₂/λ₁, λ₃/λ₁) plane.
  Both approximations scale entry j of k by a factor c_j ∈ (0, 1] (Taylor: 1 − (λ_j/λ₁)^{K+1};
  clip: min(1, τ(λ₁ − λ_j))). The bound checked: by the Kantorovich inequality applied to the
  diagonal scaling D = diag(c), cos∠(k, Dk) ≥ 2√m / (1 + m) with m = min_j c_j / max_j c_j, i.e.
  angle ≤ arccos(2√m/(1 + m)). It is checked at every grid point and reported separately for
  the region where λ₁ holds at least 50% of the energy (λ₂ + λ₃ ≤ λ₁), the case the paper's
  appendix singles out; the maximum violation must be zero (up to 1e-9 degrees of rounding).
  This is our statement of the bound (derived here), not a quotation of the paper's constant.
* ``k_eps`` — measured angle between ``methods.gradient("taylor:K,eps")`` and the certified truth
  (``reference.ground_truth``) for the ZCA loss on one matrix with a clustered spectrum, over (K, ε).
* ``gap_d`` — the same angle for each method in ``gap_methods`` on matrices from
  ``stabkit.spectra`` whose eigenvalue gap is δ, over (δ, d).

Figures are contour plots and 3-D surfaces (matplotlib, Agg backend).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pandas as pd

from ... import metrics
from ..._markdown import markdown_table
from .. import check_choices, with_defaults
from ...methods import analytic, clip, taylor

PARTS = ("energy", "angle3", "k_eps", "gap_d")

GRID_DEFAULTS = {
    "parts": list(PARTS),
    # energy
    "energy_K": list(range(1, 31)),
    "energy_ratios": 60,  # r on a uniform grid in [0.02, 0.99]
    # angle3
    "angle_K": 9,
    "angle_tau": 10.0,  # clip threshold, in units where λ₁ = 1
    "ratio_points": 121,  # grid points per axis of the (λ₂/λ₁, λ₃/λ₁) plane
    # k_eps
    "cluster_family": "cluster",
    "cluster_params": {"delta": 1e-4},
    "cluster_d": 8,
    "k_values": [1, 3, 5, 9, 15, 25, 40],
    "eps_values": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
    # gap_d
    "gap_family": "cluster",
    "gap_param": "delta",
    "gap_params": {},
    "gap_deltas": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
    "gap_dims": [4, 8, 16, 32],
    "gap_methods": ["taylor", "clip"],
    "seeds": [0],
    "loss_seed": 0,
}


def validate(grid: dict) -> dict:
    out = with_defaults("angle_surfaces", grid, GRID_DEFAULTS)
    check_choices("angle_surfaces", "parts", out["parts"], PARTS)
    if any(int(k) != k or k < 0 for k in [*out["energy_K"], *out["k_values"], out["angle_K"]]):
        raise ValueError("angle_surfaces: energy_K, k_values and angle_K must be non-negative integers")
    if out["energy_ratios"] < 2 or out["ratio_points"] < 3:
        raise ValueError("angle_surfaces: energy_ratios must be ≥ 2 and ratio_points ≥ 3")
    if out["angle_tau"] <= 0 or any(e < 0 for e in out["eps_values"]) or any(g <= 0 for g in out["gap_deltas"]):
        raise ValueError("angle_surfaces: angle_tau and gap_deltas must be positive, eps_values ≥ 0")
    if any(int(d) != d or d < 2 for d in [*out["gap_dims"], out["cluster_d"]]):
        raise ValueError("angle_surfaces: gap_dims and cluster_d must be integers ≥ 2")
    from ... import methods

    for spec in out["gap_methods"]:
        methods.parse_spec(spec)  # raises ValueError naming the allowed methods / parameters
    return out


def cells(grid: dict) -> list[dict]:
    g = validate(grid)
    out = []
    if "energy" in g["parts"]:
        out.append({"cell_id": "energy", "part": "energy", "K": list(g["energy_K"]), "ratios": int(g["energy_ratios"])})
    if "angle3" in g["parts"]:
        out.append({"cell_id": "angle3", "part": "angle3", "K": int(g["angle_K"]), "tau": float(g["angle_tau"]),
                    "points": int(g["ratio_points"])})
    if "k_eps" in g["parts"]:
        for seed in g["seeds"]:
            for K in g["k_values"]:
                out.append({"cell_id": f"k_eps-K{K}-s{seed}", "part": "k_eps", "K": int(K), "eps": list(g["eps_values"]),
                            "family": g["cluster_family"], "params": dict(g["cluster_params"]), "d": int(g["cluster_d"]),
                            "seed": int(seed), "loss_seed": int(g["loss_seed"])})
    if "gap_d" in g["parts"]:
        for seed in g["seeds"]:
            for d in g["gap_dims"]:
                for delta in g["gap_deltas"]:
                    out.append({"cell_id": f"gap_d-d{d}-delta{delta:g}-s{seed}", "part": "gap_d", "d": int(d),
                                "delta": float(delta), "family": g["gap_family"], "param": g["gap_param"],
                                "params": dict(g["gap_params"]), "methods": list(g["gap_methods"]),
                                "seed": int(seed), "loss_seed": int(g["loss_seed"])})
    return out


# ---------------------------------------------------------------- the analytic parts


def discarded_share(K: int, r) -> np.ndarray:
    """1 − F_taylor/F_exact for the pair (λ_j, λ_i) = (r, 1), from the registry kernels."""
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    lam = np.stack([r, np.ones_like(r)], axis=-1)  # ascending: λ_j = r < λ_i = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        approx = taylor.kernel(lam, K=K, eps=0.0)[..., 0, 1]
        exact = analytic.kernel(lam)[..., 0, 1]
    return 1 - approx / exact


def kantorovich_angle_bound(c: np.ndarray) -> np.ndarray:
    """Largest angle (degrees) between a positive vector k and diag(c)·k, c > 0 along the last axis."""
    hi = c.max(-1)
    m = c.min(-1) / hi
    # cos θ = 2√m/(1+m) ⇔ tan θ = (1 − m)/(2√m); the atan2 form keeps full accuracy as m → 1
    return np.degrees(np.arctan2((hi - c.min(-1)) / hi, 2 * np.sqrt(m)))


def angle3_rows(K: int, tau: float, points: int) -> list[dict]:
    t = np.linspace(0, 1, points)[1:-1]  # open interval: λ₁ > λ₂, λ₃ > 0
    x, y = np.meshgrid(t, t, indexing="ij")
    keep = y < x  # λ₃ < λ₂
    x, y = x[keep], y[keep]
    lam = np.stack([y, x, np.ones_like(x)], axis=-1)  # ascending λ₃, λ₂, λ₁ = 1
    with np.errstate(divide="ignore", invalid="ignore"):  # the kernels' diagonals are 1/0, then zeroed
        exact = analytic.kernel(lam)[..., 2, :2]  # row of F for λ₁ = column of K̃ (F = K̃ᵀ)
        approxs = (("taylor", taylor.kernel(lam, K=K, eps=0.0)[..., 2, :2]), ("clip", clip.kernel(lam, tau=tau)[..., 2, :2]))
    rows = []
    for name, approx in approxs:
        c = approx / exact
        bound = kantorovich_angle_bound(c)
        for i in range(x.size):
            angle = metrics.angle_deg(approx[i], exact[i])
            rows.append({"part": "angle3", "method": name, "x": float(x[i]), "y": float(y[i]), "angle_deg": angle,
                         "bound_deg": float(bound[i]), "energy_top": float(1 / (1 + x[i] + y[i])),
                         "K": K, "tau": tau})
    return rows


# ---------------------------------------------------------------- the measured parts


def _spectrum(family, d, seed, params):
    from ... import spectra

    return spectra.make(family, d, seed=seed, dtype="float64", **params)


def _eigenvalues(sp):
    """The spectrum's exact eigenvalues, or eigvalsh of its matrix where the family gives none."""
    if sp.eigenvalues is not None:
        return np.sort(np.asarray(sp.eigenvalues, dtype=np.float64))
    return np.linalg.eigvalsh(np.asarray(sp.matrix, dtype=np.float64))


def _angle_vs_truth(spec, A, loss, truth_grad):
    from ... import methods

    g, _, _ = methods.gradient(spec, A, loss)
    return metrics.gradient_metrics(g, truth_grad)


def run_cell(cell: dict) -> list[dict]:
    part = cell["part"]
    if part == "energy":
        rs = np.linspace(0.02, 0.99, cell["ratios"])
        rows = []
        for K in cell["K"]:
            measured = discarded_share(K, rs)
            for r, m in zip(rs, measured):
                rows.append({"part": "energy", "K": int(K), "r": float(r), "discarded": float(m),
                             "closed_form": float(r ** (K + 1))})
        return rows
    if part == "angle3":
        return angle3_rows(cell["K"], cell["tau"], cell["points"])
    from ... import losses, reference

    if part == "k_eps":
        sp = _spectrum(cell["family"], cell["d"], cell["seed"], cell["params"])
        loss = losses.make_loss("zca", cell["d"], seed=cell["loss_seed"])
        truth = reference.ground_truth(sp.matrix, loss)
        diag = metrics.spectrum_diagnostics(_eigenvalues(sp))
        rows = []
        for eps in cell["eps"]:
            m = _angle_vs_truth(("taylor", {"K": cell["K"], "eps": eps}), sp.matrix, loss, truth.grad)
            rows.append({"part": "k_eps", "K": cell["K"], "eps": float(eps), "d": cell["d"], "seed": cell["seed"],
                         "family": cell["family"], "min_abs_gap": diag["min_abs_gap"], "truth_digits": float(truth.digits),
                         "certified": bool(truth.certified), **m})
        return rows
    if part == "gap_d":
        params = {**cell["params"], cell["param"]: cell["delta"]}
        sp = _spectrum(cell["family"], cell["d"], cell["seed"], params)
        loss = losses.make_loss("zca", cell["d"], seed=cell["loss_seed"])
        truth = reference.ground_truth(sp.matrix, loss)
        diag = metrics.spectrum_diagnostics(_eigenvalues(sp))
        rows = []
        for spec in cell["methods"]:
            m = _angle_vs_truth(spec, sp.matrix, loss, truth.grad)
            rows.append({"part": "gap_d", "method": spec, "d": cell["d"], "delta": cell["delta"], "seed": cell["seed"],
                         "family": cell["family"], "min_abs_gap": diag["min_abs_gap"], "truth_digits": float(truth.digits),
                         "certified": bool(truth.certified), **m})
        return rows
    raise ValueError(f"angle_surfaces: unknown part {part!r}")


# ---------------------------------------------------------------- report


def _surface_pair(X, Y, Z, *, title, xlabel, ylabel, zlabel, out_dir, stem, levels=12, extra=None):
    """Contour (filled, with labelled lines) and 3-D surface of Z over (X, Y); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Zm = np.ma.masked_invalid(Z)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cf = ax.contourf(X, Y, Zm, levels=levels, cmap="viridis")
    cs = ax.contour(X, Y, Zm, levels=levels, colors="k", linewidths=0.4)
    ax.clabel(cs, fontsize=6, fmt="%.3g")
    fig.colorbar(cf, ax=ax, label=zlabel)
    if extra is not None:
        extra(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}_contour.png", dpi=110)
    plt.close(fig)

    fig = plt.figure(figsize=(7, 5.5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, np.where(np.isfinite(Z), Z, np.nan), cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_zlabel(zlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}_surface.png", dpi=110)
    plt.close(fig)
    return [f"{stem}_contour.png", f"{stem}_surface.png"]


def _figs(md, names, caption):
    md += [f"![{caption}]({names[0]}) ![{caption} (3-D)]({names[1]})", ""]


def report(results: pd.DataFrame, grid: dict, out_dir: pathlib.Path) -> str:
    g = validate(grid)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = []
    if "part" not in results:
        return "No results.\n"

    e = results[results["part"] == "energy"]
    if not e.empty:
        md += ["## Share of the gradient factor the Taylor expansion discards (TPAMI 2021, Fig. 4)", ""]
        err = (e["discarded"] - e["closed_form"]).abs()
        piv = e.pivot_table(index="r", columns="K", values="discarded")
        K, R = np.meshgrid(piv.columns.to_numpy(float), piv.index.to_numpy(float))
        names = _surface_pair(K, R, piv.to_numpy(), title="discarded share (λ_j/λ_i)^(K+1)", xlabel="K", ylabel="λ_j/λ_i",
                              zlabel="discarded share", out_dir=out_dir, stem="energy", levels=[0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95])
        _figs(md, names, "discarded energy")
        sel = e[e["K"].isin([1, 5, 9, 19, 30])]
        pick = []
        for K, s in sel.groupby("K"):
            half = s.loc[(s["discarded"] - 0.5).abs().idxmin()]
            tenth = s[s["discarded"] <= 0.01]
            pick.append({"K": int(K), "r where ≈50% discarded": half["r"],
                         "largest r with ≤1% discarded": tenth["r"].max() if not tenth.empty else math.nan,
                         "discarded at r=0.99": s.loc[s["r"].idxmax(), "discarded"]})
        md += [f"Measured (registry kernels) against the closed form r^(K+1): max |difference| = {err.max():.2e} over {len(e)} (K, r) points.", ""]
        if pick:
            md += [markdown_table(pd.DataFrame(pick)), ""]

    a = results[results["part"] == "angle3"]
    if not a.empty:
        K, tau = int(a["K"].iloc[0]), float(a["tau"].iloc[0])
        md += [f"## 3×3 spectra: angle between the λ₁ column of K̃ and its approximations (TPAMI 2021, appendix, Fig. 11)", "",
               f"Taylor degree K = {K}, clip τ = {tau:g} (λ₁ = 1). Bound checked at every point: angle ≤ arccos(2√m/(1+m)), "
               "m = min_j c_j / max_j c_j, c_j the factor by which the method scales entry j (Kantorovich inequality).", ""]
        summary = []
        for method, s in a.groupby("method"):
            t = np.linspace(0, 1, int(g["ratio_points"]))[1:-1]
            Z = np.full((t.size, t.size), np.nan)
            ix = np.searchsorted(t, s["x"].to_numpy())
            iy = np.searchsorted(t, s["y"].to_numpy())
            Z[iy, ix] = s["angle_deg"].to_numpy()
            X, Y = np.meshgrid(t, t)

            def line(ax):
                ax.plot([0.5, 1], [0.5, 0], "r--", lw=1.2, label="λ₂+λ₃ = λ₁ (λ₁ holds 50%)")
                ax.legend(fontsize=7, loc="upper left")

            names = _surface_pair(X, Y, Z, title=f"{method}: angle (deg) to the true K̃ column", xlabel="λ₂/λ₁", ylabel="λ₃/λ₁",
                                  zlabel="angle (deg)", out_dir=out_dir, stem=f"angle3_{method}", extra=line)
            _figs(md, names, f"{method} angle")
            viol = (s["angle_deg"] - s["bound_deg"]).clip(lower=0)
            dom = s[s["energy_top"] >= 0.5]
            vdom = (dom["angle_deg"] - dom["bound_deg"]).clip(lower=0)
            summary.append({"method": method, "points": len(s), "max angle": s["angle_deg"].max(),
                            "max angle (λ₁ ≥ 50%)": dom["angle_deg"].max(), "max bound (λ₁ ≥ 50%)": dom["bound_deg"].max(),
                            "violations > 1e-9°": int((viol > 1e-9).sum()), "max violation (deg)": viol.max(),
                            "max violation, λ₁ ≥ 50% (deg)": vdom.max() if len(vdom) else math.nan})
        sm = pd.DataFrame(summary)
        md += [markdown_table(sm), ""]
        total_viol = int(sm["violations > 1e-9°"].sum())
        md += [f"The bound is violated at {total_viol} of {int(sm['points'].sum())} (method, spectrum) points"
               + (" — it holds everywhere, including the λ₁ ≥ 50% region." if total_viol == 0 else " — see the table."), ""]
        for r in sm.itertuples():
            md.append(f"- {r.method}: largest angle {r._3:.3g}° overall and {r._4:.3g}° where λ₁ holds ≥ 50% of the energy.")
        md.append("")

    k = results[results["part"] == "k_eps"]
    if not k.empty:
        md += [f"## Measured gradient angle of taylor(K, ε) vs the certified truth (ZCA loss, {k['family'].iloc[0]} spectrum, d = {int(k['d'].iloc[0])})", ""]
        piv = k.groupby(["K", "eps"])["angle_deg"].mean().unstack("eps")
        epsv = piv.columns.to_numpy(float)
        pos = epsv[epsv > 0]
        floor = pos.min() / 10 if pos.size else 1e-8
        Kx, Ey = np.meshgrid(piv.index.to_numpy(float), np.log10(np.where(epsv > 0, epsv, floor)))
        Z = np.log10(np.maximum(piv.to_numpy().T, 1e-12))
        names = _surface_pair(Kx, Ey, Z, title="log10 angle (deg), taylor vs truth", xlabel="K",
                              ylabel=f"log10 ε (ε = 0 drawn at {math.log10(floor):.0f})", zlabel="log10 angle",
                              out_dir=out_dir, stem="k_eps")
        _figs(md, names, "K-eps angle")
        tab = piv.reset_index()
        tab.columns = ["K"] + [f"ε={c:g}" for c in piv.columns]
        md += ["Angle in degrees (mean over seeds):", "", markdown_table(tab), ""]
        best = k.loc[k["angle_deg"].idxmin()]
        worst = k.loc[k["angle_deg"].idxmax()]
        md += [f"Smallest angle {best['angle_deg']:.3g}° at K = {int(best['K'])}, ε = {best['eps']:g}; largest {worst['angle_deg']:.3g}° "
               f"at K = {int(worst['K'])}, ε = {worst['eps']:g}. Minimum eigenvalue gap of the matrix: {k['min_abs_gap'].min():.3g}; "
               f"truth certified for {int(k['certified'].sum())} of {len(k)} rows (≥ {k['truth_digits'].min():.3g} digits).", ""]

    gd = results[results["part"] == "gap_d"]
    if not gd.empty:
        md += [f"## Measured gradient angle over (gap δ, d) ({gd['family'].iloc[0]} spectra, ZCA loss)", ""]
        for method, s in gd.groupby("method"):
            piv = s.groupby(["d", "delta"])["angle_deg"].mean().unstack("delta")
            D, L = np.meshgrid(np.log2(piv.index.to_numpy(float)), np.log10(piv.columns.to_numpy(float)))
            Z = np.log10(np.maximum(piv.to_numpy().T, 1e-12))
            names = _surface_pair(D, L, Z, title=f"{method}: log10 angle (deg) vs truth", xlabel="log2 d", ylabel="log10 δ",
                                  zlabel="log10 angle", out_dir=out_dir, stem=f"gap_d_{method.replace(':', '_').replace('=', '').replace(',', '_')}")
            _figs(md, names, f"{method} gap-d angle")
            tab = piv.reset_index()
            tab.columns = ["d"] + [f"δ={c:g}" for c in piv.columns]
            md += [f"**{method}** — angle in degrees:", "", markdown_table(tab), ""]
            worst = s.loc[s["angle_deg"].idxmax()]
            md += [f"- {method}: angle ranges {s['angle_deg'].min():.3g}°–{worst['angle_deg']:.3g}° (largest at d = {int(worst['d'])}, "
                   f"δ = {worst['delta']:g}); non-finite gradients: {int((~s['finite'].astype(bool)).sum())}.", ""]
    return "\n".join(md) + "\n"
