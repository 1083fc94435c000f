"""Matrix-function layers of Ionescu, Vantzos & Sminchisescu (ICCV 2015), Props. 3 and 4.

* SVD route (Prop. 3): F ∈ ℝ^{n×d}, F = U Σ Vᵀ, C = V g(ΣᵀΣ + εI) Vᵀ. The backward is Prop. 3's
  ∂L/∂V = 2 (∂L/∂C)_sym V g(ΣᵀΣ + εI), ∂L/∂Σ = 2 Σ g'(ΣᵀΣ + εI) (Vᵀ (∂L/∂C)_sym V)_diag, fed to
  Prop. 1 (:mod:`.svd`) — torch autograd of these few products produces exactly those two
  expressions, so the layer composes them on top of the Prop. 1 SVD layer.
  If n < d the thin V spans only the row space; we use C = V (g(σ² + ε) − g(ε)) Vᵀ + g(ε) I
  (the same matrix), whose V-gradient runs through Prop. 1's D term (needs σ > 0).
* EIG route (Prop. 4): symmetric A = U Λ Uᵀ, C = U g(Λ + εI) Uᵀ with ∂L/∂U = 2 (∂L/∂C)_sym U g,
  ∂L/∂Λ = g'(Λ) (Uᵀ ∂L/∂C U)_diag, fed to Prop. 2 through :func:`stabkit.torch.eigh` — so any
  registry method can replace the analytic backward (``method=``).

g ∈ {``log``, ``sqrt``, ``power`` (x^p)}. DeepO2P (Corollary 1) is g = log of FᵀF + εI:
:func:`o2p` with ``route="svd"`` or ``route="eig"``.

Extension (not in the paper), ``route="svd-dk"``: the SVD forward with the Daleckii–Krein backward
∂L/∂F = 2 F V (D ∘ Vᵀ (∂L/∂C)_sym V) Vᵀ, D_ij = (g(μ_i) − g(μ_j))/(μ_i − μ_j), D_ii = g'(μ_i),
μ = σ² + ε (full V, σ padded with zeros; Higham, "Functions of Matrices", 2008, Thm. 3.11 for the
divided-difference form). The divided differences are evaluated without cancellation —
log: log1p(Δ/m)/Δ; sqrt: 1/(√μ_i + √μ_j); x^p: m^p expm1(p log1p(Δ/m))/Δ, with m = min(μ_i, μ_j)
and Δ = |μ_i − μ_j| = |σ_i − σ_j|(σ_i + σ_j) — so it needs no 1/(σ_i² − σ_j²) and is exact on ties;
at m = 0 (ε = 0, singular FᵀF) it is (g(M) − g(0))/M, M = max(μ_i, μ_j): M^(p−1) for x^p, p > 0,
and infinite for log and p < 0, where g(0) itself is. Prop. 1's K-form instead cancels two large
terms (rounding of Vᵀ∂L/∂V's asymmetry times K). First derivatives only (``once_differentiable``).

Input: F a finite float32/float64 (..., n, d), ε a finite number ≥ 0, and an EIG-route A symmetric
(stabkit.torch's contract, InputError otherwise). With ε = 0, log and x^p (p < 0) of a singular
FᵀF are infinite; a wide F (n < d) always makes FᵀF singular, so that case is refused.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import svd as _svd
import stabkit.torch
from ._checks import check_eps, check_matrix, method_params
from ..errors import InputError
from ..methods import DEFAULT, Spec

FUNCTIONS = ("log", "sqrt", "power")


def scalar_function(fn: str, p: float | None = None):
    """g as a torch function of a tensor."""
    if fn == "log":
        return torch.log
    if fn == "sqrt":
        return torch.sqrt
    if fn == "power":
        if p is None:
            raise ValueError("g = power needs the exponent p")
        return lambda x: x ** p
    raise ValueError(f"unknown matrix function {fn!r}: choose one of {', '.join(FUNCTIONS)}")


def _check_features(F, fn: str, eps, p, name: str) -> float:
    """The module docstring's input contract for F and ε; ε as a float."""
    check_matrix(F, name)
    scalar_function(fn, p)
    eps = check_eps(eps, name)
    if eps == 0 and F.shape[-2] < F.shape[-1] and (fn == "log" or (fn == "power" and p < 0)):
        raise InputError(f"{name}: g = {fn} of FᵀF + εI with ε = 0 is infinite for a wide F (n = {F.shape[-2]} < "
                         f"d = {F.shape[-1]}: FᵀF is singular); pass eps > 0")
    return eps


def svd_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = V g(ΣᵀΣ + εI) Vᵀ ∈ ℝ^{d×d} from the SVD of F (..., n, d) — Prop. 3."""
    return _svd_matrix_function(F, fn, _check_features(F, fn, eps, p, "svd_matrix_function"), p)


def _svd_matrix_function(F, fn, eps, p):
    g = scalar_function(fn, p)
    n, d = F.shape[-2], F.shape[-1]
    if n >= d:
        _, S, V = _svd.svd(F)
        return (V * g(S * S + eps)[..., None, :]) @ V.transpose(-1, -2)
    U, S, _ = _svd.svd(F.transpose(-1, -2))  # Fᵀ = U Σ Wᵀ: U is F's right factor V (d × n)
    base = g(torch.as_tensor(eps, dtype=F.dtype, device=F.device))
    C = (U * (g(S * S + eps) - base)[..., None, :]) @ U.transpose(-1, -2)
    return C + base * torch.eye(d, dtype=F.dtype, device=F.device)


def divided_differences(mu: torch.Tensor, sig: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """D_ij = (g(μ_i) − g(μ_j))/(μ_i − μ_j), D_ii = g'(μ_i), without cancellation (μ = σ² + ε)."""
    delta = ((sig[..., :, None] - sig[..., None, :]) * (sig[..., :, None] + sig[..., None, :])).abs()
    return divided_differences_of(mu, delta, fn, p)


def divided_differences_of(mu: torch.Tensor, delta: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """D of :func:`divided_differences` given the gaps Δ_ij = |μ_i − μ_j| (ties: Δ = 0)."""
    mi, mj = mu[..., :, None], mu[..., None, :]
    lo = torch.minimum(mi, mj)                      # D is symmetric: expand around the smaller μ
    tie = delta == 0
    safe = torch.where(tie, torch.ones_like(delta), delta)
    if fn == "log":
        off = torch.log1p(safe / lo) / safe
        on = 1 / lo
    elif fn == "sqrt":
        off = 1 / (mi.sqrt() + mj.sqrt())
        on = 0.5 / lo.sqrt()
    elif fn == "power":
        hi = torch.maximum(mi, mj)
        at_zero = (hi ** p - lo ** p) / safe        # lo = 0: no cancellation (lo^p is 0, 1 or inf)
        off = torch.where(lo == 0, at_zero, lo ** p * torch.expm1(p * torch.log1p(safe / lo)) / safe)
        on = p * lo ** (p - 1)
    else:
        raise ValueError(f"unknown matrix function {fn!r}: choose one of {', '.join(FUNCTIONS)}")
    return torch.where(tie, on.expand_as(off), off)


class _SvdDK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, F, fn, eps, p):
        _, S, Vh = torch.linalg.svd(F, full_matrices=True)
        V = Vh.transpose(-1, -2)
        d = F.shape[-1]
        sig = torch.zeros(F.shape[:-2] + (d,), dtype=F.dtype, device=F.device)
        sig[..., : S.shape[-1]] = S
        mu = sig * sig + eps
        ctx.save_for_backward(F, V, sig, mu)
        ctx.fn, ctx.p = fn, p
        return (V * scalar_function(fn, p)(mu)[..., None, :]) @ V.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gC):
        F, V, sig, mu = ctx.saved_tensors
        G = (gC + gC.transpose(-1, -2)) / 2
        D = divided_differences(mu, sig, ctx.fn, ctx.p)
        gA = V @ (D * (V.transpose(-1, -2) @ G @ V)) @ V.transpose(-1, -2)
        return 2 * F @ gA, None, None, None


class _EigDK(torch.autograd.Function):
    """g(A) = U g(Λ) Uᵀ for symmetric A with the Daleckii–Krein backward U (D ∘ Uᵀ Ḡ U) Uᵀ."""

    @staticmethod
    def forward(ctx, A, fn, p):
        lam, U = torch.linalg.eigh(A)
        ctx.save_for_backward(lam, U)
        ctx.fn, ctx.p = fn, p
        return (U * scalar_function(fn, p)(lam)[..., None, :]) @ U.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gC):
        lam, U = ctx.saved_tensors
        G = (gC + gC.transpose(-1, -2)) / 2
        D = divided_differences_of(lam, (lam[..., :, None] - lam[..., None, :]).abs(), ctx.fn, ctx.p)
        return U @ (D * (U.transpose(-1, -2) @ G @ U)) @ U.transpose(-1, -2), None, None


def eig_dk_matrix_function(A: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """g(A) for symmetric A (used as is, unchecked) with the Daleckii–Krein backward, exact on ties
    (Higham 2008, Thm. 3.11); for layers that compute a matrix function and need no eigen-backward."""
    scalar_function(fn, p)
    return _EigDK.apply(A, fn, p)


def svd_dk_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = g(FᵀF + εI) from the SVD of F with the cancellation-free Daleckii–Krein backward."""
    return _SvdDK.apply(F, fn, _check_features(F, fn, eps, p, "svd_dk_matrix_function"), p)


def eig_matrix_function(A: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None,
                        method: str | Spec = DEFAULT, **params):
    """C = U g(Λ + εI) Uᵀ from the EIG of symmetric A (..., d, d) — Prop. 4 (backward: ``method``)."""
    check_matrix(A, "eig_matrix_function", symmetric=True)
    params = method_params(params, "eig_matrix_function")
    return _eig_matrix_function(A, fn, check_eps(eps, "eig_matrix_function"), p, method, **params)


def _eig_matrix_function(A, fn, eps, p, method, **params):
    g = scalar_function(fn, p)
    lam, U = stabkit.torch.eigh(stabkit.torch.symmetrize(A), method=method, check=False, **params)
    return (U * g(lam + eps)[..., None, :]) @ U.transpose(-1, -2)


def o2p(F: torch.Tensor, eps: float = 1e-3, route: str = "svd", method: str | Spec = DEFAULT, **params):
    """DeepO2P, log(FᵀF + εI) (Corollary 1): SVD route (Prop. 3), EIG route (Prop. 4) or ``svd-dk``."""
    if route not in ("svd", "svd-dk", "eig"):
        raise ValueError(f"unknown O2P route {route!r}: choose 'svd', 'svd-dk' or 'eig'")
    params = method_params(params, "o2p")
    eps = _check_features(F, "log", eps, None, "o2p")
    if route == "svd":
        return _svd_matrix_function(F, "log", eps, None)
    if route == "svd-dk":
        return _SvdDK.apply(F, "log", eps, None)
    return _eig_matrix_function(F.transpose(-1, -2) @ F, "log", eps, None, method, **params)
