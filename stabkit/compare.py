"""Run gradient methods on one matrix and score each against the certified truth."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import methods, metrics
from .losses import make_loss
from .reference import Truth, ground_truth
from .validation import check_dtype, check_symmetric

#: The row keys ``compare`` produces per method (the CLI's JSON lines add "method").
ROW_KEYS = ("angle_deg", "rel_err", "norm_ratio", "finite", "seconds")


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
