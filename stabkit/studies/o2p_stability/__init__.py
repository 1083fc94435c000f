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
(O2P's ε), ``dtypes``, ``pc_methods`` (the declarative layers ``less``, ``ied``, ``ied-power`` and
registry method specs), ``seeds``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ... import methods
from ...validation import DTYPE_NAMES
from .. import _specs, with_defaults
from .._checks import (as_list, check_buildable, choice_list, family_entry, family_label, family_params_text, int_list,
                       no_duplicates)
from ._truth import DPS, o2p_truth, pc_truth

DELTAS = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12)
#: The declarative layers scored on the principal eigenvector beside the registry methods.
DECLARATIVE = ("less", "ied", "ied-power")
DTYPES = DTYPE_NAMES
ROUTES = ("svd", "eig", "svd-dk")
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = ("delta", "d", "eps", "seed", "min_gap", "angle_deg", "rel_err", "norm_ratio", "finite", "seconds",
                  "top_gap", "a_norm", "exact_ties")

GRID_DEFAULTS: dict = {
    "families": [{"family": "cluster", "delta": d} for d in DELTAS] + ["degenerate", "rank_deficient"],
    "d": [8, 32],
    "eps": [1e-3, 1e-8],
    "dtypes": list(DTYPES),
    # the declarative layers, the papers' eigen-gradient methods (SVD, SVD-PI, SVD-Taylor, SVD-Clip) and torch's own
    "pc_methods": [*DECLARATIVE, *_specs.by_paper_name("SVD", "SVD-PI", "SVD-Taylor", "SVD-Clip"), *_specs.native_names()],
    "seeds": [0, 1, 2],
}


# ----------------------------------------------------------------------------- grid


def validate(grid: dict) -> dict:
    full = with_defaults("o2p_stability", grid, GRID_DEFAULTS)
    families = [family_entry(f) for f in as_list("families", full["families"])]
    no_duplicates("families", families)
    eps = []
    for item in as_list("eps", full["eps"]):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < 1:
            raise ValueError(f"grid key 'eps': O2P's ε must be a number in (0, 1), got {item!r}")
        eps.append(float(item))
    no_duplicates("eps", eps)
    d_values, seeds = int_list("d", full["d"], 2, "matrix size"), int_list("seeds", full["seeds"], 0, "seed")
    check_buildable(families, d_values, seeds[0], usable=_has_eigenpairs)
    return {
        "families": families,
        "d": d_values,
        "eps": eps,
        "dtypes": choice_list("dtypes", full["dtypes"], DTYPES),
        "pc_methods": _pc_methods(full["pc_methods"]),
        "seeds": seeds,
    }


def _has_eigenpairs(spectrum) -> None:
    """F = P diag(√λ) Qᵀ is built from the spectrum's exact eigenvalues and eigenvectors."""
    if spectrum.eigenvalues is None or spectrum.basis is None:
        raise ValueError("the family gives no exact eigenvalues and eigenvectors, from which F is built")


def _pc_methods(value) -> list[str]:
    """Declarative layer names as they are, method specs parsed once and kept as canonical text."""
    out = []
    for item in as_list("pc_methods", value):
        if item in DECLARATIVE:
            out.append(item)
            continue
        try:
            out.append(str(methods.spec(item)))
        except ValueError as exc:
            raise ValueError(f"grid key 'pc_methods': {item!r} is neither a declarative layer "
                             f"({', '.join(DECLARATIVE)}) nor a method spec: {exc}") from None
    no_duplicates("pc_methods", out)
    return out


def cell_axes(grid: dict) -> list[dict]:
    """The sizes whose product is the number of cells (``stabkit.studies._grid.cell_count``)."""
    return [{key: len(grid[key]) for key in ("families", "d", "eps", "seeds")}]


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
    """∂L/∂A for L = yᵀBy + (wᵀy)², y the principal eigenvector by ``method``: a declarative layer
    name or a method (Spec, or text parsed here once)."""
    import torch
    from ... import layers
    from ...torch import eigh_kept, symmetrize
    from ...layers.ied import fix_sign
    a = torch.tensor(A, dtype=dtype, requires_grad=True)
    if method == "less":
        y, _ = layers.less(a)
    elif method in ("ied", "ied-power"):
        Y, _ = layers.ied(a, solver="eigh" if method == "ied" else "power")
        y = Y[..., 0]
    else:
        spec = methods.spec(method)
        _, U, kept = eigh_kept(symmetrize(a), spec)
        if not bool(kept[..., -1].all()):
            # a truncating method (pi) that drops the principal pair does not compute this loss at all
            raise ValueError(f"{spec} drops the principal eigenpair here: its function has no principal vector")
        y = fix_sign(U[..., -1:])[..., 0]
    Bt, wt = torch.as_tensor(B, dtype=dtype), torch.as_tensor(w, dtype=dtype)
    loss = (y * (Bt @ y)).sum() + (wt * y).sum() ** 2
    (g,) = torch.autograd.grad(loss, a)
    return g.double().numpy()


def run_cell(cell: dict) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    sp, F, G, B, w = _inputs(cell)
    entry = cell["family"]
    base = {
        "family": entry["family"], "family_params": family_params_text(entry),
        "delta": float(entry.get("delta", math.nan)), "d": cell["d"], "eps": cell["eps"], "seed": cell["seed"],
    }
    base["min_gap"] = float(np.diff(np.sort(sp.eigenvalues)).min())
    # parsed once per cell: the layers by name, the registry methods as Specs
    pc_methods = [m if m in DECLARATIVE else methods.spec(m) for m in cell["pc_methods"]]
    rows = []
    for dtype_name in cell["dtypes"]:
        dtype = getattr(torch, dtype_name)
        rows += _o2p_rows(base, F.astype(dtype_name), G, cell["eps"], dtype_name, dtype)
        rows += _pc_rows(base, sp.matrix.astype(dtype_name), B, w, pc_methods, dtype_name, dtype)
    return rows


def _timed(grad, truth):
    """(metrics, seconds, error) of one gradient; a failed solver is a result of the method, not a crash."""
    from ... import metrics

    t0 = time.perf_counter()
    err = ""
    try:
        g = grad()
    except Exception as exc:
        g, err = np.full_like(truth, np.nan), f"{type(exc).__name__}: {exc}"[:200]
    return {**metrics.gradient_metrics(g, truth), "seconds": time.perf_counter() - t0}, err


def _o2p_rows(base, Fd, G, eps, dtype_name, dtype) -> list[dict]:
    truth = o2p_truth(Fd.astype(np.float64), G, eps)
    rows = []
    for route in ROUTES:
        scores, err = _timed(lambda: _o2p_grad(Fd, G, eps, route, dtype), truth)
        rows.append({**base, "part": "o2p", "dtype": dtype_name, "method": route, **scores,
                     "top_gap": math.nan, "a_norm": math.nan, "exact_ties": -1, "error": err})
    return rows


def _pc_rows(base, Ad, B, w, pc_methods, dtype_name, dtype) -> list[dict]:
    import torch

    truth, top_gap = pc_truth(Ad, B, w)
    ties = int((torch.diff(torch.linalg.eigh(torch.as_tensor(Ad)).eigenvalues) == 0).sum())  # as the methods see them
    a_norm = float(np.abs(np.linalg.eigvalsh(Ad.astype(np.float64))).max())  # ‖A‖₂ of the float input
    rows = []
    for method in pc_methods:
        scores, err = _timed(lambda: _pc_grad(Ad, B, w, method, dtype), truth)
        rows.append({**base, "part": "pc", "dtype": dtype_name, "method": str(method), **scores,
                     "top_gap": top_gap, "a_norm": a_norm, "exact_ties": ties, "error": err})
    return rows


# ----------------------------------------------------------------------------- report (report.py)

from .report import report  # noqa: E402

__all__ = ["GRID_DEFAULTS", "DECLARATIVE", "DTYPES", "ROUTES", "DPS", "validate", "cell_axes", "cells", "run_cell", "report",
           "o2p_truth", "pc_truth"]
