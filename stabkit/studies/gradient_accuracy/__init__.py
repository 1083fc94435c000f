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
from pathlib import Path

import numpy as np
import pandas as pd

from ... import methods as _methods
from ...losses import LOSSES
from .. import with_defaults

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
    "dtypes": ["float32", "float64"],
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

DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------- grid


def _as_list(key: str, value) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"grid key {key!r} is empty: give at least one value")
    return items


def _no_duplicates(key: str, items: list) -> None:
    seen = set()
    for item in items:
        marker = repr(item)
        if marker in seen:
            raise ValueError(f"grid key {key!r}: {item!r} appears twice")
        seen.add(marker)


def _int_list(key: str, value, minimum: int, what: str) -> list[int]:
    out = []
    for item in _as_list(key, value):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item != int(item) or item < minimum:
            raise ValueError(f"grid key {key!r}: {what} must be an integer ≥ {minimum}, got {item!r}")
        out.append(int(item))
    _no_duplicates(key, out)
    return out


def _choice_list(key: str, value, allowed) -> list[str]:
    out = []
    for item in _as_list(key, value):
        if item not in allowed:
            raise ValueError(f"grid key {key!r}: unknown value {item!r} (allowed: {', '.join(allowed)})")
        out.append(item)
    _no_duplicates(key, out)
    return out


def _family_entry(item) -> dict:
    from ... import spectra

    if isinstance(item, str):
        entry = {"family": item}
    elif isinstance(item, dict) and isinstance(item.get("family"), str):
        entry = dict(item)
    else:
        raise ValueError(
            f"grid key 'families': each entry is a family name or a table with a 'family' key, got {item!r}"
        )
    if entry["family"] not in spectra.FAMILIES:
        raise ValueError(
            f"grid key 'families': unknown spectrum family {entry['family']!r} "
            f"(allowed: {', '.join(spectra.FAMILIES)})"
        )
    for key, value in entry.items():
        if key != "family" and (isinstance(value, (list, dict)) or value is None):
            raise ValueError(f"grid key 'families': parameter {key}={value!r} of {entry['family']!r} must be a scalar")
    return entry


def family_params_text(entry: dict) -> str:
    """``{"family": "cluster", "delta": 1e-8}`` → ``"delta=1e-08"`` (sorted, empty if none)."""
    return ",".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(entry.items()) if k != "family"
    )


def family_label(entry: dict) -> str:
    params = family_params_text(entry)
    return f"{entry['family']}({params})" if params else entry["family"]


def validate(grid: dict) -> dict:
    """The complete grid (defaults filled in), checked; ValueError naming the key and allowed values."""
    from ... import spectra

    merged = with_defaults("gradient_accuracy", grid, GRID_DEFAULTS)

    specs = []
    for item in _as_list("methods", merged["methods"]):
        if not isinstance(item, str):
            raise ValueError(f"grid key 'methods': a method spec is text like 'taylor:K=19', got {item!r}")
        try:
            specs.append(_methods.format_spec(*_methods.parse_spec(item)))
        except ValueError as exc:
            raise ValueError(f"grid key 'methods': {exc}") from None
    _no_duplicates("methods", specs)

    d_values = _int_list("d", merged["d"], 2, "matrix size d")
    dtypes = _choice_list("dtypes", merged["dtypes"], DTYPES)
    losses = _choice_list("losses", merged["losses"], LOSSES)
    seeds = _int_list("seeds", merged["seeds"], 0, "seed")

    families = [_family_entry(item) for item in _as_list("families", merged["families"])]
    _no_duplicates("families", [family_label(f) for f in families])
    # Impossible parameters (unknown family parameter, cluster of k > d, ...) surface here, before
    # any work: every variant is built once at every size (cheap next to a ground truth). A variant
    # that cannot be built at any size of the grid is an error; one that fails only at some sizes
    # (delta=1e-2 clusters do not fit in large d) gives "not built" rows for those cells.
    for entry in families:
        params = {k: v for k, v in entry.items() if k != "family"}
        errors = []
        for d in d_values:
            try:
                spectra.make(entry["family"], d, seed=seeds[0], dtype="float64", **params)
            except (ValueError, TypeError) as exc:
                errors.append(f"at d={d}: {exc}")
        if len(errors) == len(d_values):
            raise ValueError(f"grid key 'families': {family_label(entry)} cannot be built: {errors[0]}")

    return {"methods": specs, "families": families, "d": d_values, "dtypes": dtypes, "losses": losses,
            "seeds": seeds}


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
    from ... import metrics, spectra
    from ...compare import compare

    params = dict(cell["family_params"])
    base = {
        "family": cell["family"],
        "family_params": family_params_text({"family": cell["family"], **params}),
        "d": cell["d"], "dtype": cell["dtype"], "loss": cell["loss"], "seed": cell["seed"],
    }
    nan = math.nan
    try:
        spectrum = spectra.make(cell["family"], cell["d"], seed=cell["seed"], dtype=cell["dtype"], **params)
    except ValueError as exc:  # this variant does not exist at this size (validate checked the others)
        return [
            {**base, "method": spec, "angle_deg": nan, "angle_full_deg": nan, "kept": -1, "rel_err": nan,
             "norm_ratio": nan, "finite": False,
             "seconds": 0.0, "truth_digits": nan, "truth_certified": False, "min_abs_gap": nan,
             "min_rel_gap": nan, "max_abs_K": nan, "numerical_rank": -1, "condition": nan,
             "error": f"not built: {exc}"}
            for spec in cell["methods"]
        ]
    try:
        result = compare(spectrum.matrix, cell["loss"], cell["methods"], dtype=cell["dtype"], seed=cell["seed"])
    except ValueError as exc:  # the loss is undefined on this spectrum: record why, per method
        lam = spectrum.eigenvalues  # None for sampled families (wishart): use the matrix's own
        if lam is None:
            lam = np.linalg.eigvalsh(np.asarray(spectrum.matrix, dtype=np.float64))
        diag = metrics.spectrum_diagnostics(lam, np.dtype(cell["dtype"]))
        reason = f"undefined: {exc}"
        return [
            {**base, "method": spec, "angle_deg": math.nan, "angle_full_deg": math.nan, "kept": -1,
             "rel_err": math.nan, "norm_ratio": math.nan,
             "finite": False, "seconds": 0.0, "truth_digits": math.nan, "truth_certified": False,
             **_diag(diag), "error": reason}
            for spec in cell["methods"]
        ]
    truth = result.truth
    rows = []
    for row in result.rows:
        # a truncating method (pi) is scored against the truth of its own function (compare.py); the
        # row's truth digits are the fewer of that truth's and the untruncated one's (NaN: no truth
        # of the truncated function, so the row is not scored)
        digits = math.nan if math.isnan(row["truth_digits"]) else float(min(truth.digits, row["truth_digits"]))
        rows.append({
            **base, "method": row["method"],
            "angle_deg": float(row["angle_deg"]), "angle_full_deg": float(row["angle_full_deg"]),
            "kept": int(row["kept"]), "rel_err": float(row["rel_err"]),
            "norm_ratio": float(row["norm_ratio"]), "finite": bool(row["finite"]),
            "seconds": float(row["seconds"]),
            "truth_digits": digits, "truth_certified": bool(digits >= 12),
            **_diag(result.diagnostics), "error": row.get("error"),
        })
    return rows


def _diag(diag: dict) -> dict:
    return {
        "min_abs_gap": float(diag["min_abs_gap"]), "min_rel_gap": float(diag["min_rel_gap"]),
        "max_abs_K": float(diag["max_abs_K"]), "numerical_rank": int(diag["numerical_rank"]),
        "condition": float(diag["condition"]),
    }


# ----------------------------------------------------------------------------- report

#: Angles below this are drawn at it on log axes (an exact 0° has no logarithm).
ANGLE_FLOOR = 1e-14
#: Tolerance of every ranking: a method ties with the best when its median angle is ≤ TIE_FACTOR × best
#: (or both ≤ ANGLE_FLOOR). Rounding noise moves float32 angles by ~1e-5 relative between BLAS
#: builds; a factor 1.25 absorbs it, so rankings do not flip between machines.
TIE_FACTOR = 1.25
#: Where a NaN/Inf median is drawn on the angle axes: above 180°, the largest possible angle.
NONFINITE_Y = 1e3


def _label_column(df: pd.DataFrame) -> pd.Series:
    return df["family"].where(df["family_params"].fillna("") == "",
                              df["family"] + "(" + df["family_params"].fillna("") + ")")


def _scored(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with a certified ground truth (≥ 12 digits); non-finite angles count as +inf.

    A truth below 12 certified digits is listed in the report, never scored against.
    """
    df = results.copy()
    df["variant"] = _label_column(df)
    certified = _uncertified_mask(df).eq(False) & df["truth_digits"].notna() if "truth_digits" in df \
        else pd.Series(False, index=df.index)
    df = df[certified].copy()
    df["angle_score"] = df["angle_deg"].where(df["angle_deg"].notna(), np.inf)
    df["raised"] = df["error"].notna()
    df["nonfinite"] = ~df["finite"].astype(bool) & ~df["raised"]
    return df


def _uncertified_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose ground truth exists but has fewer than 12 certified digits."""
    return df["truth_digits"].notna() & ~df["truth_certified"].fillna(False).astype(bool)


def _order(values, reference) -> list:
    present = list(dict.fromkeys(values))
    ranked = [v for v in reference if v in present]
    return ranked + [v for v in present if v not in ranked]


def _tie_group(med: pd.Series) -> list:
    """Methods of ``med`` (median angle per method, +inf = non-finite) tied with the lowest, lowest first."""
    med = med.sort_values(kind="stable")
    best = float(med.iloc[0])
    return [med.index[0]] + [m for m, v in med.iloc[1:].items()
                             if np.isfinite(v) and (v <= TIE_FACTOR * best or (v <= ANGLE_FLOOR and best <= ANGLE_FLOOR))]


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Best method per family variant by median angle (non-finite = +inf), with the tied methods."""
    df = _scored(results)
    out = []
    for variant, group in df.groupby("variant", sort=False):
        med = group.groupby("method", sort=False)["angle_score"].median().sort_values(kind="stable")
        tied = _tie_group(med)
        out.append({"variant": variant, "best": tied[0], "median_angle_deg": float(med.iloc[0]), "ties": tied[1:],
                    "cells": int(group["cell_id"].nunique()) if "cell_id" in group else len(group)})
    return pd.DataFrame(out, columns=["variant", "best", "median_angle_deg", "ties", "cells"])


def summary(results: pd.DataFrame) -> str:
    """One line for the reports index (optional hook read by the runner). Ties (median angles
    within TIE_FACTOR, NaN/Inf counts within one cell) are named together, in name order, so the
    line does not change with rounding noise between machines."""
    df = _scored(results)
    if df.empty:
        return f"{len(results)} rows, no cell with a defined loss"
    n_cells = df["cell_id"].nunique()
    med = df.groupby("method")["angle_score"].median()
    tied = _tie_group(med)
    best = (f"{tied[0]} ({_deg(med[tied[0]])})" if len(tied) == 1 else
            f"{', '.join(sorted(tied))} (tied within ×{TIE_FACTOR:g}: {_deg(med[tied].min())}–{_deg(med[tied].max())})")
    counts = df.groupby("method")["nonfinite"].sum()
    top = int(counts.max())
    if top == 0:
        return f"{n_cells} scored cells; lowest median angle: {best}; no NaN/Inf gradient"
    worst = sorted(m for m, n in counts.items() if n > 0 and n >= top - 1)
    return (f"{n_cells} scored cells; lowest median angle: {best}; highest NaN/Inf rate: "
            + ", ".join(f"{m} ({_pct(counts[m] / n_cells)})" for m in worst)
            + (" (within one cell: tied)" if len(worst) > 1 else ""))


def _deg(value: float) -> str:
    return "non-finite" if not np.isfinite(value) else f"{value:.3g}°"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%" if value in (0, 1) or value >= 0.01 else f"{100 * value:.2g}%"


def report(results: pd.DataFrame, grid: dict, out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    df = _scored(results)
    all_rows = results.copy()
    all_rows["variant"] = _label_column(all_rows)
    methods_order = _order(all_rows["method"], grid.get("methods", []))
    variants = _order(all_rows["variant"], [family_label(f) for f in grid.get("families", [])])
    lines = []

    n_cells = all_rows["cell_id"].nunique()
    undefined = all_rows[all_rows["error"].fillna("").str.startswith("undefined:")]["cell_id"].nunique()
    failed = all_rows[all_rows["error"].fillna("").str.startswith("cell failed:")]["cell_id"].nunique()
    unbuilt_n = all_rows[all_rows["error"].fillna("").str.startswith("not built:")]["cell_id"].nunique()
    uncertified_n = all_rows[_uncertified_mask(all_rows)]["cell_id"].nunique()
    lines.append(f"{n_cells} cells × {len(methods_order)} methods = {len(all_rows)} rows. "
                 f"{undefined} cells have a loss that is undefined on their spectrum (no ground truth; "
                 f"listed below, not scored), {uncertified_n} cells have a ground truth with fewer than 12 "
                 f"certified digits (listed below, not scored){f', {unbuilt_n} cells ask for a spectrum that does not exist at their size' if unbuilt_n else ''}"
                 f"{f', {failed} cells failed' if failed else ''}. "
                 f"Angles are in degrees between a method's ∂L/∂A and the certified truth; a method whose "
                 f"gradient has NaN/Inf counts as +∞ in medians. A truncating method is scored against the "
                 f"truth of the function it computes: `pi` (SVD-PI) keeps, going down from the largest, the "
                 f"eigenpairs with λ_k > ε and Σ_(i≤k) λ_i < (1 − ε) Σλ (ε = 1e-4; the smallest pair is always "
                 f"dropped), and its truth is the loss restricted to those pairs (f·1[kept] for zca/sqrt, w·kept "
                 f"for eigvec); `angle_full_deg` in the results holds its angle to the untruncated loss's truth.\n")
    if df.empty:
        lines.append("No cell produced a ground truth, so there is nothing to score.\n")
        return "\n".join(lines)

    # -- reading, generated from the numbers
    lines.append("## Reading\n")
    lines.extend(f"- {s}" for s in _reading(df, methods_order))
    lines.append("")

    # -- verdicts
    lines.append("## Verdict: best method per family (median angle)\n")
    lines.append(f"Ties: methods whose median angle is within a factor {TIE_FACTOR:g} of the lowest (or both "
                 f"below {ANGLE_FLOOR:g}°) — wider than the rounding noise between machines (~1e-5 relative in "
                 f"float32), so the verdict does not flip with the BLAS build. Tied methods are listed in the "
                 f"grid's order, with the range of their medians.\n")
    lines.append("| family | best | median angle | tied with | scored cells |")
    lines.append("|---|---|---|---|---|")
    v = verdicts(results).set_index("variant")
    scored_med = df.groupby(["variant", "method"])["angle_score"].median()
    for variant in [x for x in variants if x in v.index]:
        row = v.loc[variant]
        group = [m for m in methods_order if m == row["best"] or m in row["ties"]]
        values = [float(scored_med[(variant, m)]) for m in group]
        angle = _deg(min(values)) if len(group) == 1 else f"{_deg(min(values)).rstrip('°')}–{_deg(max(values))}"
        lines.append(f"| {variant} | {group[0]} | {angle} | {', '.join(group[1:]) or '—'} | {row['cells']} |")
    lines.append("")

    # -- median angle table
    lines.append("## Median angle (degrees) per method × family\n")
    med = df.pivot_table(index="variant", columns="method", values="angle_score", aggfunc="median")
    lines.extend(_markdown_matrix(med, variants, methods_order, lambda x: "∞" if not np.isfinite(x) else f"{x:.2g}"))
    lines.append("")

    # -- truncating methods: their own function against the untruncated loss
    lines.extend(_truncation_section(df, variants))

    # -- NaN/Inf rate
    lines.append("## NaN/Inf rate per method × family\n")
    lines.append("Share of scored cells where the method's gradient contains NaN or Inf; in brackets the share "
                 "where the method raised an error instead (listed at the end).\n")
    nf = df.groupby(["variant", "method"])["nonfinite"].mean().unstack("method")
    raised = df.groupby(["variant", "method"])["raised"].mean().unstack("method")
    text = nf.copy().astype(object)
    for r in text.index:
        for c in text.columns:
            text.loc[r, c] = _pct(nf.loc[r, c]) + (f" ({_pct(raised.loc[r, c])} raised)" if raised.loc[r, c] > 0 else "")
    lines.extend(_markdown_matrix(text, variants, methods_order, str))
    lines.append("")

    # -- relative error table (a table says what a second box-plot figure said, at no drawing cost)
    lines.append("## Median relative error ‖g − g*‖/‖g*‖ per method × family\n")
    rel = df.assign(rel_score=df["rel_err"].where(np.isfinite(df["rel_err"]), np.inf)).pivot_table(
        index="variant", columns="method", values="rel_score", aggfunc="median")
    lines.extend(_markdown_matrix(rel, variants, methods_order, lambda x: "∞" if not np.isfinite(x) else f"{x:.2g}"))
    lines.append("")

    # -- figures: float32 and float64 in separate panels, failures drawn beside the medians
    figures = [
        ("angle_by_family.png", "Median angle to the truth per method and family (bar: min–max over the cells), "
         "one panel per dtype; the percentage above a marker is the share of cells whose gradient was NaN/Inf",
         lambda p: _angle_panels(plt, df, variants, methods_order, p)),
        ("angle_vs_gap.png", "Angle against the minimum relative eigengap (log–log), one panel per dtype",
         lambda p: _scatter_gap(plt, df, methods_order, p)),
        ("angle_vs_d.png", "Median angle against the matrix size d, one panel per dtype",
         lambda p: _lines_d(plt, df, methods_order, p)),
    ]
    lines.append("## Figures\n")
    lines.append(f"Angles below {ANGLE_FLOOR:g}° (including exact zeros) are drawn at {ANGLE_FLOOR:g}°; a NaN/Inf "
                 f"gradient (or a median that is NaN/Inf, counted as +∞) is drawn as × on the dotted line at "
                 f"{NONFINITE_Y:g}°, above the largest possible angle (180°).\n")
    for filename, caption, draw in figures:
        draw(out_dir / filename)
        lines.append(f"### {caption}\n\n![{caption}]({filename})\n")

    # -- undefined cells
    undef = all_rows[all_rows["error"].fillna("").str.startswith("undefined:")]
    if not undef.empty:
        lines.append("## Cells where the loss is undefined\n")
        grouped = undef.drop_duplicates("cell_id").groupby(["variant", "loss", "dtype"], sort=False)
        for (variant, loss, dtype), group in grouped:
            lines.append(f"- {variant}, loss {loss}, {dtype}: d ∈ {{{', '.join(str(x) for x in sorted(set(group['d'])))}}} "
                         f"— e.g. {group['error'].iloc[0].removeprefix('undefined: ')[:160]}")
        lines.append("")

    # -- cells whose truth is not certified
    uncertified = all_rows[_uncertified_mask(all_rows)].drop_duplicates("cell_id")
    if not uncertified.empty:
        lines.append("## Cells whose ground truth is not certified (not scored)\n")
        for (variant, loss, dtype), group in uncertified.groupby(["variant", "loss", "dtype"], sort=False):
            sizes = ", ".join(f"{d} ({digits:.1f} digits)" for d, digits in zip(group["d"], group["truth_digits"]))
            lines.append(f"- {variant}, loss {loss}, {dtype}: d = {sizes}")
        lines.append("")

    # -- cells whose spectrum cannot exist at that size
    unbuilt = all_rows[all_rows["error"].fillna("").str.startswith("not built:")].drop_duplicates("cell_id")
    if not unbuilt.empty:
        lines.append("## Cells not built (the family variant does not exist at that size)\n")
        for variant, group in unbuilt.groupby("variant", sort=False):
            lines.append(f"- {variant}: d ∈ {{{', '.join(str(x) for x in sorted(set(group['d'])))}}} — "
                         f"{group['error'].iloc[0].removeprefix('not built: ')}")
        lines.append("")

    # -- method errors (not the undefined-loss or not-built ones)
    errs = all_rows[all_rows["error"].notna() & ~all_rows["error"].fillna("").str.match(r"(undefined|not built):")]
    if not errs.empty:
        lines.append("## Errors raised by methods or cells\n")
        counts = errs.groupby(["method", "error"], sort=False).size()
        for (method, error), n in counts.items():
            lines.append(f"- {method} ({n} rows): {str(error).splitlines()[0][:200]}")
        lines.append("")
    return "\n".join(lines)


def _truncation_section(df: pd.DataFrame, variants) -> list[str]:
    """Median angle to the method's own (truncated) function and to the untruncated loss, for the
    methods that dropped eigenpairs in some scored cell (older results lack the columns: none)."""
    if "kept" not in df or "angle_full_deg" not in df:
        return []
    trunc = df[(df["kept"] >= 0) & (df["kept"] < df["d"])]
    if trunc.empty:
        return []
    out = ["## Truncating methods: own function vs untruncated loss\n",
           "Median angle (°) to the truth of the function the method computes (the loss restricted to its "
           "kept eigenpairs) and, after the slash, to the truth of the untruncated loss; cells where the "
           "method dropped at least one pair.\n"]
    by = trunc.groupby(["variant", "method"])
    own = by["angle_score"].median().unstack("method")
    full = by["angle_full_deg"].apply(lambda a: float(a.fillna(np.inf).median())).unstack("method")
    text = own.copy().astype(object)
    for r in text.index:
        for c in text.columns:
            text.loc[r, c] = "—" if pd.isna(own.loc[r, c]) else f"{_deg(own.loc[r, c])} / {_deg(full.loc[r, c])}"
    out.extend(_markdown_matrix(text, variants, list(text.columns), str))
    out.append("")
    return out


def _markdown_matrix(table: pd.DataFrame, rows, cols, fmt) -> list[str]:
    cols = [c for c in cols if c in table.columns]
    out = ["| family | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if r not in table.index:
            continue
        cells = [fmt(table.loc[r, c]) if pd.notna(table.loc[r, c]) else "—" for c in cols]
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    return out


def _reading(df: pd.DataFrame, methods_order: list) -> list[str]:
    """Sentences whose every number comes from the results."""
    out = []
    med = df.groupby("method")["angle_score"].median().reindex(methods_order).dropna().sort_values(kind="stable")
    tied = [m for m in methods_order if m in _tie_group(med)]
    lowest = (f"{med.index[0]}'s ({_deg(med.iloc[0])})" if len(tied) == 1 else
              f"shared by {', '.join(tied)} ({_deg(med[tied].min())} to {_deg(med[tied].max())}, within the tie factor "
              f"{TIE_FACTOR:g})")
    out.append(f"Over all {df['cell_id'].nunique()} scored cells, the lowest median angle is {lowest} and the "
               f"highest is {med.index[-1]}'s ({_deg(med.iloc[-1])}).")

    nonfinite = df.groupby("method")["nonfinite"].mean().reindex(methods_order).dropna()
    bad = nonfinite[nonfinite > 0].sort_values(ascending=False, kind="stable")
    raised = df.groupby("method")["raised"].mean().reindex(methods_order).dropna()
    raised = raised[raised > 0].sort_values(ascending=False, kind="stable")
    if not raised.empty:
        out.append("Methods that raised an error instead of returning a gradient (share of scored cells): "
                   + ", ".join(f"{m} {_pct(r)}" for m, r in raised.items()) + " — counted as +∞ in medians.")
    if bad.empty:
        out.append("No method produced a NaN/Inf gradient on any scored cell.")
    else:
        parts = ", ".join(f"{m} {_pct(r)}" for m, r in bad.items())
        clean = [m for m in methods_order if m in nonfinite.index and nonfinite[m] == 0 and m not in raised.index]
        out.append(f"NaN/Inf gradients returned (share of scored cells): {parts}"
                   + (f"; always finite: {', '.join(clean)}." if clean else "."))

    # Gap dependence: median angle in the smallest-gap quarter of cells against the largest-gap quarter.
    gaps = df.drop_duplicates("cell_id")["min_rel_gap"].clip(lower=0)
    if gaps.nunique() > 3:
        low, high = gaps.quantile(0.25), gaps.quantile(0.75)
        small = df[df["min_rel_gap"] <= low].groupby("method")["angle_score"].median()
        large = df[df["min_rel_gap"] >= high].groupby("method")["angle_score"].median()
        worst = (small - large.reindex(small.index)).replace([np.inf, -np.inf], np.nan)
        sensitive = [m for m in methods_order if m in small.index]
        phrases = [f"{m} {_deg(large.get(m, np.nan))} → {_deg(small[m])}" for m in sensitive]
        out.append(f"From the quarter of cells with the largest relative gap (≥ {high:.2g}) to the quarter "
                   f"with the smallest (≤ {low:.2g}), the median angle moves: " + "; ".join(phrases) + ".")
        if worst.notna().any():
            m = worst.idxmax()
            out.append(f"The method hurt most by small gaps is {m}.")

    if df["dtype"].nunique() > 1:
        by_dtype = df.groupby(["method", "dtype"])["angle_score"].median().unstack("dtype")
        if {"float32", "float64"} <= set(by_dtype.columns):
            ratio = (by_dtype["float32"] / by_dtype["float64"]).replace([np.inf, -np.inf], np.nan).dropna()
            ratio = ratio[ratio > 0]
            if not ratio.empty:
                out.append(f"float32 against float64: the ratio of median angles (float32 / float64) ranges "
                           f"from {ratio.min():.2g} ({ratio.idxmin()}) to {ratio.max():.2g} ({ratio.idxmax()}).")

    if df["d"].nunique() > 1:
        dmin, dmax = df["d"].min(), df["d"].max()
        a = df[df["d"] == dmin].groupby("method")["angle_score"].median()
        b = df[df["d"] == dmax].groupby("method")["angle_score"].median()
        grew = [m for m in methods_order if m in a.index and m in b.index and np.isfinite(a[m]) and b[m] > 10 * a[m]]
        out.append(f"From d={dmin} to d={dmax}, "
                   + (f"the median angle grows more than tenfold for {', '.join(grew)}."
                      if grew else "no method's median angle grows more than tenfold."))

    digits = df.drop_duplicates("cell_id")["truth_digits"]
    out.append(f"Scored ground truths carry {digits.min():.1f} to {digits.max():.1f} certified digits.")
    return out


def _dtypes(df) -> list[str]:
    return [t for t in DTYPES if t in set(df["dtype"])]


def _draw_y(values) -> np.ndarray:
    """Angles for a log axis: floored at ANGLE_FLOOR, non-finite at NONFINITE_Y."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isfinite(v), np.maximum(v, ANGLE_FLOOR), NONFINITE_Y)


def _plain_log(axis, decades) -> None:
    """A log axis with ticks at the given powers of ten, labelled as plain text ("1e-06"): the
    default 10^k labels go through mathtext, the slowest part of drawing these figures."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator([10.0 ** k for k in decades]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")))
    axis.set_minor_locator(NullLocator())


def _angle_axis(ax) -> None:
    ax.set_yscale("log")
    ax.set_ylim(ANGLE_FLOOR / 5, NONFINITE_Y * 5)
    _plain_log(ax.yaxis, range(-14, 3, 4))
    ax.axhline(NONFINITE_Y, color="0.5", lw=0.8, ls=":")
    ax.text(0.005, NONFINITE_Y * 1.4, "NaN/Inf", transform=ax.get_yaxis_transform(), fontsize=6, color="0.4")


def _save(fig, path) -> None:
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _angle_panels(plt, df, variants, methods_order, path) -> None:
    """One panel per dtype: median angle (marker; × on the NaN/Inf line when the median is
    non-finite) and min–max over the finite cells (bar) per method, one colour per family, and
    next to the marker the share of cells whose gradient was NaN/Inf or raised, when any. Fixed
    margins, no tight_layout, no shared axes: drawing is the costly part of a report."""
    present = [v for v in variants if v in set(df["variant"])]
    methods = [m for m in methods_order if m in set(df["method"])]
    dtypes = _dtypes(df)
    n_f, n_m = len(present), len(methods)
    slot = 0.8 / max(n_f, 1)
    offsets = (np.arange(n_f) - (n_f - 1) / 2) * slot
    colours = plt.get_cmap("tab10" if n_f <= 10 else "tab20").colors
    height = 3.2 * len(dtypes) + 1.2
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(max(7.0, 0.7 * n_m + 2.5), height), squeeze=False)
    df = df.assign(failed=df["nonfinite"] | df["raised"],
                   finite_angle=df["angle_score"].where(np.isfinite(df["angle_score"])))
    x_of = {m: i for i, m in enumerate(methods)}
    for ax, dtype in zip(axes[:, 0], dtypes):
        stats = df[df["dtype"] == dtype].groupby(["variant", "method"]).agg(
            med=("angle_score", "median"), lo=("finite_angle", "min"), hi=("finite_angle", "max"),
            failed=("failed", "mean"))
        for j, variant in enumerate(present):
            if variant not in stats.index.get_level_values(0):
                continue
            st = stats.loc[variant]
            x = np.array([x_of[m] for m in st.index]) + offsets[j]
            c = colours[j % len(colours)]
            ok = st["lo"].notna().to_numpy()
            ax.vlines(x[ok], _draw_y(st["lo"][ok]), _draw_y(st["hi"][ok]), color=c, lw=1.2)
            med = st["med"].to_numpy(float)
            fin = np.isfinite(med)
            # markers through plot(), not scatter(): a Line2D draws several times faster than a collection
            ax.plot(x[fin], _draw_y(med[fin]), ls="", marker="o", ms=4.5, color=c, zorder=3,
                    label=variant if ax is axes[0, 0] else None)
            if not fin.all():
                ax.plot(x[~fin], _draw_y(med[~fin]), ls="", marker="x", ms=6, color=c, zorder=3)
            failed = st["failed"].to_numpy(float)
            y = _draw_y(np.maximum(med, st["hi"].fillna(0).to_numpy(float)))
            for xi, yi, share in zip(x, y, failed):
                if share > 0:
                    ax.text(xi, yi * 4, f"{100 * share:.0f}%", rotation=90, fontsize=6, color=c, ha="center",
                            va="bottom")
        _angle_axis(ax)
        ax.set_ylim(ANGLE_FLOOR / 5, NONFINITE_Y * 1e3)  # room for the failure shares above the NaN/Inf line
        ax.set_ylabel(f"{dtype}: angle (deg)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(-0.6, n_m - 0.4)
        if ax is not axes[-1, 0]:
            ax.set_xticks([])
    axes[0, 0].legend(fontsize=7, ncol=min(4, n_f), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    axes[-1, 0].set_xticks(range(n_m))
    axes[-1, 0].set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.99, top=1 - 0.45 / height, bottom=0.95 / height, hspace=0.08)
    _save(fig, path)


def _scatter_gap(plt, df, methods_order, path) -> None:
    dtypes = _dtypes(df)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.2 * len(dtypes), 4.6), sharey=True, squeeze=False)
    gap_floor = 1e-18
    for ax, dtype in zip(axes[0], dtypes):
        sub_d = df[df["dtype"] == dtype]
        for m in methods_order:
            sub = sub_d[sub_d["method"] == m]
            if sub.empty:
                continue
            gap = np.maximum(sub["min_rel_gap"].to_numpy(float), gap_floor)
            angle = sub["angle_score"].to_numpy(float)
            fin = np.isfinite(angle)
            (line,) = ax.plot(gap[fin], _draw_y(angle[fin]), ls="", marker="o", ms=3, alpha=0.6, label=m)
            if not fin.all():
                ax.plot(gap[~fin], _draw_y(angle[~fin]), ls="", marker="x", ms=5, color=line.get_color())
        ax.set_xscale("log")
        lo = np.log10(max(gap_floor, float(np.nanmin(np.maximum(df["min_rel_gap"].to_numpy(float), gap_floor)))))
        _plain_log(ax.xaxis, range(int(np.floor(lo)), 1, max(1, int(np.ceil(-lo / 6)))))
        _angle_axis(ax)
        ax.set_title(dtype, fontsize=9)
        ax.set_xlabel(f"min relative eigengap (below {gap_floor:g} drawn at it)", fontsize=8)
    axes[0, 0].set_ylabel("angle to truth (deg)", fontsize=8)
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.93, bottom=0.12, wspace=0.05)
    _save(fig, path)


def _lines_d(plt, df, methods_order, path) -> None:
    dtypes = _dtypes(df)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.2 * len(dtypes), 4.6), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        med = df[df["dtype"] == dtype].groupby(["method", "d"])["angle_score"].median()
        for m in methods_order:
            if m not in med.index.get_level_values(0):
                continue
            series = med.loc[m]
            ax.plot(series.index, _draw_y(series.to_numpy(float)), marker="o", ms=4, label=m)
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

        ax.xaxis.set_major_locator(FixedLocator(sorted(set(df["d"]))))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        _angle_axis(ax)
        ax.set_title(dtype, fontsize=9)
        ax.set_xlabel("d", fontsize=8)
    axes[0, 0].set_ylabel("median angle, NaN/Inf counted as +∞ (deg)", fontsize=8)
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.93, bottom=0.12, wspace=0.05)
    _save(fig, path)
