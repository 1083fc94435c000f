"""Study kind ``gradient_accuracy``: how wrong is each method's gradient, across spectra and sizes?

One cell = (spectrum family variant, d, dtype, loss, seed). The cell builds the matrix with
``spectra.make``, computes the certified ground truth once (cached on disk, shared by all
methods of the cell) and scores every method with :func:`stabkit.compare.compare`. A loss that
is undefined on the spectrum (zca on a singular matrix, eigvec on a degenerate one) yields one
row per method carrying the reason in ``error`` and no truth: that is a result, not a crash.

Grid keys (see ``GRID_DEFAULTS``): ``methods`` (method specs), ``families`` (family names or
tables ``{family="cluster", delta=1e-8}``), ``d``, ``dtypes``, ``losses``, ``seeds``.
"""

from __future__ import annotations

import math

import numpy as np

from ... import methods as _methods
from ...losses import LOSSES
from ...validation import DTYPE_NAMES
from .. import _specs, with_defaults
from .._checks import (as_list, check_buildable, choice_list, family_entry, family_label, family_params_text, int_list,
                       no_duplicates)

GRID_DEFAULTS: dict = {
    "methods": list(_methods.NAMES),
    "families": (
        ["separated"]
        + [{"family": "cluster", "delta": delta} for delta in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12)]
        + ["degenerate", "rank_deficient"]
        + [{"family": "lapack", "mode": mode} for mode in range(1, 7)]
        + ["wishart"]
    ),
    "d": [4, 8, 16, 32, 64, 128, 256],
    "dtypes": list(DTYPE_NAMES),
    "losses": ["zca", "eigvec", "sqrt"],
    "seeds": [0],
}

#: Result columns, in order (each row also carries the runner's ``cell_id`` first).
COLUMNS = (
    "family", "family_params", "d", "dtype", "loss", "seed", "method",
    "angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds",
    "truth_digits", "truth_certified",
    "min_abs_gap", "min_rel_gap", "max_abs_K", "numerical_rank", "condition", "error",
)

#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in ("family", "family_params", "dtype", "loss", "method", "error"))
DTYPES = DTYPE_NAMES


# ----------------------------------------------------------------------------- grid


def validate(grid: dict) -> dict:
    """The complete grid (defaults filled in), checked; ValueError naming the key and allowed values."""
    merged = with_defaults("gradient_accuracy", grid, GRID_DEFAULTS)
    specs = _method_texts(merged["methods"])
    d_values = int_list("d", merged["d"], 2, "matrix size d")
    dtypes = choice_list("dtypes", merged["dtypes"], DTYPES)
    losses = choice_list("losses", merged["losses"], LOSSES)
    seeds = int_list("seeds", merged["seeds"], 0, "seed")
    families = [family_entry(item) for item in as_list("families", merged["families"])]
    no_duplicates("families", [family_label(f) for f in families])
    check_cost({"d": d_values}, force=True)  # a d whose truth cannot fit is refused before any build
    check_buildable(families, d_values, seeds[0])  # a variant failing at some sizes only: "not built" rows there
    return {"methods": specs, "families": families, "d": d_values, "dtypes": dtypes, "losses": losses,
            "seeds": seeds}


def check_cost(grid: dict, force: bool = False) -> None:
    """Refuse, before any matrix is built, a largest d whose certified truth cannot fit in memory or
    (unless ``force``) is estimated to take too long (:func:`stabkit.compare.check_truth_cost`)."""
    from ...compare import check_truth_cost

    merged = with_defaults("gradient_accuracy", grid, GRID_DEFAULTS)
    try:
        specs = [_methods.spec(m) for m in as_list("methods", merged["methods"])]
    except ValueError:  # a bad method spec: ``validate`` names it
        specs = []
    check_truth_cost(max(int_list("d", merged["d"], 2, "matrix size d")), force, specs=specs)


def _method_texts(value) -> list[str]:
    """Each method spec parsed once (``methods.spec``), kept as its canonical text (the grid is JSON)."""
    specs = []
    for item in as_list("methods", value):
        if not isinstance(item, str):
            raise ValueError(f"grid key 'methods': a method spec is text like 'taylor:K=19', got {item!r}")
        try:
            specs.append(str(_methods.spec(item)))
        except ValueError as exc:
            raise ValueError(f"grid key 'methods': {exc}") from None
    no_duplicates("methods", specs)
    return specs


def cell_axes(grid: dict) -> list[dict]:
    """The sizes whose product is the number of cells (``stabkit.studies._grid.cell_count``)."""
    return [{key: len(grid[key]) for key in ("families", "d", "dtypes", "losses", "seeds")}]


def cells(grid: dict) -> list[dict]:
    """One cell per (family variant, d, dtype, loss, seed), in that nesting order."""
    out = []
    for entry in grid["families"]:
        for d in grid["d"]:
            for dtype in grid["dtypes"]:
                for loss in grid["losses"]:
                    for seed in grid["seeds"]:
                        out.append({
                            "cell_id": f"{family_label(entry)}|d={d}|{dtype}|{loss}|seed={seed}",
                            "family": entry["family"],
                            "family_params": {k: v for k, v in entry.items() if k != "family"},
                            "d": d, "dtype": dtype, "loss": loss, "seed": seed,
                            "methods": list(grid["methods"]),
                        })
    return out


# ----------------------------------------------------------------------------- one cell


def run_cell(cell: dict) -> list[dict]:
    """Every method of the cell against the shared ground truth: one row per method."""
    from ... import spectra
    from ...compare import compare

    specs = _specs.specs(cell["methods"])  # parsed once per cell, passed on as Specs
    params = dict(cell["family_params"])
    base = {
        "family": cell["family"],
        "family_params": family_params_text({"family": cell["family"], **params}),
        "d": cell["d"], "dtype": cell["dtype"], "loss": cell["loss"], "seed": cell["seed"],
    }
    try:
        spectrum = spectra.make(cell["family"], cell["d"], seed=cell["seed"], dtype=cell["dtype"], **params)
    except ValueError as exc:  # this variant does not exist at this size (validate checked the others)
        return _unbuilt_rows(base, specs, exc)
    try:
        result = compare(spectrum.matrix, cell["loss"], specs, dtype=cell["dtype"], seed=cell["seed"])
    except ValueError as exc:  # the loss is undefined on this spectrum: record why, per method
        return _undefined_rows(base, specs, spectrum, cell["dtype"], exc)
    return [_scored_row(base, row, result) for row in result.rows]


def _unbuilt_rows(base: dict, specs, exc) -> list[dict]:
    nan = math.nan
    return [
        {**base, "method": str(spec), "angle_deg": nan, "angle_full_deg": nan, "kept": -1, "rel_err": nan,
         "norm_ratio": nan, "finite": False,
         "seconds": 0.0, "truth_digits": nan, "truth_certified": False, "min_abs_gap": nan,
         "min_rel_gap": nan, "max_abs_K": nan, "numerical_rank": -1, "condition": nan,
         "error": f"not built: {exc}"}
        for spec in specs
    ]


def _undefined_rows(base: dict, specs, spectrum, dtype: str, exc) -> list[dict]:
    from ... import metrics

    lam = spectrum.eigenvalues  # None for sampled families (wishart): use the matrix's own
    if lam is None:
        lam = np.linalg.eigvalsh(np.asarray(spectrum.matrix, dtype=np.float64))
    diag = metrics.spectrum_diagnostics(lam, np.dtype(dtype))
    reason = f"undefined: {exc}"
    return [
        {**base, "method": str(spec), "angle_deg": math.nan, "angle_full_deg": math.nan, "kept": -1,
         "rel_err": math.nan, "norm_ratio": math.nan,
         "finite": False, "seconds": 0.0, "truth_digits": math.nan, "truth_certified": False,
         **_diag(diag), "error": reason}
        for spec in specs
    ]


def _scored_row(base: dict, row: dict, result) -> dict:
    # a truncating method (pi) is scored against the truth of its own function (compare.py); the
    # row's truth digits are the fewer of that truth's and the untruncated one's (NaN: no truth
    # of the truncated function, so the row is not scored)
    digits = math.nan if math.isnan(row["truth_digits"]) else float(min(result.truth.digits, row["truth_digits"]))
    return {
        **base, "method": row["method"],
        "angle_deg": float(row["angle_deg"]), "angle_full_deg": float(row["angle_full_deg"]),
        "kept": int(row["kept"]), "rel_err": float(row["rel_err"]),
        "norm_ratio": float(row["norm_ratio"]), "finite": bool(row["finite"]),
        "seconds": float(row["seconds"]),
        "truth_digits": digits, "truth_certified": bool(digits >= 12),
        **_diag(result.diagnostics), "error": row.get("error"),
    }


def _diag(diag: dict) -> dict:
    return {
        "min_abs_gap": float(diag["min_abs_gap"]), "min_rel_gap": float(diag["min_rel_gap"]),
        "max_abs_K": float(diag["max_abs_K"]), "numerical_rank": int(diag["numerical_rank"]),
        "condition": float(diag["condition"]),
    }


# ----------------------------------------------------------------------------- report (report.py)

from ._scoring import ANGLE_FLOOR, NONFINITE_Y, TIE_FACTOR, summary, verdicts  # noqa: E402
from .report import report  # noqa: E402

__all__ = ["GRID_DEFAULTS", "COLUMNS", "DTYPES", "validate", "cell_axes", "cells", "run_cell", "report", "summary", "verdicts",
           "family_label", "family_params_text", "ANGLE_FLOOR", "NONFINITE_Y", "TIE_FACTOR"]
