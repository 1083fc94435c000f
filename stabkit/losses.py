"""Probe losses L(A), written through (U, λ) of A = U diag(λ) Uᵀ so every gradient method applies.

Two kinds, both gauge-invariant (independent of eigenvector signs, and — for spectral losses —
of the basis chosen inside a degenerate eigenspace):

* spectral: L = ⟨G, f(A)⟩ = Σ_i f(λ_i) u_iᵀ G u_i, with f = x^-1/2 (``zca``, ZCA whitening),
  x^1/2 (``sqrt``, covariance pooling) or log x (``log``, O2P of Ionescu et al.).
  Exact gradient (Daleckii–Krein): ∂L/∂A = U (D ∘ Uᵀ G_sym U) Uᵀ with the divided differences
  D_ij = (f(λ_i) − f(λ_j)) / (λ_i − λ_j), D_ii = f'(λ_i).
* weighted eigenvector: L = Σ_i w_i u_iᵀ B u_i (``eigvec``, random w; ``projector``, w = 1 on
  the top-k eigenvectors so L = ⟨B, P_k⟩). Exact gradient: the same form with
  D_ij = (w_i − w_j)/(λ_i − λ_j) off the diagonal and D_ii = 0; defined only when eigenvalues
  with different weights are distinct.

Eigenvalues are in ascending order (as ``eigh`` returns them); the weights G/B are seeded
Gaussian matrices unless the user supplies one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import mpmath
import numpy as np

from . import _xp
from ._choices import LOSSES
from .errors import InputError
from .validation import is_count


def _weight(d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, d, 0x105])).standard_normal((d, d))


@dataclass(frozen=True)
class SpectralLoss:
    """L = ⟨G, f(A)⟩ for a scalar function f applied to the eigenvalues."""

    name: str
    weight: np.ndarray
    f: Callable  # xp-generic: works on numpy arrays and torch tensors
    df: Callable
    f_mp: Callable  # the same functions on mpmath numbers, for the reference
    df_mp: Callable
    # x ↦ upper bounds on |f''| and |f'''| over [x, ∞) (float in, float out; OverflowError beyond
    # the float64 range): what the flint reference engine needs to certify the divided differences
    # rigorously. None (unknown): that engine reports an agreement estimate only.
    d2_bound: Callable | None = None
    d3_bound: Callable | None = None
    kind: str = field(default="spectral", init=False)

    def check(self, lam, dtype=None) -> None:
        """Raise ValueError if the loss is not differentiable at these eigenvalues (``dtype`` unused)."""
        lam_min = float(np.min(_finite(self.name, lam)))
        if lam_min <= 0:
            raise ValueError(
                f"{self.name} loss needs a positive definite matrix: smallest eigenvalue is {lam_min:.3g}"
            )

    def value(self, U, lam):
        G = _as_like(self.weight, U)
        return (G * ((U * self.f(lam)[..., None, :]) @ _xp.T(U))).sum((-2, -1))

    def grads(self, U, lam):
        """(∂L/∂U, ∂L/∂λ) treating U and λ as independent variables."""
        G = _as_like(self.weight, U)
        GsU = _xp.sym(G) @ U
        gU = 2 * GsU * self.f(lam)[..., None, :]
        glam = self.df(lam) * (U * (G @ U)).sum(-2)
        return gU, glam


@dataclass(frozen=True)
class WeightedEigvecLoss:
    """L = Σ_i w_i u_iᵀ B u_i, weights w_i per eigenvalue index (ascending order)."""

    name: str
    weight: np.ndarray
    w: np.ndarray
    kind: str = field(default="weighted", init=False)

    def check(self, lam, dtype=None) -> None:
        """Raise ValueError where eigenvalues with different weights are numerically equal.

        "Numerically equal" means a gap below d·eps·max|λ| of ``dtype`` (default: λ's own), the
        backward-error level of a symmetric eigensolver working in that precision: below it the
        matrix as stored does not determine the eigenvectors that the loss weighs differently.
        """
        lam = np.asarray(lam)
        _finite(self.name, lam)
        eps = np.finfo(dtype or (lam.dtype if lam.dtype.kind == "f" else np.float64)).eps
        lam64 = lam.astype(np.float64)
        tol = lam64.shape[-1] * eps * float(np.abs(lam64).max())
        gaps = np.diff(lam64, axis=-1)
        differs = np.diff(self.w) != 0
        bad = (gaps <= tol) & differs
        if bad.any():
            i = int(np.argwhere(bad)[0][-1])
            raise ValueError(
                f"{self.name} loss is undefined on a degenerate spectrum: eigenvalues {i} and {i + 1} "
                f"differ by {gaps[..., i].min():.3g} (≤ {tol:.3g}) but carry different weights"
            )

    def value(self, U, lam):
        B = _as_like(self.weight, U)
        w = _as_like(self.w, lam)
        return ((U * (B @ U)).sum(-2) * w).sum(-1)

    def grads(self, U, lam):
        B = _as_like(self.weight, U)
        w = _as_like(self.w, lam)
        gU = 2 * (_xp.sym(B) @ U) * w[..., None, :]
        return gU, lam * 0


def _finite(name: str, lam) -> np.ndarray:
    """λ as float64; InputError (a ValueError) where one is NaN or ±Inf: no loss is defined there."""
    lam = np.asarray(lam, dtype=np.float64)
    if not np.isfinite(lam).all():
        raise InputError(f"{name} loss: the eigenvalues have non-finite entries ({int((~np.isfinite(lam)).sum())} of {lam.size})")
    return lam


def _as_like(a: np.ndarray, like):
    """The constant ``a`` as an array of like's namespace, dtype and device."""
    return _xp.as_like(a, like)


def _spectral(name, weight, f, df, f_mp, df_mp, d2_bound=None, d3_bound=None):
    return SpectralLoss(name, weight, f, df, f_mp, df_mp, d2_bound, d3_bound)


def _ns(lam):
    return _xp.namespace(lam)


def make_loss(name: str, d: int, seed: int = 0, weight: np.ndarray | None = None, k: int = 1):
    """Build probe loss ``name`` for d×d matrices; ``weight`` replaces the seeded G / B.

    ``k`` is the projector's rank (top-k eigenspace); the other losses ignore it, so that a loop over
    ``LOSSES`` can pass one k (the CLI, where it is typed by hand, refuses ``--k`` for them).
    """
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    for what, value, least in (("matrix size d", d, 1), ("seed", seed, 0)):
        if not is_count(value, least):
            raise InputError(f"loss {name!r}: {what} must be an integer in [{least}, 2^63 − 1], got {value!r}")
    d, seed = int(d), int(seed)
    if weight is None:
        weight = _weight(d, seed)
    else:
        weight = np.asarray(weight)
        if weight.dtype.kind not in "biuf":  # a complex G would be cast to its real part, with only a warning
            raise InputError(f"loss weight must be a real matrix, got dtype {weight.dtype}")
        weight = weight.astype(np.float64, copy=False)
        if weight.shape != (d, d):
            raise InputError(f"loss weight must have shape ({d}, {d}), got {weight.shape}")
        if not np.isfinite(weight).all():
            raise InputError("loss weight contains non-finite entries")
    # the last two: |f''| and |f'''| at x, which bound them on [x, ∞) (both decrease on (0, ∞) here)
    if name == "zca":
        return _spectral(
            name, weight,
            lambda x: _ns(x).sqrt(x) ** -1, lambda x: -0.5 * _ns(x).sqrt(x) ** -3,
            lambda x: 1 / mpmath.sqrt(x), lambda x: -mpmath.mpf(1) / 2 * x ** mpmath.mpf(-1.5),
            lambda x: 0.75 * x ** -2.5, lambda x: 1.875 * x ** -3.5,
        )
    if name == "sqrt":
        return _spectral(
            name, weight,
            lambda x: _ns(x).sqrt(x), lambda x: 0.5 / _ns(x).sqrt(x),
            mpmath.sqrt, lambda x: 1 / (2 * mpmath.sqrt(x)),
            lambda x: 0.25 * x ** -1.5, lambda x: 0.375 * x ** -2.5,
        )
    if name == "log":
        return _spectral(
            name, weight,
            lambda x: _ns(x).log(x), lambda x: 1 / x,
            mpmath.log, lambda x: 1 / x,
            lambda x: x ** -2.0, lambda x: 2.0 * x ** -3.0,
        )
    if name == "eigvec":
        w = np.random.default_rng(np.random.SeedSequence([seed, d, 0xE16])).standard_normal(d)
        return WeightedEigvecLoss(name, weight, w)
    if not is_count(k, 1) or not k < d:
        raise InputError(f"projector rank k must be an integer with 1 ≤ k < d = {d}, got {k!r}")
    w = np.zeros(d)
    w[d - int(k):] = 1.0
    return WeightedEigvecLoss(name, weight, w)


# ----------------------------------------------------------------------------------------------
# the loss restricted to a method's kept eigenpairs (what a truncating method such as ``pi`` computes)


@dataclass(frozen=True)
class TruncatedSpectralLoss(SpectralLoss):
    """L̃ = Σ_{i kept} f(λ_i) u_iᵀ G u_i: the spectral function f·1[kept] (0 on the dropped pairs).

    A pair is identified by its eigenvalue: f̃(x) = f(x) when the ``reference`` eigenvalue nearest
    to x is kept, else 0 — a genuine scalar function near every eigenvalue once kept and dropped
    eigenvalues are separated (``check``), so the Daleckii–Krein truth of both reference engines
    applies unchanged: D̃_ij = (f̃(λ_i) − f̃(λ_j))/(λ_i − λ_j), D̃_ii = f̃'(λ_i). This is the gradient
    with the kept set held locally constant, as the method's backward holds it.
    """

    reference: np.ndarray = None  # float64 eigenvalues, ascending, one per pair
    kept: np.ndarray = None  # bool, same length

    def check(self, lam, dtype=None) -> None:
        lam = _finite(self.name, lam)
        kept = np.asarray(self.kept, dtype=bool)
        if kept.any():
            SpectralLoss.check(self, lam[kept], dtype)
        eps = np.finfo(dtype or np.float64).eps
        tol = lam.shape[-1] * eps * float(np.abs(lam).max())
        boundary = (np.diff(kept.astype(int)) != 0) & (np.diff(lam) <= tol)
        if boundary.any():
            i = int(np.argwhere(boundary)[0][0])
            raise ValueError(f"{self.name}: eigenvalues {i} and {i + 1} differ by {lam[i + 1] - lam[i]:.3g} "
                             f"(≤ {tol:.3g}) but one is kept and the other dropped: the truncated function "
                             "is not defined there")


def _nearest_kept(x, reference: np.ndarray, kept: np.ndarray):
    """kept[argmin_i |x − reference_i|], elementwise, on x's namespace."""
    xp = _xp.namespace(x)
    ref, k = _as_like(reference, x), kept
    idx = (x[..., None] - ref).__abs__().argmin(-1)
    if xp is not np:
        k = xp.as_tensor(kept, device=x.device)
    return k[idx]


def _truncated_fn(fn, reference, kept):
    def f(x):
        xp = _xp.namespace(x)
        mask = _nearest_kept(x, reference, kept)
        safe = xp.where(mask, x, xp.ones_like(x))
        return xp.where(mask, fn(safe), xp.zeros_like(x))
    return f


def _truncated_mp(fn, reference, kept):
    def f(x):
        i = int(np.abs(float(x) - reference).argmin())
        return fn(x) if kept[i] else mpmath.mpf(0)
    return f


def truncate(loss, eigenvalues, kept):
    """``loss`` restricted to the kept eigenpairs (ascending order, as ``eigenvalues``).

    Weighted losses (eigvec, projector): the same loss with w·kept. Spectral losses (zca, sqrt,
    log): :class:`TruncatedSpectralLoss`. Returns ``loss`` itself when every pair is kept.
    """
    kept = np.asarray(kept, dtype=bool).reshape(-1)
    reference = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if kept.shape != reference.shape:
        raise InputError(f"kept mask has {kept.size} entries for {reference.size} eigenvalues")
    if kept.all():
        return loss
    name = f"{loss.name}[kept {''.join('1' if k else '0' for k in kept)}]"
    if loss.kind == "weighted":
        return WeightedEigvecLoss(name, loss.weight, np.asarray(loss.w, dtype=np.float64) * kept)
    return TruncatedSpectralLoss(
        name, loss.weight,
        _truncated_fn(loss.f, reference, kept), _truncated_fn(loss.df, reference, kept),
        _truncated_mp(loss.f_mp, reference, kept), _truncated_mp(loss.df_mp, reference, kept),
        reference=reference, kept=kept,
    )
