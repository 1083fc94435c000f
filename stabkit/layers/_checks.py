"""The layers' input contract — the one of :mod:`stabkit.torch`, reused: an
:class:`~stabkit.errors.InputError` (a ValueError) naming a non-tensor, a dtype other than
float32/float64, a wrong shape, NaN/Inf entries, or (symmetric inputs) max|A − Aᵀ| > √eps·max|A|.
Value checks are skipped under torch.compile and torch.func transforms, as there. A layer always
checks its input, so it takes no ``check=`` (:func:`method_params`) and its messages do not offer one.
"""

from __future__ import annotations

import math

import torch

from .._xp import is_traced
from ..errors import EigensolverError, InputError
from ..torch import _check_tensor, check_values
from ..validation import is_integer, is_real


#: What a layer's non-symmetric-input message advises (a layer has no check= to turn off).
SYMMETRIZE = "symmetrize it, e.g. (A + Aᵀ)/2 (stabkit.torch.symmetrize)"


def check_matrix(A, fn: str, square: bool = False, symmetric: bool = False) -> None:
    """InputError unless A is a finite float32/float64 (..., m, n) tensor (square/symmetric if asked)."""
    _check_tensor(A, fn, square or symmetric, None)
    check_values(A, fn, symmetric, advice=SYMMETRIZE)


def check_domain(lam: torch.Tensor, eps: float, fn: str, p, name: str) -> None:
    """InputError where μ = λ + ε, λ the eigenvalues of a layer's input A, leaves the real domain of g (log and
    fractional p < 0: μ > 0; √ and fractional p > 0: μ ≥ 0; integer p < 0: μ ≠ 0), where g(μ), and with
    it g(A + εI), would be NaN or infinite. One host read, skipped under tracing as value checks are."""
    integer = fn == "power" and float(p).is_integer()
    if is_traced(lam) or (integer and p >= 0):
        return
    mu = lam + eps
    need = "≠ 0" if integer else "> 0" if fn == "log" or (fn == "power" and p < 0) else "≥ 0"
    bad = {"≠ 0": mu == 0, "> 0": mu <= 0, "≥ 0": mu < 0}[need]
    if bool(bad.any()):
        g = f"x^{p:g}" if fn == "power" else fn
        raise InputError(f"{name}: g = {g} of A + εI needs λ + ε {need} for every eigenvalue λ of A; "
                         f"got λ = {float(lam[bad].min()):.3g} with ε = {eps:g}")


def method_params(params: dict, fn: str) -> dict:
    """``params`` — a layer's keywords for its eigendecomposition method — after refusing ``check``:
    that is ``stabkit.torch.eigh``'s input check, which a layer always runs itself (InputError)."""
    if "check" in params:
        raise InputError(f"{fn}: check= is not a layer argument (the layer always checks its input); "
                         f"pass only the method's parameters")
    return params


def check_eps(eps, fn: str, name: str = "eps") -> float:
    """The ridge ε (or another value ``name`` under the same rule) as a float; InputError unless it is a
    finite real number ≥ 0 (``validation.is_real``: a numpy number too, not a bool)."""
    if not (is_real(eps) and eps >= 0):
        raise InputError(f"{fn}: {name} must be a finite number ≥ 0, got {eps!r}")
    return float(eps)


def check_positive_integer(value, fn: str, name: str) -> None:
    """InputError unless ``value`` is an integer ≥ 1 (a Python or numpy integer, not a bool)."""
    if not is_integer(value, 1, math.inf):
        raise InputError(f"{fn}: {name} must be a positive integer, got {value!r}")


def check_iterations(max_iter, fn: str) -> None:
    check_positive_integer(max_iter, fn, "max_iter")


def check_tol(tol, fn: str) -> None:
    """An iterative layer's relative tolerance: None (its default) or a number in (0, 1)."""
    if tol is not None and not (is_real(tol) and 0 < tol < 1):
        raise InputError(f"{fn}: tol must be a number in (0, 1), got {tol!r}")


def check_seed(seed, fn: str) -> None:
    """A layer's random seed: an integer in [0, 2⁶⁴), the range of torch.Generator.manual_seed."""
    if not is_integer(seed, 0, 2 ** 64 - 1):
        raise InputError(f"{fn}: seed must be an integer in [0, 2**64), got {seed!r}")


def failure_tol(tol: float, d: int, dtype: torch.dtype) -> float:
    """The relative residual above which an iterative forward has failed: ``tol``, or the rounding
    floor d·eps of a product A·y (Higham, "Accuracy and Stability of Numerical Algorithms", §3.5)
    where that is larger — an iteration that stops short of ``tol`` only there has converged."""
    return max(float(tol), d * torch.finfo(dtype).eps)


def not_converged(fn: str, residual: torch.Tensor, tol: float, iterations: int, hint: str) -> EigensolverError:
    """The error an iterative forward raises when its relative residual stayed above ``tol``."""
    n, total = int((residual > tol).sum()), residual.numel()
    return EigensolverError(f"{fn}: not converged after {iterations} iterations: relative residual "
                            f"{float(residual.max()):.3g} > tol {tol:.3g} ({n} of {total} matrices); {hint}")
