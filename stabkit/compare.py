"""Run gradient methods on one matrix and score each against the certified truth.

Every method is scored against the function its forward computes. Most methods compute the
loss itself; a truncating method (``pi``: SVD-PI's breaking conditions; ``Method.kept``) computes
the loss restricted to its kept eigenpairs (``losses.truncate``: f·1[kept] for a spectral loss,
w·kept for a weighted one), so ``angle_deg``/``rel_err``/``norm_ratio`` are against the truth of
that function, and ``angle_full_deg`` is the angle to the truth of the untruncated loss (equal to
``angle_deg`` for a method that keeps every pair). ``kept`` is the number of pairs kept;
``truth_digits`` the certified digits of the truth ``angle_deg`` is measured against (NaN when the
truncated function has no truth there: a kept and a dropped eigenvalue numerically equal).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from . import methods, metrics, reference
from .losses import make_loss, truncate
from .reference import Truth, ground_truth
from .validation import check_dtype, check_symmetric

#: The row keys ``compare`` produces per method (the CLI's JSON lines add "method").
ROW_KEYS = ("angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds", "truth_digits")


@dataclass(frozen=True)
class Comparison:
    truth: Truth  # of the untruncated loss
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
    own_truths: dict[bytes, Truth | ValueError] = {}
    rows = []
    for name, params in specs:
        row = {"method": methods.format_spec(name, params)}
        start = time.perf_counter()
        try:
            g, _, _, kept = methods.evaluate((name, params), A, loss)
            kept = np.asarray(kept, dtype=bool)
            row["kept"] = int(kept.sum())
            own = truth
            if not kept.all():
                key = kept.tobytes()
                if key not in own_truths:
                    try:
                        own_truths[key] = truncated_truth(A, loss, kept, truth)
                    except ValueError as exc:
                        own_truths[key] = exc
                own = own_truths[key]
            if isinstance(own, ValueError):
                row.update(angle_deg=math.nan, rel_err=math.nan, norm_ratio=math.nan, finite=metrics.finite(g),
                           truth_digits=math.nan, error=f"no truth for the truncated function: {own}")
            else:
                row.update(metrics.gradient_metrics(g, own.grad), truth_digits=float(own.digits))
            row["angle_full_deg"] = metrics.angle_deg(g, truth.grad)
        except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            row.update(angle_deg=math.nan, angle_full_deg=math.nan, kept=-1, rel_err=math.nan, norm_ratio=math.nan,
                       finite=False, truth_digits=float(truth.digits), error=f"{type(exc).__name__}: {exc}")
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return Comparison(truth, rows, metrics.spectrum_diagnostics(truth.eigenvalues, dt))


def truncated_truth(A, loss, kept, full: Truth) -> Truth:
    """Truth of ``loss`` restricted to the ``kept`` pairs (``losses.truncate``) at A as given.

    Same engine as ``full``. The flint engine has no rigorous bound for f·1[kept] (its divided
    differences across the kept/dropped boundary are not bounded by f''), so there ``digits`` is
    the agreement of the gradients at two working precisions (P and 1.5P + 5, P as the reference
    module chooses it), the same kind of estimate as the mpmath engine's.
    """
    tl = truncate(loss, full.eigenvalues, kept)
    if tl is loss:
        return full
    if tl.kind == "weighted" or full.engine != "flint":
        return ground_truth(A, tl, engine=full.engine)
    start = time.perf_counter()
    A64 = np.asarray(A, dtype=np.float64)
    P = reference._choose_digits(A64)
    lo, _, _ = reference._hp_gradient(A, tl, "flint", cache=True, _dps=P)
    hi, lam64, _ = reference._hp_gradient(A, tl, "flint", cache=True, _dps=math.ceil(1.5 * P) + 5)
    digits = reference._agreement_digits(hi, lo)
    grad = np.array([float(x) for x in hi], dtype=np.float64).reshape(A64.shape)
    return Truth(grad, lam64, float(digits), "flint", time.perf_counter() - start)
