"""Checks on user input, raising ``stabkit.errors.InputError`` (a ValueError) with a one-line message
naming the problem."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _xp
from .errors import InputError

SUPPORTED_DTYPES = (np.float32, np.float64)
#: the names of SUPPORTED_DTYPES, as a command or a study takes them
DTYPE_NAMES = tuple(np.dtype(t).name for t in SUPPORTED_DTYPES)
#: the largest integer a results table stores (Parquet int64)
INT64_MAX = 2**63 - 1


def is_count(value, minimum: int = 0) -> bool:
    """Whether ``value`` is an integer (an int, an integral float or a numpy integer; not a bool) in
    [minimum, 2^63 − 1]. The range is tested first: ``int()`` of NaN or ±inf raises."""
    return bool(not isinstance(value, bool) and isinstance(value, numbers.Real) and minimum <= value <= INT64_MAX
                and value == int(value))


def is_integer(value, low: int, high: int) -> bool:
    """Whether ``value`` is an int or a numpy integer (not a bool, not a float) in [low, high]: the
    layers' counts, ranks and seeds (a study grid's counts, read from TOML, are :func:`is_count`)."""
    return bool(not isinstance(value, bool) and isinstance(value, numbers.Integral) and low <= value <= high)


def is_real(value) -> bool:
    """Whether ``value`` is a finite real number (an int, a float or a numpy number; not a bool)."""
    try:
        return bool(not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value))
    except OverflowError:  # an integer beyond any float
        return False


def symmetry_rtol(eps: float) -> float:
    """Relative asymmetry max|A - Aᵀ| / max|A| accepted (then symmetrized away) for a dtype of
    machine epsilon ``eps``: √eps, here and in ``stabkit.torch``'s checks alike."""
    return float(eps) ** 0.5


SYMMETRY_RTOL = {np.dtype(t): symmetry_rtol(np.finfo(t).eps) for t in SUPPORTED_DTYPES}


def check_dtype_name(name) -> str:
    """``name`` if it is "float32" or "float64", the dtype names the commands take; InputError for
    anything else, numpy's aliases ("double", "f8", "single", …) included, so that what a command
    records is always one of the two names."""
    if not isinstance(name, str) or name not in DTYPE_NAMES:
        raise InputError(f"unsupported dtype {name!r}: use float32 or float64")
    return name


def dtype_name(dtype) -> str:
    """The name ("float32" or "float64") of a dtype as a Python caller passes it: that name, or
    ``np.float32``/``np.float64`` or their ``np.dtype``; InputError for anything else, numpy's text
    aliases ("double", "f8", …) included, as :func:`check_dtype_name`."""
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        dt = np.dtype(dtype)
        if dt in (np.dtype(t) for t in SUPPORTED_DTYPES):  # native byte order only
            return dt.name
    return check_dtype_name(dtype)


def check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise InputError(f"unsupported dtype {dtype!r}: use float32 or float64") from None
    if dt not in (np.dtype(t) for t in SUPPORTED_DTYPES):
        raise InputError(f"unsupported dtype {dt}: use float32 or float64")
    return dt


def check_symmetric(a, name: str = "matrix") -> np.ndarray:
    """Validate a real symmetric matrix (or batch, shape (..., d, d)); return it exactly symmetric.

    Rejects: non-arrays, unsupported dtypes (float32/float64 of either byte order pass, made native), fewer than 2 dimensions, non-square, empty (d = 0),
    NaN/Inf, asymmetry beyond ``SYMMETRY_RTOL`` (each matrix of a batch against its own max|A|); for a
    batch, either message names the first bad matrix's index. Asymmetry
    within tolerance is removed by (A + Aᵀ)/2.
    An empty batch (0, d, d) holds nothing to check and is returned as is, as ``stabkit.torch``
    returns it.
    """
    a = np.asarray(a)
    if a.dtype.kind == "f" and not a.dtype.isnative:  # a big-endian file's float64 is float64
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype not in SYMMETRY_RTOL:  # named: "unsupported dtype int64" alone read as --dtype's
        raise InputError(f"{name} has unsupported dtype {a.dtype}: use float32 or float64")
    if a.ndim < 2:
        raise InputError(f"{name} must be a square matrix, got shape {a.shape}")
    if a.shape[-1] != a.shape[-2]:
        raise InputError(f"{name} is not square: shape {a.shape}")
    if a.shape[-1] == 0:
        raise InputError(f"{name} is empty: shape {a.shape}")
    if a.size == 0:
        return a.copy()
    finite = np.isfinite(a)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        where = ""
        if a.ndim > 2:  # which matrix of the batch, as the non-symmetric message says
            first = [int(i) for i in np.argwhere(~finite.all(axis=(-2, -1)))[0]]
            where = f", the first in batch index {first}"
        raise InputError(f"{name} contains non-finite entries ({n_nan} NaN, {n_inf} Inf){where}")
    scales = np.abs(a).max(axis=(-2, -1))  # per matrix: a large one in the batch must not widen another's tolerance
    scale = float(scales.max())
    with np.errstate(over="ignore"):  # entries near the dtype's largest overflow A ± Aᵀ: refused below
        asyms = np.abs(a - a.swapaxes(-1, -2)).max(axis=(-2, -1))
        symmetric = _xp.sym(a)  # what stabkit.torch.symmetrize computes, bit for bit
    tols = SYMMETRY_RTOL[a.dtype] * np.maximum(scales, np.finfo(a.dtype).tiny)
    bad = asyms > tols
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
        where = f" (batch index {list(first)})" if first else ""
        raise InputError(f"{name}{where} is not symmetric: max|A - Aᵀ| = {float(asyms[first]):.3g} exceeds "
                         f"√eps·max|A| = {float(tols[first]):.3g} of that matrix ({a.dtype})")
    if not np.isfinite(symmetric).all():
        raise InputError(f"{name} is too large for {a.dtype}: max|A| = {scale:.3g} overflows A + Aᵀ; scale it down")
    return symmetric
