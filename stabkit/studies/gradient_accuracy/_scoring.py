"""Scoring the gradient-accuracy rows: which rows count (certified truth), median angles with
NaN/Inf as +∞, ties, the per-family verdicts and the one-line summary of the reports index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import methods
from .._checks import variant_labels
from .._stats import median_interval

#: Angles below this are drawn at it on log axes (an exact 0° has no logarithm).
ANGLE_FLOOR = 1e-14
#: Tolerance of every ranking: a method ties with the best when its median angle is ≤ TIE_FACTOR × best
#: (or both ≤ ANGLE_FLOOR). Rounding noise moves float32 angles by ~1e-5 relative between BLAS
#: builds; a factor 1.25 absorbs it where the gaps are resolved. On a gap within ~3e4 unit roundoffs
#: the eigensolver's basis inside the cluster moves the angles by more, so a family holding such gaps
#: can rank differently on another CPU (the report says so; tests/test_quickstart_reproducible.py).
TIE_FACTOR = 1.25
#: Where a NaN/Inf median is drawn on the angle axes: above 180°, the largest possible angle.
NONFINITE_Y = 1e3


def scored(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with a certified ground truth (≥ 12 digits); non-finite angles count as +inf.

    A truth below 12 certified digits is listed in the report, never scored against.
    """
    df = results.copy()
    df["variant"] = variant_labels(df)
    certified = uncertified_mask(df).eq(False) & df["truth_digits"].notna() if "truth_digits" in df \
        else pd.Series(False, index=df.index)
    df = df[certified].copy()
    df["angle_score"] = df["angle_deg"].where(df["angle_deg"].notna(), np.inf)
    df["raised"] = df["error"].notna()
    df["nonfinite"] = ~df["finite"].astype(bool) & ~df["raised"]
    return df


def attempted(results: pd.DataFrame) -> pd.DataFrame:
    """Rows where the method ran on a cell whose truth of the loss is certified: the denominator of
    the NaN/Inf and raised rates. A NaN/Inf gradient is a failure whatever the truth of the method's
    own function, so a row is kept even when that truth is missing or short of 12 digits (leaving
    those out would inflate the failure share)."""
    df = results.copy()
    df["variant"] = variant_labels(df)
    err = df["error"].fillna("").astype(str)
    own_missing = err.str.startswith("no truth for the method's own function")
    ran = ~err.str.match(r"(undefined|not built|cell failed):")
    df = df[ran & ~uncertified_cells(df) & (df["truth_digits"].notna() | own_missing)].copy()
    df["raised"] = df["error"].notna() & ~own_missing[df.index]
    df["nonfinite"] = ~df["finite"].astype(bool) & ~df["raised"]
    return df


def own_function_mask(df: pd.DataFrame) -> pd.Series:
    """Rows scored against a function other than the loss: the method dropped eigenpairs, or its
    forward is not the exact decomposition (its angles to its own function and to the loss differ).
    Rankings leave them out — a method can be exact for a function that is not the one asked for."""
    if "kept" not in df or "angle_full_deg" not in df:
        return pd.Series(False, index=df.index)
    truncated = (df["kept"] >= 0) & (df["kept"] < df["d"])
    iterating = {m: methods.spec(m).method.approximate_forward for m in df["method"].unique()}
    return truncated | df["method"].map(iterating).astype(bool)


def uncertified_cells(df: pd.DataFrame) -> pd.Series:
    """Rows of cells whose ground truth of the loss has fewer than 12 certified digits (then no row
    of the cell has more). A row whose own-function truth alone falls short is not scored either,
    but its cell is certified."""
    if df.empty:
        return pd.Series(False, index=df.index)
    best = df.groupby("cell_id")["truth_certified"].transform(lambda c: c.fillna(False).astype(bool).any())
    return df["truth_digits"].notna() & ~best.astype(bool)


def uncertified_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose ground truth exists but has fewer than 12 certified digits."""
    return df["truth_digits"].notna() & ~df["truth_certified"].fillna(False).astype(bool)


def order(values, reference) -> list:
    """The distinct ``values``: those in ``reference`` in its order, then the others as they come."""
    present = list(dict.fromkeys(values))
    ranked = [v for v in reference if v in present]
    return ranked + [v for v in present if v not in ranked]


def tie_group(med: pd.Series) -> list:
    """Methods of ``med`` (median angle per method, +inf = non-finite) tied with the lowest, lowest first."""
    med = med.sort_values(kind="stable")
    best = float(med.iloc[0])
    return [med.index[0]] + [m for m, v in med.iloc[1:].items()
                             if np.isfinite(v) and (v <= TIE_FACTOR * best or (v <= ANGLE_FLOOR and best <= ANGLE_FLOOR))]


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Best method per family variant by median angle (non-finite = +inf), with the tied methods; the
    medians over the variant's cells that every ranked method shares (:func:`ranked_rows`), whose
    number is ``cells``; ``medians`` and ``intervals`` (distribution-free 95 %,
    :func:`.._stats.median_interval`) of the best and tied methods. A variant with no such cell has no verdict."""
    out = []
    for variant, group in scored(results).groupby("variant", sort=False):
        group = ranked_rows(group)
        if group.empty:
            continue
        angles = group.groupby("method", sort=False)["angle_score"]
        med = angles.median().sort_values(kind="stable")
        tied = tie_group(med)
        out.append({"variant": variant, "best": tied[0], "median_angle_deg": float(med.iloc[0]), "ties": tied[1:],
                    "cells": int(group["cell_id"].nunique()) if "cell_id" in group else len(group),
                    "medians": {m: float(med[m]) for m in tied},
                    "intervals": {m: median_interval(angles.get_group(m)) for m in tied}})
    return pd.DataFrame(out, columns=["variant", "best", "median_angle_deg", "ties", "cells", "medians", "intervals"])


def ranked_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a ranking compares (``df``: :func:`scored`): those scored against the loss itself, on the
    cells where every method that has such a row has one — medians over the same cells, like for like.
    A method scored against its own function on some cells (it dropped pairs there) would otherwise be
    ranked on fewer, easier or harder, cells than the others."""
    df = df[~own_function_mask(df)]
    cells = [set(group) for _, group in df.groupby("method")["cell_id"]]
    common = set.intersection(*cells) if cells else set()
    return df[df["cell_id"].isin(common)]


def summary(results: pd.DataFrame) -> str:
    """One line for the reports index (optional hook read by the runner). Ties (median angles
    within TIE_FACTOR, NaN/Inf counts within one cell) are named together, in name order, so the
    line does not change with rounding noise between machines. Medians are over the cells common to
    the ranked methods (:func:`ranked_rows`); their number is given when it is not every scored cell."""
    df = scored(results)
    if df.empty:
        return f"{len(results)} rows, no cell with a defined loss"
    n_cells = df["cell_id"].nunique()
    ranked = ranked_rows(df)
    n_common = ranked["cell_id"].nunique()
    where = ("" if n_common == n_cells else
             f" over the {n_common} cells common to all methods scored against the loss itself")
    if ranked.empty:
        where = ""
        best = ("none (no row is scored against the loss itself)" if own_function_mask(df).all() else
                "none (no cell has a row scored against the loss itself for every method)")
    else:
        med = ranked.groupby("method")["angle_score"].median()
        tied = tie_group(med)
        best = (f"{tied[0]} ({deg(med[tied[0]])})" if len(tied) == 1 else
                f"{', '.join(sorted(tied))} (tied within ×{TIE_FACTOR:g}: {deg(med[tied].min())}–{deg(med[tied].max())})")
    ran = attempted(results)
    counts = ran.groupby("method")["nonfinite"].sum()
    top = int(counts.max())
    if top == 0:
        return f"{n_cells} scored cells; lowest median angle{where}: {best}; no NaN/Inf gradient"
    worst = sorted(m for m, n in counts.items() if n > 0 and n >= top - 1)
    return (f"{n_cells} scored cells; lowest median angle{where}: {best}; highest NaN/Inf rate: "
            + ", ".join(f"{m} ({pct(counts[m] / ran['cell_id'].nunique())})" for m in worst)
            + (" (within one cell: tied)" if len(worst) > 1 else ""))


def deg(value: float) -> str:
    return "non-finite" if not np.isfinite(value) else f"{value:.3g}°"


def pct(value: float) -> str:
    return f"{100 * value:.0f}%" if value in (0, 1) or value >= 0.01 else f"{100 * value:.2g}%"
