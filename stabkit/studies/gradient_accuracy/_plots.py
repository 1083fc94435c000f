"""The figures of the gradient-accuracy report: angles per method and family (one panel per dtype),
angle against the smallest relative gap, median angle against d. Fixed margins and plain-text log
ticks: drawing is the costly part of a report."""

from __future__ import annotations

import numpy as np

from . import DTYPES
from .. import _figures
from ._scoring import ANGLE_FLOOR, NONFINITE_Y


def _dtypes(df) -> list[str]:
    return [t for t in DTYPES if t in set(df["dtype"])]


def _draw_y(values) -> np.ndarray:
    """Angles for a log axis: floored at ANGLE_FLOOR, non-finite at NONFINITE_Y."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isfinite(v), np.maximum(v, ANGLE_FLOOR), NONFINITE_Y)


def _angle_axis(ax) -> None:
    ax.set_yscale("log")
    ax.set_ylim(ANGLE_FLOOR / 5, NONFINITE_Y * 5)
    _figures.plain_log(ax.yaxis, range(-14, 3, 4))
    ax.axhline(NONFINITE_Y, color="0.5", lw=0.8, ls=":")
    ax.text(0.005, NONFINITE_Y * 1.4, "NaN/Inf", transform=ax.get_yaxis_transform(), fontsize=6, color="0.4")


def save(fig, path) -> None:
    """Write a figure of this report (the one place its resolution is set)."""
    _figures.save(fig, path, dpi=90)


def angle_panels(plt, df, variants, methods_order, path) -> None:
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
    save(fig, path)


def scatter_gap(plt, df, methods_order, path) -> None:
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
        _figures.plain_log(ax.xaxis, range(int(np.floor(lo)), 1, max(1, int(np.ceil(-lo / 6)))))
        _angle_axis(ax)
        ax.set_title(dtype, fontsize=9)
        ax.set_xlabel(f"min relative eigengap (below {gap_floor:g} drawn at it)", fontsize=8)
    axes[0, 0].set_ylabel("angle to truth (deg)", fontsize=8)
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.93, bottom=0.12, wspace=0.05)
    save(fig, path)


def lines_d(plt, df, methods_order, path) -> None:
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
    save(fig, path)
