"""The committed quickstart report is reproducible: rebuilding it from scratch here gives the same
numbers within the tolerance its study file states (per angle: 1e-3 relative or 1e-4° absolute —
float32 cells differ across BLAS/LAPACK builds at ~1e-5 relative, and angles at rounding level,
~1e-5°, differ by more than that relative to themselves)."""

import math
from pathlib import Path

import pandas as pd

from stabkit.studies import runner

REPO = Path(__file__).resolve().parents[1]
REL, ABS_DEG = 1e-3, 1e-4


def close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= REL * max(abs(a), abs(b)) + ABS_DEG


def test_rebuilt_quickstart_reproduces_the_committed_angles(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_CACHE", str(tmp_path / "cache"))  # a cold truth cache, as on a new machine
    table = runner.run_study(REPO / "studies/quickstart.toml", out_root=tmp_path, jobs=1, progress=False,
                             command="test")
    committed = pd.read_csv(REPO / "reports/quickstart/results.csv")
    keys = ["cell_id", "method"]
    both = committed.merge(table.reset_index(drop=True), on=keys, suffixes=("_committed", "_now"))
    assert len(both) == len(committed) == len(table), "the grid changed: regenerate reports/quickstart"
    bad = [(r.cell_id, r.method, r.angle_deg_committed, r.angle_deg_now) for r in both.itertuples()
           if not close(float(r.angle_deg_committed), float(r.angle_deg_now))]
    assert not bad, bad[:10]
    assert (both["finite_committed"].astype(bool) == both["finite_now"].astype(bool)).all()
