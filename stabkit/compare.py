"""Run gradient methods on one matrix and score each against the certified truth."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from . import methods, metrics
from .losses import make_loss
from .reference import Truth, ground_truth
from .validation import check_dtype, check_symmetric

#: The row keys ``compare`` produces per method (the CLI's JSON lines add "method").
ROW_KEYS = ("angle_deg", "rel_err", "norm_ratio", "finite", "seconds")

#: Cost model of the certified truth (flint engine, 2 cores; issue 16's measurements: 80.5 s and
#: 2.1 GB peak at d = 1024, time growing like d^2.5 and memory like d²). Only a guard against
#: starting hour-long or impossible runs by accident; a faster engine only makes it pessimistic.
TRUTH_SECONDS_AT_1024 = 80.5
TRUTH_BYTES_AT_1024 = 2.1e9
#: Above this estimate ``check_truth_cost`` refuses unless forced.
TRUTH_SECONDS_LIMIT = 120.0


@dataclass(frozen=True)
class Comparison:
    truth: Truth
    rows: list[dict]  # one per method: method + ROW_KEYS (+ "error" when the method raised)
    diagnostics: dict


def compare(A, loss_name: str, method_specs=None, *, dtype="float64", seed: int = 0, weight=None, k: int = 1,
            truth: Truth | None = None) -> Comparison:
    """Gradient of probe loss ``loss_name`` by each method in ``dtype``, against the truth.

    The truth is that of the matrix actually fed to the methods (A rounded to ``dtype``), so the
    comparison measures the backward rule, not the rounding of the input. Methods default to all.
    """
    dt = check_dtype(dtype)
    A = check_symmetric(np.asarray(A)).astype(dt)
    d = A.shape[-1]
    loss = make_loss(loss_name, d, seed=seed, weight=weight, k=k)
    specs = [methods.parse_spec(s) if isinstance(s, str) else s for s in (method_specs or methods.NAMES)]
    truth = truth or ground_truth(A, loss)
    _warm_up(specs, loss_name, dt, seed)
    rows = []
    for name, params in specs:
        row = {"method": methods.format_spec(name, params)}
        start = time.perf_counter()
        try:
            g, _, _ = methods.gradient((name, params), A, loss)
            row.update(metrics.gradient_metrics(g, truth.grad))
        except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            row.update(angle_deg=np.nan, rel_err=np.nan, norm_ratio=np.nan, finite=False,
                       error=f"{type(exc).__name__}: {exc}")
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return Comparison(truth, rows, metrics.spectrum_diagnostics(truth.eigenvalues, dt))


def truth_cost(d: int) -> tuple[float, float]:
    """Rough (seconds, peak bytes) of the certified truth of a d×d matrix (see TRUTH_SECONDS_AT_1024)."""
    scale = max(d, 1) / 1024
    return TRUTH_SECONDS_AT_1024 * scale**2.5, TRUTH_BYTES_AT_1024 * scale**2


def check_truth_cost(d: int, force: bool = False, memory_bytes: float | None = None) -> None:
    """ValueError before anything is allocated when the truth at size d cannot fit in memory, or
    (unless ``force``) is estimated to take longer than TRUTH_SECONDS_LIMIT."""
    if d < 2:
        raise ValueError(f"matrix size d = {d}: need d ≥ 2")
    seconds, peak = truth_cost(d)
    memory = memory_bytes if memory_bytes is not None else _physical_memory()
    if memory and peak > 0.8 * memory:
        raise ValueError(f"d = {d}: the certified truth needs ~{peak / 2**30:.0f} GiB, this machine has "
                         f"{memory / 2**30:.0f} GiB; use a smaller d")
    if seconds > TRUTH_SECONDS_LIMIT and not force:
        raise ValueError(f"d = {d}: the certified truth is estimated to take ~{seconds / 60:.0f} min "
                         f"(limit {TRUTH_SECONDS_LIMIT:.0f} s); pass --force to run it anyway, or use a smaller d")


def _physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


#: (method name, dtype) pairs already run once in this process (see ``_warm_up``).
_WARM: set = set()


def _warm_up(specs, loss_name: str, dtype, seed: int) -> None:
    """Run each method once per process and dtype on a tiny matrix, untimed, so first-call costs
    (torch's lazy initialisation: 0.6–1.1 s for the ``torch`` method) are not counted as the
    method's time."""
    todo = [spec for spec in specs if (spec[0], np.dtype(dtype).str) not in _WARM]
    if not todo:
        return
    A = np.diag(np.arange(1.0, 4.0)).astype(dtype)
    try:
        loss = make_loss(loss_name, 3, seed=seed)
    except ValueError:
        return
    for spec in todo:
        try:
            methods.gradient(spec, A, loss)
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            pass
        _WARM.add((spec[0], np.dtype(dtype).str))
