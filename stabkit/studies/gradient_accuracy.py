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

from .. import methods as _methods
from ..losses import LOSSES
from . import with_defaults

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
    "angle_deg", "rel_err", "norm_ratio", "finite", "seconds",
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
    from .. import spectra

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
    from .. import spectra

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
    from .. import metrics, spectra
    from ..compare import compare

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
            {**base, "method": spec, "angle_deg": nan, "rel_err": nan, "norm_ratio": nan, "finite": False,
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
            {**base, "method": spec, "angle_deg": math.nan, "rel_err": math.nan, "norm_ratio": math.nan,
             "finite": False, "seconds": 0.0, "truth_digits": math.nan, "truth_certified": False,
             **_diag(diag), "error": reason}
            for spec in cell["methods"]
        ]
    truth = result.truth
    rows = []
    for row in result.rows:
        rows.append({
            **base, "method": row["method"],
            "angle_deg": float(row["angle_deg"]), "rel_err": float(row["rel_err"]),
            "norm_ratio": float(row["norm_ratio"]), "finite": bool(row["finite"]),
            "seconds": float(row["seconds"]),
            "truth_digits": float(truth.digits), "truth_certified": bool(truth.certified),
            **_diag(result.diagnostics), "error": row.get("error"),
        })
    return rows


_WARMED: set = set()


def warm_up(cell: dict) -> None:
    """Call each method of the cell once, in this process, on a small separated matrix of the
    cell's dtype and loss (the runner's hook, before each cell): first-call costs — torch's lazy
    initialisation, ~0.6 s for the ``torch`` method — are then not timed as the method's cost."""
    todo = [spec for spec in cell["methods"] if (spec, cell["dtype"], cell["loss"]) not in _WARMED]
    if not todo:
        return
    from .. import methods
    from ..losses import make_loss

    d = 4
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    A = ((Q * np.arange(1.0, d + 1)) @ Q.T).astype(cell["dtype"])
    A = (A + A.T) / 2
    loss = make_loss(cell["loss"], d, seed=0)
    for spec in todo:
        _WARMED.add((spec, cell["dtype"], cell["loss"]))
        try:
            methods.gradient(spec, A, loss)
        except Exception:  # noqa: BLE001 — the cell itself reports a method's error
            pass


def _diag(diag: dict) -> dict:
    return {
        "min_abs_gap": float(diag["min_abs_gap"]), "min_rel_gap": float(diag["min_rel_gap"]),
        "max_abs_K": float(diag["max_abs_K"]), "numerical_rank": int(diag["numerical_rank"]),
        "condition": float(diag["condition"]),
    }


# ----------------------------------------------------------------------------- report

#: Angles below this are drawn at it on log axes (an exact 0° has no logarithm).
ANGLE_FLOOR = 1e-14
#: A method ties with the best of a family when its median angle is ≤ TIE_FACTOR × best (or both ≤ ANGLE_FLOOR).
TIE_FACTOR = 1.25


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


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Best method per family variant by median angle (non-finite = +inf), with the tied methods."""
    df = _scored(results)
    out = []
    for variant, group in df.groupby("variant", sort=False):
        med = group.groupby("method", sort=False)["angle_score"].median().sort_values(kind="stable")
        best_method, best = med.index[0], float(med.iloc[0])
        ties = [m for m, v in med.iloc[1:].items()
                if np.isfinite(v) and (v <= TIE_FACTOR * best or (v <= ANGLE_FLOOR and best <= ANGLE_FLOOR))]
        out.append({"variant": variant, "best": best_method, "median_angle_deg": best, "ties": ties,
                    "cells": int(group["cell_id"].nunique()) if "cell_id" in group else len(group)})
    return pd.DataFrame(out, columns=["variant", "best", "median_angle_deg", "ties", "cells"])


def summary(results: pd.DataFrame) -> str:
    """One line for the reports index (optional hook read by the runner)."""
    df = _scored(results)
    if df.empty:
        return f"{len(results)} rows, no cell with a defined loss"
    med = df.groupby("method")["angle_score"].median().sort_values(kind="stable")
    nonfinite = df.groupby("method")["nonfinite"].mean().sort_values(ascending=False, kind="stable")
    return (f"{df['cell_id'].nunique()} scored cells; lowest median angle: {med.index[0]} ({_deg(med.iloc[0])}); "
            f"highest NaN/Inf rate: {nonfinite.index[0]} ({_pct(nonfinite.iloc[0])})")


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
                 f"gradient has NaN/Inf counts as +∞ in medians.\n")
    if df.empty:
        lines.append("No cell produced a ground truth, so there is nothing to score.\n")
        return "\n".join(lines)

    # -- reading, generated from the numbers
    lines.append("## Reading\n")
    lines.extend(f"- {s}" for s in _reading(df, methods_order))
    lines.append("")

    # -- verdicts
    lines.append("## Verdict: best method per family (median angle)\n")
    lines.append(f"Ties: methods whose median angle is within a factor {TIE_FACTOR:g} of the best "
                 f"(or both below {ANGLE_FLOOR:g}°).\n")
    lines.append("| family | best | median angle | tied with | scored cells |")
    lines.append("|---|---|---|---|---|")
    v = verdicts(results).set_index("variant")
    for variant in [x for x in variants if x in v.index]:
        row = v.loc[variant]
        lines.append(f"| {variant} | {row['best']} | {_deg(row['median_angle_deg'])} | "
                     f"{', '.join(row['ties']) or '—'} | {row['cells']} |")
    lines.append("")

    # -- median angle table
    lines.append("## Median angle (degrees) per method × family\n")
    med = df.pivot_table(index="variant", columns="method", values="angle_score", aggfunc="median")
    lines.extend(_markdown_matrix(med, variants, methods_order, lambda x: "∞" if not np.isfinite(x) else f"{x:.2g}"))
    lines.append("")

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

    # -- figures
    figures = [
        ("angle_by_family.png", "Angle to the truth per method, one panel per family",
         lambda p: _box_panels(plt, df, "angle_deg", "angle (deg)", variants, methods_order, p)),
        ("rel_err_by_family.png", "Relative error ‖g − g*‖/‖g*‖ per method, one panel per family",
         lambda p: _box_panels(plt, df, "rel_err", "relative error", variants, methods_order, p)),
        ("angle_vs_gap.png", "Angle against the minimum relative eigengap (log–log)",
         lambda p: _scatter_gap(plt, df, methods_order, p)),
        ("angle_vs_d.png", "Median angle against the matrix size d",
         lambda p: _lines_d(plt, df, methods_order, p)),
    ]
    lines.append("## Figures\n")
    lines.append(f"Angles below {ANGLE_FLOOR:g}° (including exact zeros) are drawn at {ANGLE_FLOOR:g}°; "
                 "non-finite gradients are not drawn (see the NaN/Inf table).\n")
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
    out.append(f"Over all {df['cell_id'].nunique()} scored cells, the lowest median angle is {med.index[0]}'s "
               f"({_deg(med.iloc[0])}) and the highest is {med.index[-1]}'s ({_deg(med.iloc[-1])}).")

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


def _clip_angles(values: pd.Series) -> np.ndarray:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return np.maximum(v, ANGLE_FLOOR)


def _box_panels(plt, df, column, ylabel, variants, methods_order, path) -> None:
    present = [v for v in variants if v in set(df["variant"])]
    ncols = min(4, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, variant in zip(axes.flat, present):
        sub = df[df["variant"] == variant]
        data = [_clip_angles(sub[sub["method"] == m][column]) for m in methods_order]
        positions = [i for i, x in enumerate(data) if x.size]
        if positions:
            ax.boxplot([data[i] for i in positions], positions=positions, widths=0.6, showfliers=False)
            for i in positions:
                ax.scatter(i + rng.uniform(-0.18, 0.18, data[i].size), data[i], s=6, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods_order)))
        ax.set_xticklabels(methods_order, rotation=60, ha="right", fontsize=7)
        ax.set_title(variant, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _scatter_gap(plt, df, methods_order, path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    gap_floor = 1e-18
    for m in methods_order:
        sub = df[(df["method"] == m) & np.isfinite(df["angle_deg"])]
        if sub.empty:
            continue
        ax.scatter(np.maximum(sub["min_rel_gap"].to_numpy(float), gap_floor), _clip_angles(sub["angle_deg"]),
                   s=8, alpha=0.6, label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"min relative eigengap (gaps below {gap_floor:g} drawn at it)")
    ax.set_ylabel("angle to truth (deg)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _lines_d(plt, df, methods_order, path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    med = df.groupby(["method", "d"])["angle_deg"].median()
    for m in methods_order:
        if m not in med.index.get_level_values(0):
            continue
        series = med.loc[m].dropna()
        if series.empty:
            continue
        ax.plot(series.index, np.maximum(series.to_numpy(float), ANGLE_FLOOR), marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("d")
    ax.set_ylabel("median angle over finite gradients (deg)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
