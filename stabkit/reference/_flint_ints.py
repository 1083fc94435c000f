"""Exact integer ↔ float64 conversions and integer bounds for the flint engine (``_flint``): every
quantity the refinement and the certificate use is an integer with an implicit power-of-two scale."""

from __future__ import annotations

import math
from fractions import Fraction

import flint
import numpy as np


_SAFE = 1.0 + 1e-9  # covers float64 rounding in the bound arithmetic (≪ 1e-9 relative in total)


# ----------------------------------------------------------------------------------------------
# integer matrix helpers


def _fm(X: np.ndarray) -> flint.fmpz_mat:
    r, c = X.shape
    return flint.fmpz_mat(r, c, [int(v) for v in X.ravel()])


def _obj(M: flint.fmpz_mat) -> np.ndarray:
    return np.array([int(v) for v in M.entries()], dtype=object).reshape(M.nrows(), M.ncols())


def _float_exact_to_int(a: np.ndarray) -> tuple[np.ndarray, int]:
    """float64 array → (integers N, scale e) with a = N / 2^e exactly."""
    a = np.asarray(a, dtype=np.float64)
    m, ex = np.frexp(a)  # a = m 2^ex, 0.5 ≤ |m| < 1
    mant = (m * 2.0 ** 53).astype(np.int64)  # exact
    nz = mant != 0
    if not nz.any():
        return np.zeros(a.shape, dtype=object), 0
    e = int((53 - ex[nz]).max())
    shifts = np.where(nz, e - 53 + ex, 0)  # ≥ 0 on the nonzero entries
    return mant.astype(object) << shifts.astype(object), e


def _round_to_int(a: np.ndarray, s: int) -> np.ndarray:
    """round(a · 2^s) for a float64 array, as Python ints."""
    if s > 960:  # 2^s beyond the float64 range: exact rational arithmetic
        return np.array([round(Fraction(float(v)) * (1 << s)) for v in a.ravel()], dtype=object).reshape(a.shape)
    with np.errstate(over="ignore"):
        r = np.round(np.ldexp(np.asarray(a, dtype=np.float64), s))  # exact scaling; half to even, as round()
    if not np.isfinite(r).all():
        raise OverflowError("round(a · 2^s) beyond the float64 range")
    out = np.empty(r.size, dtype=object)
    out[:] = [int(v) for v in r.ravel().tolist()]
    return out.reshape(r.shape)


def _to_float(N: np.ndarray, scale: int) -> np.ndarray:
    """N / 2^scale correctly rounded (int/int true division); ±inf beyond the float64 range."""
    N = np.asarray(N)
    try:  # float(int) is correctly rounded, and so is ·2^-scale unless the result is subnormal
        F = N.astype(np.float64)
    except OverflowError:
        F = None
    if F is not None and F.size and np.isfinite(F).all():
        nz = np.abs(F[F != 0])
        if nz.size == 0 or math.frexp(float(nz.min()))[1] - scale > -1021:
            with np.errstate(over="ignore"):
                out = np.ldexp(F, -scale)
            if np.isfinite(out).all():
                return out

    def one(v, den):
        try:
            return v / den if den else float(v << -scale)
        except OverflowError:
            return math.inf if v > 0 else -math.inf

    den = 1 << scale if scale >= 0 else 0
    return np.array([one(v, den) for v in N.ravel()], dtype=np.float64).reshape(N.shape)


def _shift(N: np.ndarray, k: int) -> np.ndarray:
    """N · 2^k, floor for negative k."""
    if k >= 0:
        return N * (1 << k)
    return N >> (-k)


def _div_pow2(num: np.ndarray, e: int, den: np.ndarray) -> np.ndarray:
    """floor(num · 2^e / den) elementwise on integer arrays."""
    if e >= 0:
        return (num * (1 << e)) // den
    return num // (den * (1 << -e))


def _bits(n) -> int:
    return abs(int(n)).bit_length()


def _sqrt_ub(n: int, q: int, w: int) -> int:
    """An integer ≥ sqrt(n) / 2^q · 2^w (n ≥ 0)."""
    if w >= q:
        return math.isqrt(n << (2 * (w - q))) + 1
    return (math.isqrt(n) >> (q - w)) + 1


def _ub(n: int, scale: int) -> float:
    """Upper bound on n / 2^scale (n ≥ 0) in float64."""
    v = n / (1 << scale) if scale >= 0 else float(n << -scale)
    return max(v * (1 + 2.0 ** -50), 1e-300)


def _ub_sqrt(n: int, scale2: int) -> float:
    """Upper bound on sqrt(n) / 2^scale2 for an integer n ≥ 0 (scale2 = half the scale of n)."""
    return _ub(math.isqrt(n) + 1, scale2)


def _lb_sqrt(n: int, scale2: int) -> float:
    v = math.isqrt(n) / (1 << scale2)
    return v * (1 - 2.0 ** -50)
