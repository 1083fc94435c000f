"""Certified high-precision ground truth for ∂L/∂A of the probe losses.

The truth is the exact gradient of the loss at the input matrix *exactly as given* (float32 input
is widened exactly to float64), evaluated by the Daleckii–Krein formula

    ∂L/∂A = U (D ∘ (Uᵀ G_sym U)) Uᵀ

(Daleckii & Krein 1965; see also Higham, "Functions of Matrices", SIAM 2008, Thm. 3.11) from a
high-precision eigendecomposition A = U diag(λ) Uᵀ.  Two engines compute that decomposition:

* ``mpmath`` — ``mpmath.eigsy`` (Jacobi/QL in arbitrary precision) at two precisions P and ≈1.5P,
  the gradient in mpmath arithmetic.  ``digits`` is the number of significant digits on which the
  two results agree, capped by what a backward-stable solver delivers at P (P − 3 − gap digits −
  condition digits − the digits a gradient small by cancellation loses against the scale of its
  terms), so two precisions making the same error cannot certify it.  This is an
  *agreement estimate*, not a proof.  Independent of the flint
  engine and of the float64 code paths; fine up to d ≈ 64.
* ``flint`` — float64 ``numpy.linalg.eigh`` refined by the Ogita–Aishima iteration (Ogita &
  Aishima, "Iterative refinement for symmetric eigenvalue decomposition", JJIAM 35, 2018; part II
  for clustered eigenvalues, JJIAM 36, 2019) with all matrix products done *exactly* in integer
  fixed point (python-flint ``fmpz_mat``).  From the exact products the final X is certified
  (see ``stabkit.reference._flint``): Weyl + Ostrowski bounds on every eigenvalue, a Davis–Kahan sin θ
  bound on every eigenvector whose eigenvalue enclosure is isolated, a subspace Davis–Kahan
  sin Θ bound on the invariant subspace of every group of overlapping enclosures (exactly
  repeated eigenvalues) that is isolated as a whole, and a perturbation bound that carries these
  through the Daleckii–Krein formula (inside a group, D is replaced by its value at the group's
  centre, with the mean-value bound max|f''|·radius on the difference).  When all of these exist
  (a spectral loss that carries bounds on |f''|, |f'''| — zca, sqrt, log — or a weighted one with
  equal weights inside every group), ``digits`` is that rigorous bound (bound arithmetic in float64 with a safety factor
  covering its rounding).  Otherwise (a spectral loss without them, a weighted loss whose weights differ
  inside a group, a group not isolated) ``digits`` falls back to the agreement between the
  gradients of the last two refinement iterates (precision ≈ P/2 and P), an estimate only.

Precision is chosen from the float64 spectrum: P = 30 + ⌈−log10(min relative gap)⌉ digits, so a
spectrum that is degenerate before rounding (gaps ≈ 1e-16 relative) still gets ~30 digits.  For
spectral losses (f depends on λ itself) the mpmath engine adds ⌈log10(‖A‖/λ_min)⌉ read from its
own high-precision eigenvalues, raising P until it covers the condition (up to ``MAX_DPS``): the
eigensolver's absolute error ~10^-P ‖A‖ must be small against λ_min, which float64 cannot see
beyond a condition of ~1e16.  The flint engine does the same with its certified enclosure of
λ_min (``_flint.engine``).
Divided differences of near-equal eigenvalues are evaluated without cancellation (extra working
precision, or the mean-value/midpoint expansion f'((λ_i+λ_j)/2) when the pair is closer than the
square root of the working precision).

Results are cached on disk (``$STABKIT_CACHE`` or ``~/.cache/stabkit/reference``): the
eigendecomposition per input (sha256 of the float64 bytes and shape) and engine, the gradient per
(input, engine, loss name, sha of weight, sha of w).  Every key carries ``CACHE_VERSION`` and the
engine's algorithm version (``ENGINE_VERSIONS``), so results of an older algorithm are not reused.
Files are written atomically, each with a sha256 checksum of its key and contents: an entry that
fails it (edited, truncated, corrupted) or cannot be read is recomputed with a
``ReferenceCacheWarning`` naming the file, and a read-only or full cache directory only warns —
a bad cache never fails a computation.

The float64 gradient is certified only if it is representable: a gradient that overflows float64
or underflows to zero gets 0 digits (``Truth.note`` says why), and one near the underflow
threshold at most the digits the subnormal spacing leaves.

The package: this module is the public API (``ground_truth``, ``Truth``); ``_mpmath`` and
``_flint`` are the engines, ``_cache`` the checksummed cache (keys, versions, reads, writes),
``_finite_diff`` the independent finite-difference check, ``_common`` what they share.

``iterated_truth`` is the truth of another function: L at the (λ̂, Û) that T steps of power
iteration with deflation return (the forward of an iterating method, ``Method.iteration``), by
reverse mode in P-bit arithmetic (``_power_iteration``; engine "arb", digits an agreement estimate).

mpmath's and flint's working precision is one setting per process, not per thread: two truths
computed at once in two threads would set it under each other (a wrong result, reported with 0
digits at best). ``ground_truth`` and ``iterated_truth`` therefore run one at a time per process
(``_ONE_PRECISION``); the study workers run one cell at a time per process for the same reason.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass

import mpmath
import numpy as np

from ..errors import InputError
from ..validation import is_count
from . import _cache, _mpmath
from ._cache import ENGINE_VERSIONS, ReferenceCacheWarning
from ._common import MAX_DIGITS, agreement_digits, as_exact_float64, choose_digits
from ._finite_diff import finite_difference_grad
from ._mpmath import MAX_DPS, eigh_exact

MIN_DIGITS = 12
_ONE_PRECISION = threading.RLock()  # see the module doc: the working precision is process-wide
AUTO_MPMATH_MAX_D = 24
ENGINES = ("auto", "mpmath", "flint")

# private names other modules use (stabkit.compare)
_choose_digits = choose_digits
_agreement_digits = agreement_digits

__all__ = ["ground_truth", "iterated_truth", "Truth", "finite_difference_grad", "eigh_exact", "ReferenceCacheWarning",
           "MIN_DIGITS", "MAX_DIGITS", "MAX_DPS", "AUTO_MPMATH_MAX_D", "ENGINES", "ENGINE_VERSIONS"]


@dataclass(frozen=True)
class Truth:
    grad: np.ndarray  # float64 (d, d): ∂L/∂A rounded from the high-precision result
    # float64: exact eigenvalues of the input, rounded, ascending; engine "arb" (iterated_truth): the
    # iteration's λ̂ in index order, NaN for the stages after the last kept pair (not run)
    eigenvalues: np.ndarray
    # significant digits (relative to its max |entry|, capped at 60) of the high-precision ∂L/∂A that
    # grad rounds: grad itself carries at most float64's ≈ 16 (relative error ≤ 10^-digits + 2^-53).
    # flint: a rigorous interval bound; mpmath: the agreement of two precisions, capped by what a
    # backward-stable solver delivers; "arb": the agreement of two precisions, an estimate
    digits: float
    engine: str  # "mpmath", "flint", or "arb" (iterated_truth)
    seconds: float  # wall time of the (uncached) computation
    note: str = ""  # why digits is low or 0 where that is not the precision (overflow, underflow…)

    @property
    def certified(self) -> bool:
        return self.digits >= MIN_DIGITS


def ground_truth(A, loss, *, engine: str = "auto", cache: bool = True, _dps: int | None = None) -> Truth:
    """Certified ∂L/∂A of ``loss`` at A (exactly as given), rounded to float64.

    ``engine``: "mpmath", "flint" or "auto" (mpmath for d ≤ 24).  Raises ValueError for invalid
    input or where the loss is undefined (``loss.check`` on the exact eigenvalues).  ``digits``
    tells how many significant digits are certified; check ``Truth.certified`` before use.  A
    gradient that overflows or underflows float64 is never certified (``Truth.note`` says why).
    A cache entry that fails its checksum or cannot be read is recomputed, and a cache directory
    that cannot be written is skipped, each with a ``ReferenceCacheWarning`` naming the file.
    ``_dps`` (private) forces the working precision in decimal digits, for tests.
    """
    input_dtype = np.asarray(A).dtype
    A = as_exact_float64(A)
    d = A.shape[0]
    _check_loss_size(loss, d)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "mpmath" if d <= AUTO_MPMATH_MAX_D else "flint"
    gpath = _cache.path_for(f"{_cache.grad_key(A, engine, loss, _dps)}.npz", cache)
    if gpath is not None:
        truth = _cache.read(gpath, lambda raw: _truth_from_bytes(raw, ENGINES))
        if truth is not None:
            loss.check(truth.eigenvalues, dtype=input_dtype)
            return truth
    start = time.perf_counter()
    with _ONE_PRECISION:
        grad, _, lam64, digits, note = _engine(A, loss, engine, gpath is not None, _dps, input_dtype)
    truth = Truth(grad, lam64, float(digits), engine, time.perf_counter() - start, note)
    if gpath is not None:
        _cache.write(gpath, _truth_to_bytes(truth))
    return truth


def iterated_truth(A, loss, starts, steps: int, kept=None, *, cache: bool = True) -> Truth:
    """∂/∂A of L(λ̂(A), Û(A)) where (λ̂, Û) are ``steps`` power-iteration steps with deflation from
    ``starts`` (columns, index order; exactly as given, like A), L seeing only the ``kept`` pairs
    (default all), rounded to float64. ``digits``: agreement of two precisions (P, 2P bits), capped
    by the cancellation against the magnitude of the terms (``_power_iteration._cancellation_cap``).
    Raises ValueError where the loss is undefined at λ̂ or the iteration breaks down."""
    from . import _power_iteration  # python-flint is imported only when this engine runs

    A = as_exact_float64(A)
    d = A.shape[0]
    _check_loss_size(loss, d)
    starts = np.asarray(starts, dtype=np.float64)
    kept = np.ones(d, dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    if kept.shape != (d,):
        raise InputError(f"kept must be a mask of the {d} eigenpairs, got shape {kept.shape}")
    if starts.shape != (d, d) or not np.isfinite(starts).all():
        raise ValueError(f"start vectors must be a finite ({d}, {d}) array, got shape {starts.shape}")
    if isinstance(steps, str) or not is_count(steps, 1):
        raise ValueError(f"power iteration needs a whole number of steps ≥ 1, got {steps!r}")
    path = _cache.path_for(f"{_cache.iterated_key(A, starts, int(steps), kept, loss)}.npz", cache)
    if path is not None:
        truth = _cache.read(path, lambda raw: _truth_from_bytes(raw, ("arb",)))
        if truth is not None:
            return truth
    start = time.perf_counter()
    with _ONE_PRECISION:
        grad, lam, digits, bits = _power_iteration.gradient(A, starts, int(steps), kept, loss)
    digits, note = _float64_digits(grad, lambda: [mpmath.mpf(float(x)) for x in grad.ravel()], digits)
    truth = Truth(grad, lam, float(digits), "arb", time.perf_counter() - start,
                  "; ".join(n for n in (note, f"{bits} bits; digits: agreement with {bits // 2} bits") if n))
    if path is not None:
        _cache.write(path, _truth_to_bytes(truth))
    return truth


# ----------------------------------------------------------------------------------------------
# the gradient entry of the cache (an npz archive)


def _truth_to_bytes(t: Truth) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, grad=t.grad, eigenvalues=t.eigenvalues, digits=t.digits, engine=t.engine,
             seconds=t.seconds, note=t.note)
    return buf.getvalue()


def _truth_from_bytes(raw: bytes, engines: tuple[str, ...]) -> Truth:
    """The Truth of a cache entry; ValueError (the cache then recomputes) unless shaped as one of
    ``engines`` writes it."""
    with np.load(io.BytesIO(raw)) as z:
        t = Truth(z["grad"].copy(), z["eigenvalues"].copy(), float(z["digits"]), str(z["engine"]),
                  float(z["seconds"]), str(z["note"]))
    d = t.eigenvalues.shape[0]
    if t.grad.shape != (d, d) or t.engine not in engines:
        raise ValueError(f"entry holds a {t.grad.shape} gradient for {d} eigenvalues, engine {t.engine!r}")
    return t


# ----------------------------------------------------------------------------------------------
# the engines behind one call


def _hp_gradient(A, loss, engine: str, cache: bool = False, _dps: int | None = None):
    """(gradient entries row-major as high-precision mpf numbers, float64 eigenvalues, digits)."""
    _, hp, lam64, digits, _ = _engine(as_exact_float64(A), loss, engine, cache, _dps, np.asarray(A).dtype)
    return hp(), lam64, digits


def _engine(A, loss, engine: str, cache: bool, _dps: int | None, input_dtype=np.float64):
    """(float64 gradient, thunk → high-precision entries, float64 eigenvalues, digits, note)."""
    if engine == "mpmath":
        out = _mpmath.engine(A, loss, cache, _dps, input_dtype)
    elif engine == "flint":
        from . import _flint  # python-flint is imported only when this engine runs

        out = _flint.engine(A, loss, cache=cache, dps=_dps, input_dtype=input_dtype) + ("",)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    grad, hp, lam64, digits, note = out
    digits, range_note = _float64_digits(grad, hp, digits)
    return grad, hp, lam64, digits, "; ".join(n for n in (range_note, note) if n)


def _check_loss_size(loss, d: int) -> None:
    """A loss built for another d would be silently cut or broadcast by the engines."""
    if not hasattr(loss, "weight"):
        raise InputError(f"loss must be a probe loss (stabkit.losses.make_loss(name, {d})), got {loss!r}")
    shape = np.shape(loss.weight)
    if shape != (d, d):
        raise InputError(f"the loss's weight has shape {shape} but A is {d}×{d}: build the loss for d = {d} "
                         f"(make_loss(name, {d}))")


_TINY = 2.0 ** -1074  # the smallest subnormal: the absolute rounding error of tiny float64 entries


def _float64_digits(grad: np.ndarray, hp, digits: float) -> tuple[float, str]:
    """``digits`` where the float64 gradient keeps them: 0 if it overflowed (not finite) or underflowed to zero;
    near the underflow threshold, at most what the subnormal spacing 2^-1074 leaves."""
    if not np.isfinite(grad).all():
        with mpmath.workprec(64):
            top = max(abs(x) for x in hp())
        return 0.0, f"∂L/∂A overflows float64 (max |∂L/∂A| = {mpmath.nstr(top, 3)})"
    top64 = float(np.abs(grad).max())
    if top64 == 0:
        with mpmath.workprec(64):
            top = max(abs(x) for x in hp())
        if top == 0:
            return digits, ""
        return 0.0, f"∂L/∂A underflows float64 (max |∂L/∂A| = {mpmath.nstr(top, 3)})"
    if top64 < 1e-290:
        cap = max(0.0, math.log10(top64 / _TINY) - 0.5)
        if cap < digits:
            return cap, f"∂L/∂A near the float64 underflow threshold (max {top64:.3g})"
    return digits, ""
