"""What the API, the mpmath engine and the finite differences share: the input made exact float64,
the precision chosen from the float64 spectrum, and the agreement of two high-precision results."""

from __future__ import annotations

import math

import mpmath
import numpy as np

from ..errors import InputError
from ..validation import check_symmetric, is_count

MAX_DIGITS = 60.0  # certified digits are capped here


def as_exact_float64(A) -> np.ndarray:
    """Validate A and return it as float64, symmetrized exactly (float32 widens exactly); refused where
    its eigenvalues or their gaps could overflow float64 (entries above float64's largest / 2d)."""
    a = np.asarray(A)
    check_symmetric(a)
    if a.ndim != 2:
        raise InputError(f"matrix must be a single d×d matrix, got shape {a.shape}")
    a = a.astype(np.float64)
    top, limit = np.abs(a).max(), np.finfo(np.float64).max / (2 * a.shape[0])  # d ≥ 1: check_symmetric
    if top > limit:  # |λ| ≤ d·max|a_ij| (Gershgorin), so a gap is ≤ 2d·max|a_ij|
        raise InputError(f"matrix entries up to {top:.3g} exceed {limit:.3g} = float64's largest / (2d): "
                         f"its eigenvalues or their gaps may overflow float64; scale the matrix")
    return (a + a.T) / 2  # exact for float32 input; for float64 the same as check_symmetric


def check_dps(dps, what: str = "dps") -> int:
    """A working precision in decimal digits: an integer ≥ 1 (mpmath runs 0, −1 or 2.5 at its
    minimum precision and returns wrong digits without a word); InputError otherwise."""
    if not is_count(dps, 1):
        raise InputError(f"{what} must be a whole number of decimal digits ≥ 1, got {dps!r}")
    return int(dps)


def gap_digits(A: np.ndarray) -> int:
    """⌈−log10(min relative gap)⌉ of the float64 spectrum (gaps below 1e-17 count as 1e-17)."""
    lam = np.linalg.eigvalsh(A)
    scale = float(np.abs(lam).max()) or 1.0
    gaps = np.diff(lam) / scale if lam.size > 1 else np.array([1.0])
    g = max(float(gaps.min()), 1e-17)
    return max(0, math.ceil(-math.log10(g)))


def choose_digits(A: np.ndarray) -> int:
    """P = 30 + ⌈−log10(min relative gap)⌉ from a float64 estimate of the spectrum."""
    return 30 + gap_digits(A)


def cancellation_digits(g: list, scale) -> float:
    """log10(S / max|∂L/∂A|) ≥ 0: the digits that an error relative to the scale S of the terms summed
    into ∂L/∂A loses relative to ∂L/∂A itself when the sum is small by cancellation; both engines
    subtract it from their precision's digits. 0 where S = 0 (every term is exactly 0, and so is the
    computed sum: nothing is lost); ∞ for a computed 0 beside S > 0 (its digits are all cancelled)."""
    top = max(abs(x) for x in g)
    if scale == 0:
        return 0.0
    return math.inf if top == 0 else max(0.0, float(mpmath.log10(scale / top)))


def agreement_digits(hi: list, lo: list) -> float:
    """−log10(max|hi − lo| / max|hi|), capped at MAX_DIGITS."""
    scale = max(abs(x) for x in hi)
    diff = max(abs(x - y) for x, y in zip(hi, lo))
    if scale == 0:
        return MAX_DIGITS if diff == 0 else 0.0
    if diff == 0:
        return MAX_DIGITS
    return float(min(MAX_DIGITS, max(0.0, -mpmath.log10(diff / scale))))
