"""The Reading of the gradient-accuracy report: sentences whose every number comes from the results —
the extremes (with distribution-free intervals of the medians), the NaN/Inf rates, the dependence on
the gap, the dtype and the size — comparing methods like for like (:func:`._scoring.ranked_rows`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...validation import DTYPE_NAMES
from .._stats import median_interval
from ._scoring import TIE_FACTOR, deg, own_function_mask, pct, ranked_rows, tie_group


def reading(df: pd.DataFrame, ran: pd.DataFrame, methods_order: list) -> list[str]:
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
        why = ("no row is scored against the loss itself" if own_function_mask(df).all() else
               f"no cell of the {n_all} scored cells has a row scored against the loss itself for every method")
        return f"No method is ranked: {why}{left_out}."
    med = ranked.groupby("method")["angle_score"].median().reindex(methods_order).dropna().sort_values(kind="stable")
    tied = [m for m in methods_order if m in tie_group(med)]

    def ci(m) -> str:
        return _ci(ranked.loc[ranked["method"] == m, "angle_score"])

    lowest = (f"{med.index[0]}'s ({deg(med.iloc[0])}, 95 % CI {ci(med.index[0])})" if len(tied) == 1 else
              f"shared by {', '.join(tied)} ({deg(med[tied].min())} to {deg(med[tied].max())}, within the tie factor "
              f"{TIE_FACTOR:g}; 95 % CIs {', '.join(f'{m} {ci(m)}' for m in tied)})")
    where, rule = ((f"Over all {n} scored cells", " (rows scored against the loss itself)") if n == n_all else
                   (f"Over the {n} of {n_all} scored cells common to all methods scored against the loss itself", ""))
    note = (" Intervals: distribution-free, from the order statistics (binomial ranks); the cells are a designed "
            "grid, not a random sample, so an interval shows how the medians spread over these cells.")
    if len(med) == 1:  # nothing to rank it against
        return (f"{where}, only {med.index[0]} is ranked: its median angle is {deg(med.iloc[0])} (95 % CI "
                f"{ci(med.index[0])}){rule}{left_out}.{note}")
    return (f"{where}, the lowest median angle is {lowest} and the highest is {med.index[-1]}'s "
            f"({deg(med.iloc[-1])}, 95 % CI {ci(med.index[-1])}){rule}{left_out}.{note}")


def _ci(angles, too_few: str = "none (too few cells)") -> str:
    """Distribution-free 95 % interval of the median of ``angles`` (degrees), as text (``too_few`` if none)."""
    lo, hi = median_interval(angles)
    return too_few if lo != lo else f"[{deg(lo)}, {deg(hi)}]"


def _median_with_ci(angles) -> str:
    """The median of ``angles`` (degrees) with its 95 % interval, or its n where n is too small for one."""
    angles = pd.Series(angles).dropna()
    ci = _ci(angles, "")
    return f"{deg(angles.median())} ({f'95 % CI {ci}' if ci else f'{len(angles)} cells, too few for a 95 % CI'})"


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
    small_rows, large_rows = ranked[ranked["min_rel_gap"] <= low], ranked[ranked["min_rel_gap"] >= high]
    small = small_rows.groupby("method")["angle_score"].median()
    large = large_rows.groupby("method")["angle_score"].median()

    def moved(m) -> str:  # the method's medians in both quarters, with their intervals
        return (f"{_median_with_ci(large_rows.loc[large_rows['method'] == m, 'angle_score'])} → "
                f"{_median_with_ci(small_rows.loc[small_rows['method'] == m, 'angle_score'])}")

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
        out.append(f"The largest rise of the median angle ({metric}) is {top}'s (+{finite[top]:.3g}°: {moved(top)})"
                   + (f"; within the tie factor {TIE_FACTOR:g} of it: "
                      + ", ".join(f"{m} (+{finite[m]:.3g}°: {moved(m)})" for m in tied) if tied else "") + ".")
    elif not finite.empty:
        out.append("No method's median angle rises from the large-gap to the small-gap quarter.")
    return out


def _dtype_sentence(df, methods_order) -> list[str]:
    """float32 / float64 median angle per method, each on the cells it was scored on in both dtypes."""
    if df["dtype"].nunique() <= 1 or not set(DTYPE_NAMES) <= set(df["dtype"]):
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
    at_min, at_max = ranked[ranked["d"] == dmin], ranked[ranked["d"] == dmax]
    a = at_min.groupby("method")["angle_score"].median()
    b = at_max.groupby("method")["angle_score"].median()
    grew = [m for m in methods_order if m in a.index and m in b.index and np.isfinite(a[m]) and b[m] > 10 * a[m]]
    n_min, n_max = at_min["cell_id"].nunique(), at_max["cell_id"].nunique()

    def grown(m) -> str:  # the method's medians at both sizes, with their intervals
        return (f"{m} ({_median_with_ci(at_min.loc[at_min['method'] == m, 'angle_score'])} → "
                f"{_median_with_ci(at_max.loc[at_max['method'] == m, 'angle_score'])})")

    return [f"From d={dmin} ({n_min} cells) to d={dmax} ({n_max} cells), on the same cells for every method, "
            + (f"the median angle grows more than tenfold for {'; '.join(grown(m) for m in grew)}."
               if grew else "no method's median angle grows more than tenfold.")]
