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
  ``projector`` loss (top-r eigenvectors, ``Spec.evaluate``) against the function its forward
  computes: sym(Lemma 1) for an exact forward, L∘forward (``compare.iterated_truth``) for an
  approximate one (``Method.approximate_forward``); a forward that drops a top-r pair computes
  another function and is not scored.
* ``lemma2`` — Lemma 2: ‖Π_A − Π_B‖₂ < 1 ⇒ rank A = rank B. Random pairs of symmetric PSD
  matrices of chosen ranks whose ranges are close (B's range is A's, truncated or extended,
  perturbed by σ·noise, σ log-uniform); ranks and projectors come from ``numpy.linalg.eigh`` of
  the matrices (numerical rank at d·eps·λ_max). A violation is a pair with different ranks and
  ‖Π_A − Π_B‖₂ < 1 − 1e-10: a sanity check only, as two orthogonal projectors of different ranks
  are always exactly 1 apart; the rows give the rank margins (kept/dropped λ over the threshold).
* ``descent`` — the J₂ objective of the normalized-cuts section: W = F Fᵀ (F d×k), target
  Ψ = E Eᵀ (E d×r), J₂ = ½‖Π_W − Π_Ψ‖²_F, plain gradient descent on F. Π_W is computed through
  ``stabkit.torch.eigh(W, method=...)``: the eigenvectors of the numerically nonzero eigenvalues
  (λ > d·eps·λ_max), so the gradient is the method's eigenvector backward; the pseudo-method
  ``lemma1`` instead uses Π_W = W W⁺ with the Lemma 1 gradient (numpy). Logged per step: J₂ and
  rank(W). Since ‖Π_W − Π_Ψ‖²_F = rank W + rank Ψ − 2 tr(Π_WΠ_Ψ) ≥ |rank W − rank Ψ| (a trace
  identity), J₂ < ½ forces rank W = rank Ψ; the report counts the steps that contradict it.
"""

from __future__ import annotations

from ... import methods
from .. import _specs, check_choices, with_defaults
from .._checks import int_list
from ._lemmas import (PSEUDO, descent_rows, lemma1_gradient, lemma1_rows, lemma2_rows, mp_directional_derivative,
                      projector_and_rank, random_rank_r)

PARTS = ("lemma1", "lemma2", "descent")
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = ("d", "r", "seed", "direction", "value", "truth", "rel_err", "fd64_rel_err", "full_rel_err", "chunk",
                  "pair", "rank_a", "rank_b", "sigma", "proj_dist", "kept_over_tol", "dropped_over_tol", "k",
                  "target_rank", "step", "J2", "rank_w", "proj_rank", "grad_norm", "finite")

GRID_DEFAULTS = {
    "parts": list(PARTS),
    # lemma1
    "lemma1_dims": [6, 10],
    "lemma1_ranks": [1, 3, 5],
    "lemma1_directions": 4,
    "lemma1_seeds": [0, 1],
    "lemma1_methods": list(methods.NAMES),  # every registry method (the study file chooses)
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
    "descent_methods": [*PSEUDO, *methods.NAMES],
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
    for key in ("lemma1_seeds", "descent_seeds", "seed"):  # numpy's generators take no negative seed
        int_list(key, out[key], 0, "seed")
    _specs.specs([*out["lemma1_methods"], *(m for m in out["descent_methods"] if m not in PSEUDO)])  # parsed once
    return out


def cell_axes(grid: dict) -> list[dict]:
    """The number of cells as a sum of products (``stabkit.studies._grid.cell_count``), one term per part."""
    terms = {"lemma1": {"lemma1_dims": len(grid["lemma1_dims"]), "lemma1_ranks": len(grid["lemma1_ranks"]),
                        "lemma1_seeds": len(grid["lemma1_seeds"])},
             "lemma2": {"lemma2_cells": grid["lemma2_cells"]},
             "descent": {"descent_methods": len(grid["descent_methods"]), "descent_k": len(grid["descent_k"]),
                         "descent_seeds": len(grid["descent_seeds"])}}
    return [term for part, term in terms.items() if part in grid["parts"]]


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


def run_cell(cell: dict) -> list[dict]:
    part = cell["part"]
    if part == "lemma1":
        return lemma1_rows(cell)
    if part == "lemma2":
        return lemma2_rows(cell)
    if part == "descent":
        return descent_rows(cell)
    raise ValueError(f"projector_rank: unknown part {part!r}")


# ---------------------------------------------------------------- report (report.py)

from .report import descent_contradictions, eigen_route_table, lemma2_violations, report, summary  # noqa: E402

__all__ = ["PARTS", "PSEUDO", "GRID_DEFAULTS", "validate", "cell_axes", "cells", "run_cell", "report", "summary",
           "lemma1_gradient", "lemma1_rows", "lemma2_rows", "descent_rows", "mp_directional_derivative",
           "projector_and_rank", "random_rank_r", "lemma2_violations", "descent_contradictions", "eigen_route_table"]
