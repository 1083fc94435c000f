"""The committed quickstart report is reproducible: rebuilding it from scratch here gives the same
numbers within the tolerance its study file states (per angle: 1e-3 relative or 1e-4° absolute —
float32 cells differ across BLAS/LAPACK builds at ~1e-5 relative, and angles at rounding level,
~1e-5°, differ by more than that relative to themselves).

Not compared: a method on a spectrum whose smallest relative gap is within a few unit roundoffs'
worth of its dtype (``rounding_dominated``: 1e7 for an unbounded method, 3e4 for a bounded one).
There the eigensolver picks the basis inside the cluster by rounding, and every method's gradient
follows it: an unbounded one through 1/(λ_i − λ_j) (an angle error up to ~u/gap rad), a bounded one
because its coefficients are not constant on the cluster's diagonal (F_ii = 0 beside F_ij ≠ 0 at a
tie), so F ∘ (UᵀGU) changes with the basis. The LAPACK build and the CPU's kernels set those angles,
not the mathematics: torch's own eigh on the degenerate d = 8 float32 matrix gives 17° on one Xeon
and 1.2° on another, finite on one and NaN on the other, and SVD-Taylor on the degenerate d = 8
float64 matrix gave 7.07° on one AMD EPYC and 4.60° on another with the same numpy 2.4.6. There
only the bounded methods' finiteness is compared."""

import math
from pathlib import Path

import pandas as pd

from stabkit import methods
from stabkit.studies import runner

REPO = Path(__file__).resolve().parents[1]
REL, ABS_DEG = 1e-3, 1e-4
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}


def rounding_dominated(row) -> bool:
    """The basis the eigensolver rounds to inside a cluster moves the method's angle by up to ~u/gap rad:
    beyond the tolerance for an unbounded method below 1e7 unit roundoffs (where its error is itself
    ~u/gap), for a bounded one below 3e4 (seen: 1.1e-3 relative at 5e3 unit roundoffs, δ = 1e-12 in
    float64; nothing at the separated spectra's ≥ 1e5)."""
    bounded = methods.spec(row.method).method.bounded
    return row.min_rel_gap < (3e4 if bounded else 1e7) * UNIT_ROUNDOFF[row.dtype]


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
    both = both.rename(columns={"dtype_committed": "dtype", "min_rel_gap_committed": "min_rel_gap"})
    compared = both[[not rounding_dominated(r) for r in both.itertuples()]]
    # every method on the float64 separated and δ = 1e-6 spectra, the bounded ones on the float32 separated too
    assert compared["cell_id"].nunique() == 6 and len(compared) >= 4 * both["method"].nunique() + 2 * 8
    bad = [(r.cell_id, r.method, r.angle_deg_committed, r.angle_deg_now) for r in compared.itertuples()
           if not close(float(r.angle_deg_committed), float(r.angle_deg_now))]
    assert not bad, bad[:10]
    assert (compared["finite_committed"].astype(bool) == compared["finite_now"].astype(bool)).all()
    bounded = both[[methods.spec(m).method.bounded for m in both["method"]]]
    assert bounded["finite_committed"].astype(bool).all() and bounded["finite_now"].astype(bool).all()
