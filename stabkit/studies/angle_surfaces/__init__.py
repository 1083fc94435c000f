"""Study kind ``angle_surfaces``: where the Taylor / clipped gradients lose direction, as surfaces.

Parts (the ``part`` column of the results):

* ``energy`` — Wang et al., "Robust Differentiable SVD", TPAMI 2021, Fig. 4: the degree-K Taylor
  expansion (1/λ_i) Σ_{k≤K} r^k of 1/(λ_i − λ_j), r = λ_j/λ_i < 1, equals the exact value times
  1 − r^{K+1}, so the share of the gradient factor it discards is r^{K+1}. Measured from the
  registry kernels (``Spec.kernel`` of ``series_method`` at degree K against the exact F on the
  spectrum (λ_j, λ_i)) and compared with the closed form.
* ``angle3`` — the appendix analysis of the same paper (Fig. 11): for a 3×3 spectrum
  λ₁ ≥ λ₂ ≥ λ₃ > 0 (λ₁ = 1) the column of K̃ belonging to λ₁, k = (1/(λ₁ − λ₂), 1/(λ₁ − λ₃)),
  against its Taylor (degree K) and clipped (τ) versions over the (λ₂/λ₁, λ₃/λ₁) plane (the
  methods of ``angle_methods``, each with the parameters of its spec: the registry defaults, the
  paper's K = 9 and τ = 100, unless the spec text sets others, e.g. ``clip:tau=10``).
  Both approximations scale entry j of k by a factor c_j ∈ (0, 1] (Taylor: 1 − (λ_j/λ₁)^{K+1};
  clip: min(1, τ(λ₁ − λ_j))). The bound checked: by the Kantorovich inequality applied to the
  diagonal scaling D = diag(c), cos∠(k, Dk) ≥ 2√m / (1 + m) with m = min_j c_j / max_j c_j, i.e.
  angle ≤ arccos(2√m/(1 + m)). It is checked at every grid point and reported separately for
  the region where λ₁ holds at least 50% of the energy (λ₂ + λ₃ ≤ λ₁), the case the paper's
  appendix singles out; the maximum violation must be zero (up to 1e-9 degrees of rounding).
  This is our statement of the bound (derived here), not a quotation of the paper's constant.
* ``k_eps`` — measured angle between the gradient of ``series_method`` at (K, ε) and the certified truth
  (``reference.ground_truth``) for the ZCA loss on one matrix with a clustered spectrum, over (K, ε).
* ``gap_d`` — the same angle for each method in ``gap_methods`` on matrices from
  ``stabkit.spectra`` whose eigenvalue gap is set by δ, over (δ, d) — for ``cluster`` δ is relative:
  the smallest gap is λ_c·δ (0.55·δ at the even d of the default grid; the report computes the
  ratio from the matrices). Both measured parts score against the truth of the loss itself, so
  their methods must compute it: a method whose forward iterates or drops eigenpairs
  (``Method.approximate_forward``, a ``kept_rule``: ``pi``, ``pi-forward``, ``analytic-trunc``…)
  is refused, as its own function is another (``stabkit.compare`` scores those).

Figures are contour plots and 3-D surfaces (matplotlib, Agg backend).
"""

from __future__ import annotations

import inspect

import numpy as np

from ... import methods, metrics
from .. import _specs, check_choices, with_defaults
from .._checks import int_list

PARTS = ("energy", "angle3", "k_eps", "gap_d")
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = ("K", "r", "discarded", "closed_form", "x", "y", "angle_deg", "bound_deg", "energy_top", "eps", "d",
                  "seed", "min_abs_gap", "truth_digits", "certified", "rel_err", "norm_ratio", "finite", "delta")

GRID_DEFAULTS = {
    "parts": list(PARTS),
    # the truncated series of the energy and k_eps parts (its K is swept): Wang et al.'s SVD-Taylor
    "series_method": _specs.by_paper_name("SVD-Taylor")[0],
    # energy
    "energy_K": list(range(1, 31)),
    "energy_ratios": 60,  # r on a uniform grid in [0.02, 0.99]
    # angle3: the approximations of F compared with the exact one (Wang et al.'s SVD-Taylor and SVD-Clip)
    "angle_methods": _specs.by_paper_name("SVD-Taylor", "SVD-Clip"),
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
    "gap_methods": _specs.by_paper_name("SVD-Taylor", "SVD-Clip"),
    "seeds": [0],
    "loss_seed": 0,
}


def validate(grid: dict) -> dict:
    out = with_defaults("angle_surfaces", grid, GRID_DEFAULTS)
    check_choices("angle_surfaces", "parts", out["parts"], PARTS)
    if any(int(k) != k or k < 0 for k in [*out["energy_K"], *out["k_values"]]):
        raise ValueError("angle_surfaces: energy_K and k_values must be non-negative integers")
    if out["energy_ratios"] < 2 or out["ratio_points"] < 3:
        raise ValueError("angle_surfaces: energy_ratios must be ≥ 2 and ratio_points ≥ 3")
    if any(e < 0 for e in out["eps_values"]) or any(g <= 0 for g in out["gap_deltas"]):
        raise ValueError("angle_surfaces: gap_deltas must be positive, eps_values ≥ 0")
    if any(int(d) != d or d < 2 for d in [*out["gap_dims"], out["cluster_d"]]):
        raise ValueError("angle_surfaces: gap_dims and cluster_d must be integers ≥ 2")
    for part, key in (("energy", "energy_K"), ("k_eps", "k_values"), ("k_eps", "eps_values"), ("gap_d", "gap_deltas"),
                      ("gap_d", "gap_dims")):
        if part in out["parts"] and len(out[key]) < 2:  # an axis of the part's contour plot
            raise ValueError(f"angle_surfaces: {key} needs at least 2 values (an axis of the {part} contour plot), "
                             f"got {out[key]}")
    for key in ("seeds", "loss_seed"):  # numpy's generators take no negative seed
        int_list(key, out[key], 0, "seed")
    _check_spectra(out)
    _check_methods(out)
    return out


def _check_spectra(grid: dict) -> None:
    """The spectrum family of each measured part in the grid, its parameter table's names and gap_d's
    gap_param (the parameter δ sets) among ``stabkit.spectra``'s (a ValueError naming the key and the
    allowed values), before any cell builds a spectrum."""
    from ... import spectra

    for part, family_key, params_key in (("k_eps", "cluster_family", "cluster_params"), ("gap_d", "gap_family", "gap_params")):
        if part not in grid["parts"]:
            continue
        family = grid[family_key]
        if not isinstance(family, str) or family not in spectra.FAMILIES:
            raise ValueError(f"angle_surfaces: grid key {family_key!r}: unknown spectrum family {family!r} "
                             f"(allowed: {', '.join(spectra.FAMILIES)})")
        allowed = [p for p in inspect.signature(spectra.FAMILIES[family]).parameters if p not in ("d", "rng")]
        named = [("gap_param", grid["gap_param"])] if part == "gap_d" else []
        if not isinstance(grid[params_key], dict):
            raise ValueError(f"angle_surfaces: grid key {params_key!r} must be a table, got {grid[params_key]!r}")
        named += [(params_key, name) for name in grid[params_key]]
        for key, name in named:
            if not isinstance(name, str) or name not in allowed:
                raise ValueError(f"angle_surfaces: grid key {key!r}: {name!r} is no parameter of spectrum family "
                                 f"{family!r} (allowed: {', '.join(allowed)})")
        _check_buildable(grid, part, family, params_key)


def _check_buildable(grid: dict, part: str, family: str, params_key: str) -> None:
    """Each spectrum the part's cells build, once at each of its sizes (cheap next to a truth): values the
    family refuses (cluster delta ≤ 0, k > d, ...) at every size are the study file's mistake, not N failed cells."""
    sizes = [grid["cluster_d"]] if part == "k_eps" else grid["gap_dims"]
    variants = ([dict(grid[params_key])] if part == "k_eps" else
                [{**grid[params_key], grid["gap_param"]: delta} for delta in grid["gap_deltas"]])
    seed = int((grid["seeds"] or [0])[0])
    for params in variants:
        errors = []
        for d in sizes:
            try:
                _spectrum(family, int(d), seed, params)
            except (ValueError, TypeError) as exc:
                errors.append(f"at d={d}: {exc}")
        if errors and len(errors) == len(sizes):
            shown = ", ".join(f"{key}={value}" for key, value in params.items())
            keys = f"key {params_key!r}" if part == "k_eps" else "keys 'gap_params', 'gap_param' and 'gap_deltas'"
            raise ValueError(f"angle_surfaces: grid {keys}: {family}({shown}) cannot be built: {errors[0]}")


def _check_methods(grid: dict) -> None:
    """Each method spec parsed once (ValueError naming the allowed methods / parameters); the series
    method needs a kernel with a degree K, the angle methods a kernel."""
    series = methods.spec(grid["series_method"])
    if series.method.kernel is None or not {"K", "eps"} <= set(series.params):
        raise ValueError(f"angle_surfaces: series_method {grid['series_method']!r} must be a kernel method "
                         "with a degree K and a shift eps")
    for spec in _specs.specs(grid["angle_methods"]):
        if spec.method.kernel is None:
            raise ValueError(f"angle_surfaces: angle_methods: {spec} has no kernel F to compare")
    for spec in _specs.specs(grid["gap_methods"]):  # scored against the truth of L itself: an exact forward only
        if spec.method.approximate_forward or spec.method.kept_rule is not None:
            raise ValueError(f"angle_surfaces: gap_methods: {spec} computes another function than the loss (its forward "
                             "iterates or drops eigenpairs), which this study's truth is not; compare it with "
                             "`stabkit compare` or a gradient_accuracy study, which score it against its own function")


def cell_axes(grid: dict) -> list[dict]:
    """The number of cells as a sum of products (``stabkit.studies._grid.cell_count``): one cell each for
    energy and angle3, seeds × k_values for k_eps, seeds × gap_dims × gap_deltas for gap_d."""
    axes = {"energy": (), "angle3": (), "k_eps": ("seeds", "k_values"), "gap_d": ("seeds", "gap_dims", "gap_deltas")}
    return [{key: len(grid[key]) for key in keys} for part, keys in axes.items() if part in grid["parts"]]


def cells(grid: dict) -> list[dict]:
    g = validate(grid)
    out = []
    if "energy" in g["parts"]:
        out.append({"cell_id": "energy", "part": "energy", "K": list(g["energy_K"]), "ratios": int(g["energy_ratios"]),
                    "method": g["series_method"]})
    if "angle3" in g["parts"]:
        out.append({"cell_id": "angle3", "part": "angle3", "points": int(g["ratio_points"]),
                    "methods": list(g["angle_methods"])})
    if "k_eps" in g["parts"]:
        for seed in g["seeds"]:
            for K in g["k_values"]:
                out.append({"cell_id": f"k_eps-K{K}-s{seed}", "part": "k_eps", "K": int(K), "eps": list(g["eps_values"]),
                            "family": g["cluster_family"], "params": dict(g["cluster_params"]), "d": int(g["cluster_d"]),
                            "seed": int(seed), "loss_seed": int(g["loss_seed"]), "method": g["series_method"]})
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


def discarded_share(K: int, r, method=None) -> np.ndarray:
    """1 − F_series/F_exact for the pair (λ_j, λ_i) = (r, 1), from the registry kernels: the series
    ``method`` (a spec; default the grid's ``series_method``) at degree K against the exact F."""
    series = methods.spec(GRID_DEFAULTS["series_method"] if method is None else method).replace(K=K)
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    lam = np.stack([r, np.ones_like(r)], axis=-1)  # ascending: λ_j = r < λ_i = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        approx = series.kernel(lam)[..., 0, 1]
        exact = _specs.exact().kernel(lam)[..., 0, 1]
    return 1 - approx / exact


def kantorovich_angle_bound(c: np.ndarray) -> np.ndarray:
    """Largest angle (degrees) between a positive vector k and diag(c)·k, c > 0 along the last axis."""
    hi = c.max(-1)
    m = c.min(-1) / hi
    # cos θ = 2√m/(1+m) ⇔ tan θ = (1 − m)/(2√m); the atan2 form keeps full accuracy as m → 1
    return np.degrees(np.arctan2((hi - c.min(-1)) / hi, 2 * np.sqrt(m)))


def angle3_rows(points: int, compared=None) -> list[dict]:
    """Angle and Kantorovich bound at every point of the (λ₂/λ₁, λ₃/λ₁) plane for each method of
    ``compared`` (specs with their own parameters; default the grid's ``angle_methods``)."""
    t = np.linspace(0, 1, points)[1:-1]  # open interval: λ₁ > λ₂, λ₃ > 0
    x, y = np.meshgrid(t, t, indexing="ij")
    keep = y < x  # λ₃ < λ₂
    x, y = x[keep], y[keep]
    lam = np.stack([y, x, np.ones_like(x)], axis=-1)  # ascending λ₃, λ₂, λ₁ = 1
    labels = list(GRID_DEFAULTS["angle_methods"] if compared is None else compared)
    with np.errstate(divide="ignore", invalid="ignore"):  # the kernels' diagonals are 1/0, then zeroed
        exact = _specs.exact().kernel(lam)[..., 2, :2]  # row of F for λ₁ = column of K̃ (F = K̃ᵀ)
        approxs = []
        for label, spec in zip(labels, _specs.specs(labels)):  # parsed once per cell
            approxs.append((label, spec.kernel(lam)[..., 2, :2]))
    rows = []
    for name, approx in approxs:
        c = approx / exact
        bound = kantorovich_angle_bound(c)
        for i in range(x.size):
            angle = metrics.angle_deg(approx[i], exact[i])
            rows.append({"part": "angle3", "method": name, "x": float(x[i]), "y": float(y[i]), "angle_deg": angle,
                         "bound_deg": float(bound[i]), "energy_top": float(1 / (1 + x[i] + y[i]))})
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


def _measured_setup(family, d, seed, params, loss_seed):
    """(spectrum, zca loss, certified truth, spectrum diagnostics) of one measured cell."""
    from ... import losses, reference

    sp = _spectrum(family, d, seed, params)
    loss = losses.make_loss("zca", d, seed=loss_seed)
    truth = reference.ground_truth(sp.matrix, loss)
    return sp, loss, truth, metrics.spectrum_diagnostics(_eigenvalues(sp))


def _energy_rows(cell: dict) -> list[dict]:
    rs = np.linspace(0.02, 0.99, cell["ratios"])
    series = methods.spec(cell["method"])  # parsed once per cell
    rows = []
    for K in cell["K"]:
        measured = discarded_share(K, rs, series)
        for r, m in zip(rs, measured):
            rows.append({"part": "energy", "K": int(K), "r": float(r), "discarded": float(m),
                         "closed_form": float(r ** (K + 1))})
    return rows


def _k_eps_rows(cell: dict) -> list[dict]:
    sp, loss, truth, diag = _measured_setup(cell["family"], cell["d"], cell["seed"], cell["params"], cell["loss_seed"])
    series = methods.spec(cell["method"])  # parsed once per cell
    rows = []
    for eps in cell["eps"]:
        g, _, _ = series.replace(K=cell["K"], eps=eps).gradient(sp.matrix, loss)
        rows.append({"part": "k_eps", "method": cell["method"], "K": cell["K"], "eps": float(eps), "d": cell["d"], "seed": cell["seed"],
                     "family": cell["family"], "min_abs_gap": diag["min_abs_gap"], "truth_digits": float(truth.digits),
                     "certified": bool(truth.certified), **metrics.gradient_metrics(g, truth.grad)})
    return rows


def _gap_d_rows(cell: dict) -> list[dict]:
    params = {**cell["params"], cell["param"]: cell["delta"]}
    sp, loss, truth, diag = _measured_setup(cell["family"], cell["d"], cell["seed"], params, cell["loss_seed"])
    rows = []
    for label, spec in zip(cell["methods"], _specs.specs(cell["methods"])):  # parsed once per cell
        g, _, _ = spec.gradient(sp.matrix, loss)
        rows.append({"part": "gap_d", "method": label, "d": cell["d"], "delta": cell["delta"], "seed": cell["seed"],
                     "family": cell["family"], "min_abs_gap": diag["min_abs_gap"], "truth_digits": float(truth.digits),
                     "certified": bool(truth.certified), **metrics.gradient_metrics(g, truth.grad)})
    return rows


def run_cell(cell: dict) -> list[dict]:
    part = cell["part"]
    if part == "angle3":
        return angle3_rows(cell["points"], cell["methods"])
    runs = {"energy": _energy_rows, "k_eps": _k_eps_rows, "gap_d": _gap_d_rows}
    if part not in runs:
        raise ValueError(f"angle_surfaces: unknown part {part!r}")
    return runs[part](cell)


# ---------------------------------------------------------------- report (report.py)

from .report import report  # noqa: E402

__all__ = ["PARTS", "GRID_DEFAULTS", "validate", "cell_axes", "cells", "run_cell", "report", "discarded_share",
           "kantorovich_angle_bound", "angle3_rows"]
