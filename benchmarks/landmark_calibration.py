"""How often does the landmark link's 2-SE rule say "adds" — with no within-cell signal, and with one?

The zca-cifar10 report's link (``stabkit.studies._landmark.cross_validate``) calls the diagnostics
useful beyond the cell when the cross-validated Brier gain exceeds twice a standard error that treats
the runs as independent. This script measures that rule on data shaped like the study's own landmark
table (``reports/zca-cifar10/results.parquet``, early_frac 0.2):

* the same cells with the same numbers of runs;
* a run's features = those of a real run of the same cell, drawn with replacement, so the features
  keep their real scales, correlations and differences between cells, but carry nothing about the
  outcome inside a cell;
* outcome ~ Bernoulli(logit⁻¹(logit p_c + β·z)), p_c the cell's smoothed rate (the cell model's
  (k + a·p̄)/(n + a) with a = 2, the link's prior) and z ~ N(0, 1) an extra "signal" feature given
  to the fit with the others. β = 0 is the null; β > 0 is a run-level diagnostic (odds ratio e^β per
  SD) that the cell cannot know.

Per β it prints the fraction of data sets the rule calls "adds" (Clopper–Pearson 95 %), the mean gain,
and how well the reported SE matches the spread of the gain across data sets.

    python benchmarks/landmark_calibration.py --datasets 400 --beta 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from stabkit._markdown import markdown_table
from stabkit.studies import _landmark, _stats
from stabkit.studies.zca_cifar10 import tables

PRIOR = 2.0  # the link's default pseudo-runs


def real_table(results: Path, early_frac: float) -> pd.DataFrame:
    table, _ = tables.landmark_table(pd.read_parquet(results), early_frac)
    table["cell"] = _landmark.cell_ids(table)
    return table


def draw(table: pd.DataFrame, beta: float, rng: np.random.Generator) -> pd.DataFrame:
    """One data set drawn as the module doc says: the cells and features of ``table``'s runs
    resampled within each cell, a ``signal`` column z, and outcomes ``y`` from the cell rates and β·z."""
    feats = list(tables.FEATURES)
    cells = table["cell"].to_numpy()
    p_cell = _landmark.cell_rates(cells, table["y"].to_numpy(float), cells, PRIOR)
    drawn = np.empty(len(cells), dtype=int)
    for c in np.unique(cells):
        rows = np.flatnonzero(cells == c)
        drawn[rows] = rng.choice(rows, size=len(rows))
    z = rng.standard_normal(len(cells))
    eta = np.log(p_cell / (1 - p_cell)) + beta * z
    sim = table[[*_landmark.CELL_KEYS, "cell"]].copy()
    sim[feats] = table[feats].to_numpy(float)[drawn]
    sim["signal"] = z
    sim["y"] = (rng.random(len(cells)) < 1 / (1 + np.exp(-eta))).astype(float)
    return sim


def simulate(table: pd.DataFrame, beta: float, i: int, repeats: int) -> dict:
    """The link's verdict on data set ``i`` of ``beta``."""
    sim = draw(table, beta, np.random.default_rng([int(round(beta * 1000)), i]))
    y = sim["y"].to_numpy()
    fit = _landmark.cross_validate(sim, repeats=repeats, seed=i, features=(*tables.FEATURES, "signal"))
    if fit is None:
        return {"beta": beta, "i": i, "failures": int(y.sum()), "gain": np.nan, "gain_se": np.nan, "adds": np.nan}
    return {"beta": beta, "i": i, "failures": fit["failures"], "gain": fit["gain"], "gain_se": fit["gain_se"],
            "adds": float(fit["adds"])}


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for beta, g in rows.groupby("beta"):
        fitted = g.dropna(subset=["gain"])
        k, n = int(fitted["adds"].sum()), len(fitted)
        lo, hi = _stats.clopper_pearson(k, n)
        gain, se = fitted["gain"].to_numpy(), fitted["gain_se"].to_numpy()
        out.append({"beta": beta, "data sets": len(g), "fitted": n, "failures (mean)": g["failures"].mean(),
                    "adds": f"{k}/{n}", "adds 95% CI": f"[{lo:.3f}, {hi:.3f}]", "gain (mean)": gain.mean(),
                    "sd(gain)/mean SE": gain.std(ddof=1) / se.mean(),
                    "sd((gain - mean)/SE)": ((gain - gain.mean()) / se).std(ddof=1)})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=Path("reports/zca-cifar10/results.parquet"))
    ap.add_argument("--early-frac", type=float, default=0.2)
    ap.add_argument("--datasets", type=int, default=400)
    ap.add_argument("--beta", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--repeats", type=int, default=20, help="cross-validation repeats per data set (report: 100)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--csv", type=Path, help="also write every data set's row here")
    a = ap.parse_args()
    table = real_table(a.results, a.early_frac)
    print(f"template: {len(table)} runs in {table['cell'].nunique()} cells, {int(table['y'].sum())} failures")
    tasks = [(b, i) for b in a.beta for i in range(a.datasets)]
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(simulate, [table] * len(tasks), *zip(*tasks), [a.repeats] * len(tasks), chunksize=8))
    rows = pd.DataFrame(rows)
    if a.csv:
        rows.to_csv(a.csv, index=False)
    print(markdown_table(summary(rows), digits=4))


if __name__ == "__main__":
    main()
