"""The gradient-accuracy report: an introduction with the cell counts, a reading generated from
the numbers, the verdict per family, median-angle / NaN-Inf / relative-error tables, the figures,
and the cells that were not scored (undefined loss, uncertified truth, not built, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import _figures
from .._checks import family_label, variant_labels
from .._stats import median_interval
from . import _plots
from ._scoring import (ANGLE_FLOOR, NONFINITE_Y, TIE_FACTOR, attempted, deg, order, own_function_mask, pct,
                       ranked_rows, scored, tie_group, uncertified_cells, uncertified_mask, verdicts)


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
    lines += ["## Reading\n", *(f"- {s}" for s in _reading(df, ran, methods_order)), ""]
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
             "Medians over the family's cells where every ranked method has such a row (like for like); the best "
             "method's median with its distribution-free 95 % interval (order statistics at binomial ranks; none "
             "below 6 cells).\n",
             "| family | best | median angle | 95 % CI (best) | tied with | cells ranked |",
             "|---|---|---|---|---|---|"]
    v = verdicts(results).set_index("variant")
    for variant in [x for x in variants if x in v.index]:
        row = v.loc[variant]
        group = [m for m in methods_order if m == row["best"] or m in row["ties"]]
        ranked = ranked_rows(df[df["variant"] == variant])
        values = [float(ranked.loc[ranked["method"] == m, "angle_score"].median()) for m in group]
        angle = deg(min(values)) if len(group) == 1 else f"{deg(min(values)).rstrip('°')}–{deg(max(values))}"
        lo, hi = median_interval(ranked.loc[ranked["method"] == group[0], "angle_score"])
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
           "departs from the exact iteration (LAPACK mode 4, d = 16: the last λ̂ −4e-4 where the exact iteration gives 1e-4), so there the "
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


def _reading(df: pd.DataFrame, ran: pd.DataFrame, methods_order: list) -> list[str]:
    """Sentences whose every number comes from the results (``ran``: :func:`attempted`, for the rates).
    Sentences that compare methods use the rows scored against the loss itself: the extremes and the gap
    dependence on the cells all ranked methods share (:func:`ranked_rows`), the dtypes on matched cells."""
    ranked = ranked_rows(df)
    out = [_extremes_sentence(df, ranked, methods_order)]
    out += _failure_sentences(ran, methods_order)
    out += _gap_sentences(ranked, methods_order)
    out += _dtype_sentence(df[~own_function_mask(df)], methods_order)
    out += _size_sentence(ranked, methods_order)
    digits = df.drop_duplicates("cell_id")["truth_digits"]
    out.append(f"Scored ground truths carry {digits.min():.1f} to {digits.max():.1f} certified digits.")
    return out


def _extremes_sentence(df, ranked, methods_order) -> str:
    """Lowest and highest median angle, over the cells every ranked method has (``ranked``)."""
    n_all, n = df["cell_id"].nunique(), ranked["cell_id"].nunique()
    unranked = [m for m in methods_order if m in set(df["method"]) and m not in set(ranked["method"])]
    left_out = (f"; not ranked (no row scored against the loss itself): {', '.join(unranked)}" if unranked else "")
    if ranked.empty:
        return (f"No cell of the {n_all} scored cells has a row scored against the loss itself for every method, "
                f"so no method is ranked{left_out}.")
    med = ranked.groupby("method")["angle_score"].median().reindex(methods_order).dropna().sort_values(kind="stable")
    tied = [m for m in methods_order if m in tie_group(med)]

    def ci(m) -> str:  # distribution-free 95 % interval of the method's median over the same cells
        lo, hi = median_interval(ranked.loc[ranked["method"] == m, "angle_score"])
        return "none (too few cells)" if lo != lo else f"[{deg(lo)}, {deg(hi)}]"

    lowest = (f"{med.index[0]}'s ({deg(med.iloc[0])}, 95 % CI {ci(med.index[0])})" if len(tied) == 1 else
              f"shared by {', '.join(tied)} ({deg(med[tied].min())} to {deg(med[tied].max())}, within the tie factor "
              f"{TIE_FACTOR:g}; 95 % CIs {', '.join(f'{m} {ci(m)}' for m in tied)})")
    where, rule = ((f"Over all {n} scored cells", " (rows scored against the loss itself)") if n == n_all else
                   (f"Over the {n} of {n_all} scored cells common to all methods scored against the loss itself", ""))
    return (f"{where}, the lowest median angle is {lowest} and the highest is {med.index[-1]}'s "
            f"({deg(med.iloc[-1])}, 95 % CI {ci(med.index[-1])}){rule}{left_out}. Intervals: distribution-free, "
            "from the order statistics (binomial ranks).")


def _failure_sentences(df, methods_order) -> list[str]:
    out = []
    nonfinite = df.groupby("method")["nonfinite"].mean().reindex(methods_order).dropna()
    bad = nonfinite[nonfinite > 0].sort_values(ascending=False, kind="stable")
    raised = df.groupby("method")["raised"].mean().reindex(methods_order).dropna()
    raised = raised[raised > 0].sort_values(ascending=False, kind="stable")
    if not raised.empty:
        out.append("Methods that raised an error instead of returning a gradient (share of the cells with a "
                   "certified truth of the loss): "
                   + ", ".join(f"{m} {pct(r)}" for m, r in raised.items()) + " — counted as +∞ in medians.")
    if bad.empty:
        out.append("No method produced a NaN/Inf gradient on any scored cell.")
    else:
        parts = ", ".join(f"{m} {pct(r)}" for m, r in bad.items())
        clean = [m for m in methods_order if m in nonfinite.index and nonfinite[m] == 0 and m not in raised.index]
        out.append(f"NaN/Inf gradients returned (share of the cells with a certified truth of the loss): {parts}"
                   + (f"; always finite: {', '.join(clean)}." if clean else "."))
    return out


def _gap_sentences(ranked, methods_order) -> list[str]:
    """Gap dependence on the cells every ranked method has (``ranked``): median angle in the quarter of
    those cells with the smallest gaps against the quarter with the largest, and the method whose median
    rises most in degrees (ties: within TIE_FACTOR of the largest rise)."""
    cells = ranked.drop_duplicates("cell_id")
    gaps = cells["min_rel_gap"].clip(lower=0)
    if gaps.nunique() <= 3:
        return []
    low, high = gaps.quantile(0.25), gaps.quantile(0.75)
    n_small, n_large = int((cells["min_rel_gap"] <= low).sum()), int((cells["min_rel_gap"] >= high).sum())
    small = ranked[ranked["min_rel_gap"] <= low].groupby("method")["angle_score"].median()
    large = ranked[ranked["min_rel_gap"] >= high].groupby("method")["angle_score"].median()
    names = [m for m in methods_order if m in small.index and m in large.index]
    phrases = [f"{m} {deg(large[m])} → {deg(small[m])}" for m in names]
    out = [f"Over the same {len(cells)} cells, from the quarter with the largest relative gap (≥ {high:.2g}, "
           f"{n_large} cells) to the quarter with the smallest (≤ {low:.2g}, {n_small} cells), the median angle "
           f"moves: " + "; ".join(phrases) + "."]
    rise = (small[names] - large[names]).dropna()  # NaN: non-finite in both quarters, no rise to compare
    to_nonfinite = [m for m in rise.index if np.isinf(rise[m]) and rise[m] > 0]
    finite = rise[np.isfinite(rise)]
    metric = "small-gap quarter minus large-gap quarter, in degrees"
    if to_nonfinite:
        out.append(f"The median angle goes from finite in the large-gap quarter to NaN/Inf in the small-gap quarter "
                   f"for {', '.join(to_nonfinite)}.")
    elif not finite.empty and finite.max() > 0:
        top = finite.idxmax()
        tied = [m for m in finite.index if m != top and finite[m] >= finite[top] / TIE_FACTOR]
        out.append(f"The largest rise of the median angle ({metric}) is {top}'s (+{finite[top]:.3g}°)"
                   + (f"; within the tie factor {TIE_FACTOR:g} of it: "
                      + ", ".join(f"{m} (+{finite[m]:.3g}°)" for m in tied) if tied else "") + ".")
    elif not finite.empty:
        out.append("No method's median angle rises from the large-gap to the small-gap quarter.")
    return out


def _dtype_sentence(df, methods_order) -> list[str]:
    """float32 / float64 median angle per method, each on the cells it was scored on in both dtypes."""
    if df["dtype"].nunique() <= 1 or not {"float32", "float64"} <= set(df["dtype"]):
        return []
    def by_twin(dtype):  # the cell id without its dtype (cell ids: family|d=…|dtype|loss|seed=…)
        rows = df[df["dtype"] == dtype]
        twin = rows["cell_id"].str.replace(f"|{dtype}|", "|", regex=False)
        return rows.set_index([twin, rows["method"]])["angle_score"].rename(dtype)

    pairs = pd.concat([by_twin("float32"), by_twin("float64")], axis=1, join="inner").groupby(level=1)
    med, n = pairs.median(), pairs.size()
    ratio = med["float32"] / med["float64"]
    ok = [m for m in methods_order if m in ratio.index and np.isfinite(ratio[m]) and ratio[m] > 0]
    no_ratio = [m for m in methods_order if m in ratio.index and m not in ok]
    if not ok:
        return []
    ratio = ratio[ok]
    lo, hi = ratio.idxmin(), ratio.idxmax()
    return [f"float32 against float64, each method on the cells scored in both dtypes (rows scored against the loss "
            f"itself): the ratio of median angles (float32 / float64) ranges from {ratio[lo]:.2g} ({lo}, {n[lo]} "
            f"cell pairs) to {ratio[hi]:.2g} ({hi}, {n[hi]} cell pairs)"
            + (("; no finite ratio for " + ", ".join(f"{m} (float32 median {deg(med.loc[m, 'float32'])}, float64 "
                                                      f"{deg(med.loc[m, 'float64'])})" for m in no_ratio))
               if no_ratio else "") + "."]


def _size_sentence(ranked, methods_order) -> list[str]:
    """Smallest against largest d, on the ranked rows (:func:`ranked_rows`: same cells for every method)."""
    if ranked["d"].nunique() <= 1:
        return []
    dmin, dmax = ranked["d"].min(), ranked["d"].max()
    a = ranked[ranked["d"] == dmin].groupby("method")["angle_score"].median()
    b = ranked[ranked["d"] == dmax].groupby("method")["angle_score"].median()
    grew = [m for m in methods_order if m in a.index and m in b.index and np.isfinite(a[m]) and b[m] > 10 * a[m]]
    n_min, n_max = (ranked.loc[ranked["d"] == x, "cell_id"].nunique() for x in (dmin, dmax))
    return [f"From d={dmin} ({n_min} cells) to d={dmax} ({n_max} cells), on the same cells for every method, "
            + (f"the median angle grows more than tenfold for {', '.join(grew)}."
               if grew else "no method's median angle grows more than tenfold.")]
