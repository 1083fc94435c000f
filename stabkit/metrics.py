"""How far a gradient is from the truth, and how hard the spectrum is.

Gradient metrics compare g (a method's ∂L/∂A) with g* (the certified truth), Frobenius norms:
``angle_deg`` (degrees, 0 = same direction), ``rel_err`` = ‖g − g*‖/‖g*‖, ``norm_ratio`` =
‖g‖/‖g*‖, ``finite`` (no NaN/Inf in g). A non-finite g gets NaN for the three numbers, and so does
a non-finite truth (an Inf there is a gradient beyond float64's range, whose true size is unknown).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import _xp
from .errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike


def angle_deg(g: ArrayLike, g_true: ArrayLike) -> float:
    """Angle between g and g* in degrees, by Kahan's 2·atan2(‖â − b̂‖, ‖â + b̂‖) (exact near 0°);
    90 when exactly one of them is zero, 0 when both are; NaN if either is not finite."""
    g, g_true = _pair(g, g_true)
    if not _finite_pair(g, g_true):
        return math.nan
    a, b = _unit(g), _unit(g_true)
    if a is None or b is None:
        return 90.0 if (a is None) != (b is None) else 0.0
    return math.degrees(2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def rel_err(g: ArrayLike, g_true: ArrayLike) -> float:
    """‖g − g*‖_F / ‖g*‖_F (NaN if g or g* is not finite; inf if g* = 0 ≠ g, 0 if both are 0)."""
    g, g_true = _pair(g, g_true)
    if not _finite_pair(g, g_true):
        return math.nan
    e = max(_exponent(g), _exponent(g_true))  # g − g* in one power-of-2 scale: no overflow
    return _ratio((float(np.linalg.norm(np.ldexp(g, -e) - np.ldexp(g_true, -e))), e), _norm(g_true))


def norm_ratio(g: ArrayLike, g_true: ArrayLike) -> float:
    """‖g‖_F / ‖g*‖_F (NaN if g or g* is not finite; inf if g* = 0 ≠ g, 0 if both are 0)."""
    g, g_true = _pair(g, g_true)
    if not _finite_pair(g, g_true):
        return math.nan
    return _ratio(_norm(g), _norm(g_true))


def _pair(g, g_true) -> tuple[np.ndarray, np.ndarray]:
    g, g_true = np.asarray(g), np.asarray(g_true)
    for what, x in (("g", g), ("the truth", g_true)):
        if x.dtype.kind not in "biuf":  # a complex g would be cast to its real part, with only a warning
            raise InputError(f"gradient metrics: {what} has dtype {x.dtype}; a real gradient is needed")
    g, g_true = g.astype(np.float64), g_true.astype(np.float64)
    if g.shape != g_true.shape:
        raise InputError(f"gradient metrics: g has shape {g.shape} but the truth has {g_true.shape}")
    return g, g_true


def _finite_pair(g: np.ndarray, g_true: np.ndarray) -> bool:
    return bool(np.isfinite(g).all() and np.isfinite(g_true).all())


# Norms are kept as (mantissa, exponent) pairs, ‖x‖ = m·2^e, with x scaled by 2^-e (exact) before
# squaring: entries anywhere in float64's range (up to 2^1024, down to subnormals) neither
# overflow nor underflow; only a final ratio beyond float64's range becomes inf or 0.

def _exponent(x: np.ndarray) -> int:
    """e with max|x| < 2^e ≤ 2·max|x| (frexp's exponent); 0 for an empty or zero x."""
    m = float(np.abs(x).max()) if x.size else 0.0
    return math.frexp(m)[1]


def _norm(x: np.ndarray) -> tuple[float, int]:
    """‖x‖_F as (m, e) with ‖x‖_F = m·2^e."""
    e = _exponent(x)
    return float(np.linalg.norm(np.ldexp(x, -e))), e


def _unit(x: np.ndarray) -> np.ndarray | None:
    """x/‖x‖_F (None for a zero x)."""
    m, e = _norm(x)
    return np.ldexp(x, -e) / m if m else None


def _ratio(num: tuple[float, int], den: tuple[float, int]) -> float:
    """(m₁·2^e₁)/(m₂·2^e₂), inf where it exceeds float64."""
    (m1, e1), (m2, e2) = num, den
    if m2 == 0:
        return math.inf if m1 else 0.0
    try:
        return math.ldexp(m1 / m2, e1 - e2)
    except OverflowError:
        return math.inf


def finite(g: ArrayLike) -> bool:
    """No NaN or Inf anywhere in g (InputError for text, objects: no number to test)."""
    g = np.asarray(g)
    if g.dtype.kind not in "biufc":
        raise InputError(f"gradient metrics: finite: g has dtype {g.dtype}; a numeric gradient is needed")
    return bool(np.isfinite(g).all())


def gradient_metrics(g: ArrayLike, g_true: ArrayLike) -> dict[str, float | bool]:
    """The four gradient metrics of the module docstring, by name."""
    return {
        "angle_deg": angle_deg(g, g_true),
        "rel_err": rel_err(g, g_true),
        "norm_ratio": norm_ratio(g, g_true),
        "finite": finite(g),
    }


def spectrum_diagnostics(lam: ArrayLike, dtype: DTypeLike = np.float64) -> dict[str, float | int]:
    """Gap and conditioning numbers of an ascending eigenvalue vector.

    min_abs_gap = min_i (λ_{i+1} − λ_i); min_rel_gap = min_abs_gap / max|λ|; max_abs_K =
    max_{i≠j} 1/|λ_i − λ_j| = 1/min_abs_gap (the largest factor of the analytic gradient);
    numerical_rank = #{|λ_i| > d·eps·max|λ|} (eps of ``dtype``); condition = max|λ| / min|λ|.
    InputError unless ``lam`` is a non-empty 1-D vector of finite real numbers and ``dtype`` a
    floating-point dtype.
    """
    lam = np.asarray(lam)
    if lam.dtype.kind not in "biuf" or lam.ndim != 1 or lam.size == 0:
        raise InputError(f"spectrum_diagnostics: expected a non-empty 1-D vector of real eigenvalues, got "
                         f"shape {lam.shape} and dtype {lam.dtype}")
    lam = np.sort(lam.astype(np.float64))
    if not np.isfinite(lam).all():
        raise InputError(f"spectrum_diagnostics: the eigenvalues have non-finite entries "
                         f"({int((~np.isfinite(lam)).sum())} of {lam.size})")
    try:  # a torch dtype as it is (np.dtype() cannot read it); an integer dtype has no eps (TypeError/ValueError)
        eps = _xp.finfo_eps(dtype if type(dtype).__module__.startswith("torch") else np.dtype(dtype))
    except (TypeError, ValueError):
        eps = None
    if eps is None:
        raise InputError(f"spectrum_diagnostics: dtype must be a floating-point dtype (its eps sets the "
                         f"numerical rank's threshold), got {dtype!r}")
    scale = float(np.abs(lam).max())
    with np.errstate(over="ignore"):  # a gap beyond float64 (λ near ±1.8e308) is inf; its relative gap is not
        gap = float(np.diff(lam).min()) if lam.size > 1 else math.inf
    rel = gap / scale if scale > 0 else math.nan
    if math.isinf(rel) and lam.size > 1:  # the gap overflowed: the relative gap in the scale 2^-e (exact) is finite
        e = _exponent(lam)
        rel = float(np.diff(np.ldexp(lam, -e)).min()) / math.ldexp(scale, -e)
    smallest = float(np.abs(lam).min())
    return {
        "min_abs_gap": gap,
        "min_rel_gap": rel,
        "max_abs_K": 1 / gap if gap > 0 else math.inf,
        "numerical_rank": int((np.abs(lam) > lam.size * eps * scale).sum()),
        "condition": scale / smallest if smallest > 0 else math.inf,
    }
