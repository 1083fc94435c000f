"""Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, Table IV, as data.

The table's rows are keyed by the paper's own names (``Method.paper_name``: SVD, PI, SVD-PI,
SVD-Taylor, SVD-Clip) in the paper's order; :func:`method` gives the registered method behind a
row and :func:`row_of` the row of a method (None when the paper has none). Shared by the
training presets (``stabkit.train.preset``), the fast-path check and the two CIFAR-10 study kinds.
"""

from __future__ import annotations

from .. import methods
from ..methods import Method

#: the rows of Table IV in the paper's order
ROWS = ("SVD", "PI", "SVD-PI", "SVD-Taylor", "SVD-Clip")

#: success rate (%) of 15 runs × 350 epochs per row and group size d
SUCCESS_PCT = {
    "SVD": {4: 46.7, 8: 0.0, 16: 0.0, 32: 0.0, 64: 0.0},
    "PI": {4: 100.0, 8: 6.7, 16: 0.0, 32: 0.0, 64: 0.0},
    "SVD-PI": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},
    "SVD-Taylor": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},
    "SVD-Clip": {4: 100.0, 8: 100.0, 16: 100.0, 32: 100.0, 64: 100.0},
}

#: runs per cell in the paper, and the table as counts out of them
RUNS = 15
COUNTS = {row: {d: int(round(pct * RUNS / 100)) for d, pct in cells.items()} for row, cells in SUCCESS_PCT.items()}


def method(row: str) -> Method:
    """The registered method whose ``paper_name`` is ``row`` (KeyError naming the rows otherwise)."""
    for m in methods.REGISTRY.values():
        if m.paper_name == row:
            return m
    raise KeyError(f"no registered method has the paper name {row!r} (rows: {', '.join(ROWS)})")


def names() -> list[str]:
    """The registry names of the Table IV rows, in the paper's order."""
    return [method(row).name for row in ROWS]


def row_of(spec: "methods.Spec | Method") -> str | None:
    """The Table IV row of a method (or of a Spec's method), None when it is not in the table."""
    m = spec.method if isinstance(spec, methods.Spec) else spec
    return m.paper_name if m.paper_name in SUCCESS_PCT else None
