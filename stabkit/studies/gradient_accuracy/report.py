"""The gradient-accuracy report: an introduction with the cell counts, a reading generated from
the numbers, the verdict per family, median-angle / NaN-Inf / relative-error tables, the figures,
and the cells that were not scored (undefined loss, uncertified truth, not built, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import _figures
from .._checks import family_label, variant_labels
from . import _plots
from ._reading import reading
from ._scoring import (ANGLE_FLOOR, NONFINITE_Y, TIE_FACTOR, attempted, deg, order, own_function_mask, pct,
                       scored, uncertified_cells, uncertified_mask, verdicts)


def report(results: pd.DataFrame, grid: dict, out_dir: Path) -> str:
    """Markdown body of the report (figures written into ``out_dir``)."""
    plt = _figures.pyplot()
    out_dir = Path(out_dir)
    df = scored(results)
    all_rows = results.copy()
    all_rows["variant"] = variant_labels(all_rows)
    methods_order = order(all_rows["method"], grid.get("methods", []))
    variants = order(all_rows["variant"], [family_label(f) for f in grid.get("families", [])])
    lines = [_intro(all_rows, methods_order)]
    if df.empty:
        lines.append("No cell produced a ground truth, so there is nothing to score.\n")
        return "\n".join(lines)
    ran = attempted(results)  # the denominator of the NaN/Inf and raised rates
    lines += ["## Reading\n", *(f"- {s}" for s in reading(df, ran, methods_order)), ""]
    lines += _verdict_section(results, df, variants, methods_order)
    lines += _median_angle_section(df, variants, methods_order)
    lines += _truncation_section(df, variants)
    lines += _nonfinite_section(ran, variants, methods_order)
    lines += _rel_err_section(df, variants, methods_order)
    lines += _figure_section(plt, df, variants, methods_order, out_dir)
    lines += _undefined_section(all_rows)
    lines += _uncertified_section(all_rows)
    lines += _unbuilt_section(all_rows)
    lines += _errors_section(all_rows)
    return "\n".join(lines)


def _cells_with(all_rows: pd.DataFrame, prefix: str) -> int:
    return all_rows[all_rows["error"].fillna("").str.startswith(prefix)]["cell_id"].nunique()


def _intro(all_rows: pd.DataFrame, methods_order: list) -> str:
    n_cells = all_rows["cell_id"].nunique()
    undefined = _cells_with(all_rows, "undefined:")
    failed = _cells_with(all_rows, "cell failed:")
    unbuilt_n = _cells_with(all_rows, "not built:")
    uncertified_n = all_rows[uncertified_cells(all_rows)]["cell_id"].nunique()
    own_short = int((uncertified_mask(all_rows) & ~uncertified_cells(all_rows)).sum())
    return (f"{n_cells} cells × {len(methods_order)} methods = {len(all_rows)} rows. "
            f"{undefined} cells have a loss that is undefined on their spectrum (no ground truth; "
            f"listed below, not scored), {uncertified_n} cells have a ground truth with fewer than 12 "
            f"certified digits (listed below, not scored){f', {unbuilt_n} cells ask for a spectrum that does not exist at their size' if unbuilt_n else ''}"
            f"{f', {failed} cells failed' if failed else ''}"
            f"{f'; {own_short} rows of certified cells have an own-function truth with fewer than 12 digits (not scored)' if own_short else ''}. "
            f"Angles are in degrees between a method's ∂L/∂A and the certified truth; a method whose "
            f"gradient has NaN/Inf counts as +∞ in medians. A truncating method is scored against the "
            f"truth of the function it computes: `pi` (SVD-PI) keeps, going down from the largest, the "
            f"eigenpairs with λ_k > ε and Σ_(i≤k) λ_i < (1 − ε) Σλ (ε = 1e-4; the smallest pair is always "
            f"dropped), and its truth is the loss restricted to those pairs (f·1[kept] for zca/sqrt, w·kept "
            f"for eigvec); `angle_full_deg` in the results holds its angle to the untruncated loss's truth. "
            f"A method whose forward is power iteration from random starts computes the loss at its own (λ̂, Û) "
            f"and is scored against the reverse mode of that iteration in 128–4096-bit arithmetic (digits: agreement "
            f"of two precisions). Rankings (verdict, lowest/highest median) use only rows scored against the loss itself; "
            f"the rows scored against another function are compared in 'Own function vs the exact loss'.\n")


# ----------------------------------------------------------------------------- tables


def _verdict_section(results, df, variants, methods_order) -> list[str]:
    lines = ["## Verdict: best method per family (median angle)\n",
             "Rows scored against the loss itself only (not those of a method that dropped pairs or iterates "
             "its forward: see 'Own function vs the exact loss').\n",
             f"Ties: methods whose median angle is within a factor {TIE_FACTOR:g} of the lowest (or both "
             f"below {ANGLE_FLOOR:g}°) — wider than the rounding noise between machines (~1e-5 relative in "
             f"float32) where the gaps are resolved, so there the verdict does not flip with the BLAS build. On a "
             f"gap within 3e4 unit roundoffs (1e7 for an unbounded method) the eigensolver's basis inside the "
             f"cluster, set by the LAPACK build and the CPU, can move the angles by more than that "
             f"(tests/test_quickstart_reproducible.py): a verdict there holds for the machine in the table above. Tied methods are listed in the "
             f"grid's order, with the range of their medians.\n",
             "Medians over the family's cells where every ranked method has such a row (like for like); the median "
             "of the method in the `best` column with its distribution-free 95 % interval (order statistics at binomial ranks; none "
             "below 6 cells).\n",
             "| family | best | median angle | 95 % CI (best) | tied with | cells ranked |",
             "|---|---|---|---|---|---|"]
    v = verdicts(results).set_index("variant")
    for variant in [x for x in variants if x in v.index]:
        row = v.loc[variant]
        group = [m for m in methods_order if m == row["best"] or m in row["ties"]]
        values = [row["medians"][m] for m in group]
        angle = deg(min(values)) if len(group) == 1 else f"{deg(min(values)).rstrip('°')}–{deg(max(values))}"
        lo, hi = row["intervals"][group[0]]
        ci = "—" if lo != lo else f"[{deg(lo)}, {deg(hi)}]"
        lines.append(f"| {variant} | {group[0]} | {angle} | {ci} | {', '.join(group[1:]) or '—'} | {row['cells']} |")
    lines.append("")
    return lines


def _angle_text(x) -> str:
    return "∞" if not np.isfinite(x) else f"{x:.2g}"


def _median_angle_section(df, variants, methods_order) -> list[str]:
    med = df.pivot_table(index="variant", columns="method", values="angle_score", aggfunc="median")
    return ["## Median angle (degrees) per method × family\n",
            "Each method against the function it computes: for a truncating or iterating method that is not "
            "always the loss (both angles: 'Own function vs the exact loss').\n",
            *_markdown_matrix(med, variants, methods_order, _angle_text), ""]


def _nonfinite_section(df, variants, methods_order) -> list[str]:
    nf = df.groupby(["variant", "method"])["nonfinite"].mean().unstack("method")
    raised = df.groupby(["variant", "method"])["raised"].mean().unstack("method")
    text = nf.copy().astype(object)
    for r in text.index:
        for c in text.columns:
            text.loc[r, c] = pct(nf.loc[r, c]) + (f" ({pct(raised.loc[r, c])} raised)" if raised.loc[r, c] > 0 else "")
    return ["## NaN/Inf rate per method × family\n",
            "Share of the cells with a certified truth of the loss where the method's gradient contains NaN or "
            "Inf; in brackets the share where the method raised an error instead (listed at the end).\n",
            *_markdown_matrix(text, variants, methods_order, str), ""]


def _rel_err_section(df, variants, methods_order) -> list[str]:
    """A table says what a second box-plot figure said, at no drawing cost."""
    rel = df.assign(rel_score=df["rel_err"].where(np.isfinite(df["rel_err"]), np.inf)).pivot_table(
        index="variant", columns="method", values="rel_score", aggfunc="median")
    return ["## Median relative error ‖g − g*‖/‖g*‖ per method × family\n",
            *_markdown_matrix(rel, variants, methods_order, _angle_text), ""]


def _truncation_section(df: pd.DataFrame, variants) -> list[str]:
    """Median angle to the method's own function and to the exact, untruncated loss, for the cells
    where the two differ: the method dropped eigenpairs, or its forward is not the exact
    decomposition (the two angles then differ; older results lack the columns: none)."""
    if "kept" not in df or "angle_full_deg" not in df:
        return []
    trunc = df[own_function_mask(df)]
    if trunc.empty:
        return []
    out = ["## Own function vs the exact loss: truncating and iterating methods\n",
           "Median angle (°) to the truth of the function the method computes — the loss restricted to its "
           "kept eigenpairs, or the loss at the (λ̂, Û) its power-iteration forward returns (that truth: the "
           "reverse mode of the exact iteration in 128–4096-bit arithmetic, digits by agreement of two "
           "precisions) — and, after the slash, to the truth of the exact, untruncated loss; cells where the "
           "method dropped at least one pair or its forward is not the exact decomposition. A NaN/Inf gradient "
           "counts as +∞; a finite one whose own-function truth has fewer than 12 digits or does not exist "
           "cannot be scored and is left out, so where many are the median leans towards +∞ — the NaN/Inf "
           "table below counts every run. Where the iteration is ill-conditioned the float64 forward itself "
           "departs from the exact iteration (LAPACK mode 4, d = 16: where the exact iteration's smallest λ̂ is 1e-4, the "
           "float64 one came out negative, about −1e-4 to −4e-4 on the machines and versions tried), so there the "
           "angle to the own function measures the forward's rounding as much as the backward.\n"]
    by = trunc.groupby(["variant", "method"])
    own = by["angle_score"].median().unstack("method")
    full = by["angle_full_deg"].apply(lambda a: float(a.fillna(np.inf).median())).unstack("method")
    text = own.copy().astype(object)
    for r in text.index:
        for c in text.columns:
            text.loc[r, c] = "—" if pd.isna(own.loc[r, c]) else f"{deg(own.loc[r, c])} / {deg(full.loc[r, c])}"
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


# ----------------------------------------------------------------------------- figures


def _figure_section(plt, df, variants, methods_order, out_dir: Path) -> list[str]:
    """float32 and float64 in separate panels, failures drawn beside the medians."""
    figures = [
        ("angle_by_family.png", "Median angle to the truth per method and family (bar: min–max over the cells), "
         "one panel per dtype; the percentage above a marker is the share of cells whose gradient was NaN/Inf",
         lambda p: _plots.angle_panels(plt, df, variants, methods_order, p)),
        ("angle_vs_gap.png", "Angle against the minimum relative eigengap (log–log), one panel per dtype",
         lambda p: _plots.scatter_gap(plt, df, methods_order, p)),
        ("angle_vs_d.png", "Median angle against the matrix size d, one panel per dtype",
         lambda p: _plots.lines_d(plt, df, methods_order, p)),
    ]
    lines = ["## Figures\n",
             f"Angles below {ANGLE_FLOOR:g}° (including exact zeros) are drawn at {ANGLE_FLOOR:g}°; a NaN/Inf "
             f"gradient (or a median that is NaN/Inf, counted as +∞) is drawn as × on the dotted line at "
             f"{NONFINITE_Y:g}°, above the largest possible angle (180°).\n"]
    for filename, caption, draw in figures:
        draw(out_dir / filename)
        lines.append(f"### {caption}\n\n![{caption}]({filename})\n")
    return lines


# ----------------------------------------------------------------------------- cells not scored


def _sizes(group) -> str:
    return ", ".join(str(x) for x in sorted(set(group["d"])))


def _undefined_section(all_rows: pd.DataFrame) -> list[str]:
    undef = all_rows[all_rows["error"].fillna("").str.startswith("undefined:")]
    if undef.empty:
        return []
    lines = ["## Cells where the loss is undefined\n"]
    grouped = undef.drop_duplicates("cell_id").groupby(["variant", "loss", "dtype"], sort=False)
    for (variant, loss, dtype), group in grouped:
        lines.append(f"- {variant}, loss {loss}, {dtype}: d ∈ {{{_sizes(group)}}} "
                     f"— e.g. {group['error'].iloc[0].removeprefix('undefined: ')[:160]}")
    lines.append("")
    return lines


def _uncertified_section(all_rows: pd.DataFrame) -> list[str]:
    uncertified = all_rows[uncertified_cells(all_rows)].drop_duplicates("cell_id")
    if uncertified.empty:
        return []
    lines = ["## Cells whose ground truth is not certified (not scored)\n"]
    for (variant, loss, dtype), group in uncertified.groupby(["variant", "loss", "dtype"], sort=False):
        sizes = ", ".join(f"{d} ({digits:.1f} digits)" for d, digits in zip(group["d"], group["truth_digits"]))
        lines.append(f"- {variant}, loss {loss}, {dtype}: d = {sizes}")
    lines.append("")
    return lines


def _unbuilt_section(all_rows: pd.DataFrame) -> list[str]:
    """Cells whose spectrum cannot exist at that size."""
    unbuilt = all_rows[all_rows["error"].fillna("").str.startswith("not built:")].drop_duplicates("cell_id")
    if unbuilt.empty:
        return []
    lines = ["## Cells not built (the family variant does not exist at that size)\n"]
    for variant, group in unbuilt.groupby("variant", sort=False):
        lines.append(f"- {variant}: d ∈ {{{_sizes(group)}}} — "
                     f"{group['error'].iloc[0].removeprefix('not built: ')}")
    lines.append("")
    return lines


def _errors_section(all_rows: pd.DataFrame) -> list[str]:
    """Method errors (not the undefined-loss or not-built ones)."""
    errs = all_rows[all_rows["error"].notna() & ~all_rows["error"].fillna("").str.match(r"(undefined|not built):")]
    if errs.empty:
        return []
    lines = ["## Errors raised by methods or cells\n"]
    counts = errs.groupby(["method", "error"], sort=False).size()
    for (method, error), n in counts.items():
        lines.append(f"- {method} ({n} rows): {str(error).splitlines()[0][:200]}")
    lines.append("")
    return lines


# ----------------------------------------------------------------------------- reading
