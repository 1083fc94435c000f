"""Run gradient methods on one matrix and score each against the certified truth.

Every method is scored against the function its forward computes. Most methods compute the
loss itself; a method whose forward stops short of the exact decomposition (power iteration from
random starts, ``Method.iteration``) computes L at its own (λ̂, Û) and is scored against the
reverse mode of that iteration in high precision (:func:`iterated_truth`), so its ``angle_deg``
measures its backward and the float64 rounding of its forward (on ill-conditioned iterations the
rounding dominates: LAPACK mode 4, d = 16, where the exact iteration's smallest λ̂ is 1e-4 the
float64 one came out negative, about −1e-4 to −4e-4 on the machines and versions tried, and the
gradient 29°–58° from its own function's: README), and
its ``angle_full_deg`` (against the exact loss) its forward's error as well; a
truncating method (SVD-PI's breaking conditions; ``Method.kept``) computes
the loss restricted to its kept eigenpairs (``losses.truncate``: f·1[kept] for a spectral loss,
w·kept for a weighted one), so ``angle_deg``/``rel_err``/``norm_ratio`` are against the truth of
that function, and ``angle_full_deg`` is the angle to the truth of the untruncated loss (equal to
``angle_deg`` for a method that keeps every pair). ``kept`` is the number of pairs kept;
``truth_digits`` the certified digits of the truth ``angle_deg`` is measured against (NaN when the
truncated function has no truth there: a kept and a dropped eigenvalue numerically equal).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import methods, metrics, reference
from .losses import make_loss, truncate
from .reference import Truth, ground_truth
from .errors import InputError
from .validation import check_symmetric, dtype_name

#: The row keys ``compare`` produces per method (the CLI's JSON lines add "method").
ROW_KEYS = ("angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds", "truth_digits")

#: Cost model of the certified truth (flint engine, 2 cores; issue 16's measurements: 80.5 s and
#: 2.1 GB peak at d = 1024, time growing like d^2.5 and memory like d²). Only a guard against
#: starting hour-long or impossible runs by accident; a faster engine only makes it pessimistic.
TRUTH_SECONDS_AT_1024 = 80.5
TRUTH_BYTES_AT_1024 = 2.1e9
#: The truth of an iterating method's own function (``reference.iterated_truth``: d stages of T
#: steps, forward and reverse, at two precisions): 54 s at d = 256 with T = 19 on 2 cores, growing like
#: T·d³, one per iterating method compared. At 256 bits; a spectrum that needs more bits costs more
#: (rank_deficient at d = 32 needs 4096 bits: 24× the 256-bit time), so this is a lower estimate.
ITERATED_SECONDS_AT_256 = 54.0
#: Above this estimate ``check_truth_cost`` refuses unless forced.
TRUTH_SECONDS_LIMIT = 120.0


@dataclass(frozen=True)
class Comparison:
    truth: Truth  # of the untruncated loss
    rows: list[dict]  # one per method: method + ROW_KEYS (+ "error" when the method raised)
    diagnostics: dict
    dtype: str = "float64"  # the methods' dtype, by its name (validation.DTYPE_NAMES)


def compare(A, loss_name: str, method_specs=None, *, dtype="float64", seed: int = 0, weight=None, k: int = 1,
            truth: Truth | None = None) -> Comparison:
    """Gradient of probe loss ``loss_name`` by each method in ``dtype``, against the truth.

    The truth is that of the matrix actually fed to the methods (A rounded to ``dtype``), so the
    comparison measures the backward rule, not the rounding of the input. ``method_specs``: Specs
    (or anything ``methods.spec`` takes: spec text, a (name, params) pair), made Specs once here, or
    one Spec or spec text alone (a lone pair is read as two specs: put it in a list); default (None or
    empty) every registered method. ``truth``: the Truth of A, to
    reuse. ``dtype``: "float32" or "float64", or np.float32/np.float64 (or their np.dtype),
    recorded by name in ``Comparison.dtype``; numpy's text aliases ("double", "f8") are refused, as
    on the command line.
    """
    name = dtype_name(dtype)
    dt = np.dtype(name)
    A = _fits(check_symmetric(np.asarray(A)), dt, "matrix", "A")  # rounding each entry keeps it exactly symmetric
    d = A.shape[-1]
    loss = make_loss(loss_name, d, seed=seed, weight=weight, k=k)
    if weight is not None:  # the methods take G in dt: one beyond its range made every row NaN, without a word
        _fits(loss.weight, dt, "loss weight", "G")
    if isinstance(method_specs, (str, methods.Spec)):  # one spec, not a list of its characters
        method_specs = [method_specs]
    specs = [methods.spec(s) for s in (method_specs or methods.NAMES)]
    if truth is not None and np.shape(getattr(truth, "grad", None)) != A.shape:
        raise InputError(f"truth must be the Truth of this {d}×{d} matrix (reference.ground_truth), got "
                         + (f"one of shape {truth.grad.shape}" if isinstance(truth, Truth) else repr(truth)))
    truth = truth or ground_truth(A, loss)
    own_truths: dict[bytes, Truth | ValueError] = {}
    _warm_up(specs, loss_name, dt, seed)
    rows = []
    for spec in specs:
        row = {"method": str(spec)}
        start = time.perf_counter()
        try:
            g, _, _, kept = spec.evaluate(A, loss)
            row["seconds"] = time.perf_counter() - start  # the method's own time, not its truth's
            kept = np.asarray(kept, dtype=bool)
            row["kept"] = int(kept.sum())
            own = truth
            if spec.method.approximate_forward and metrics.finite(g):  # a NaN/Inf gradient fails either way
                try:
                    own = iterated_truth(A, loss, spec, kept)
                except ValueError as exc:
                    own = exc
            elif not kept.all():
                key = kept.tobytes()
                if key not in own_truths:
                    try:
                        own_truths[key] = truncated_truth(A, loss, kept, truth)
                    except ValueError as exc:
                        own_truths[key] = exc
                own = own_truths[key]
            if isinstance(own, ValueError):
                row.update(angle_deg=math.nan, rel_err=math.nan, norm_ratio=math.nan, finite=metrics.finite(g),
                           truth_digits=math.nan, error=f"no truth for the method's own function: {own}")
            else:
                row.update(metrics.gradient_metrics(g, own.grad), truth_digits=float(own.digits))
            row["angle_full_deg"] = metrics.angle_deg(g, truth.grad)
        except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            row.update(angle_deg=math.nan, angle_full_deg=math.nan, kept=-1, rel_err=math.nan, norm_ratio=math.nan,
                       finite=False, truth_digits=float(truth.digits), error=f"{type(exc).__name__}: {exc}")
        row.setdefault("seconds", time.perf_counter() - start)
        rows.append(row)
    return Comparison(truth, rows, metrics.spectrum_diagnostics(truth.eigenvalues, dt), name)


def _fits(array: np.ndarray, dt: np.dtype, what: str, symbol: str) -> np.ndarray:
    """``array`` rounded to ``dt``; InputError naming ``what`` where a finite entry lies beyond dt's range,
    or where the whole array, normal in its own dtype, falls below dt's normal range (float32 flushed
    diag(1e-50, 2e-50) to 0, and the error blamed "smallest eigenvalue 0")."""
    with np.errstate(over="ignore", under="ignore"):  # finite entries beyond dt's range become Inf: refused by name
        cast = array.astype(dt)
    largest = float(np.abs(array).max(initial=0.0))
    if np.isinf(cast).any():
        raise InputError(f"{what} is too large for {dt.name}: max|{symbol}| = {largest:.3g} exceeds "
                         f"{dt.name}'s largest {float(np.finfo(dt).max):.3g}; scale it down or use float64")
    if np.finfo(array.dtype).tiny <= largest and float(np.abs(cast).max(initial=0.0)) < np.finfo(dt).tiny:
        raise InputError(f"{what} is too small for {dt.name}: max|{symbol}| = {largest:.3g} is below {dt.name}'s "
                         f"smallest normal number {float(np.finfo(dt).tiny):.3g}; scale it up or use float64")
    return cast


def iterated_truth(A, loss, spec, kept=None) -> Truth:
    """Truth of L∘forward for a method whose forward stops short of the exact decomposition
    (``Method.iteration``: power iteration from its start vectors): ``reference.iterated_truth`` at
    A as given, with the start vectors the forward uses in A's dtype and the pairs it ``kept``
    (default: those its forward keeps at A)."""
    starts, steps = spec.iteration(A)
    if kept is None:
        lam, _, state = spec.forward(A)
        kept = spec.kept(state, lam)
    return reference.iterated_truth(A, loss, starts, steps, np.asarray(kept, dtype=bool))


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


def truth_cost(d: int, specs=()) -> tuple[float, float]:
    """Rough (seconds, peak bytes) of the certified truth of a d×d matrix (see TRUTH_SECONDS_AT_1024),
    plus the own-function truth of each iterating method among ``specs`` (ITERATED_SECONDS_AT_256)."""
    scale = max(d, 1) / 1024
    seconds = TRUTH_SECONDS_AT_1024 * scale**2.5
    for spec in specs:
        if spec.method.approximate_forward:
            _, steps = spec.iteration(np.eye(2))  # the step count does not depend on the matrix
            seconds += ITERATED_SECONDS_AT_256 * steps / 19 * (max(d, 1) / 256) ** 3
    return seconds, TRUTH_BYTES_AT_1024 * scale**2


def check_truth_cost(d: int, force: bool = False, memory_bytes: float | None = None, specs=()) -> None:
    """ValueError before anything is allocated when the truth at size d cannot fit in memory, or
    (unless ``force``) is estimated to take longer than TRUTH_SECONDS_LIMIT; ``specs``: the methods
    compared (an iterating one, ``Method.iteration``, has a truth of its own function too)."""
    if d < 1:
        raise ValueError(f"matrix size d = {d}: need d ≥ 1")
    seconds, peak = truth_cost(d, specs)
    memory = memory_bytes if memory_bytes is not None else _physical_memory()
    if memory and peak > 0.8 * memory:
        raise ValueError(f"d = {d}: the certified truth needs ~{peak / 2**30:.0f} GiB, this machine has "
                         f"{memory / 2**30:.0f} GiB; use a smaller d")
    if seconds > TRUTH_SECONDS_LIMIT and not force:
        iterating = any(s.method.approximate_forward for s in specs)
        what = ("the certified truth and the iterating methods' own-function truths are" if iterating
                else "the certified truth is")
        raise ValueError(f"d = {d}: {what} estimated to take ~{seconds / 60:.0f} min "
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
    todo = [spec for spec in specs if (spec.name, np.dtype(dtype).str) not in _WARM]
    if not todo:
        return
    A = np.diag(np.arange(1.0, 4.0)).astype(dtype)
    try:
        loss = make_loss(loss_name, 3, seed=seed)
    except ValueError:
        return
    for spec in todo:
        try:
            spec.evaluate(A, loss)
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            pass
        _WARM.add((spec.name, np.dtype(dtype).str))
