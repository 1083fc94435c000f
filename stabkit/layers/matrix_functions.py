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
and Δ = |μ_i − μ_j| = |σ_i − σ_j|(σ_i + σ_j) — so it needs no 1/(σ_i² − σ_j²) and stays finite on ties. Prop. 1's
K-form instead cancels two large terms (rounding of Vᵀ∂L/∂V's asymmetry times K).
"""

from __future__ import annotations

import torch

from . import svd as _svd
import stabkit.torch
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


def svd_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = V g(ΣᵀΣ + εI) Vᵀ ∈ ℝ^{d×d} from the SVD of F (..., n, d) — Prop. 3."""
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
    mi, mj = mu[..., :, None], mu[..., None, :]
    lo = torch.minimum(mi, mj)                      # D is symmetric: expand around the smaller μ
    delta = ((sig[..., :, None] - sig[..., None, :]) * (sig[..., :, None] + sig[..., None, :])).abs()
    tie = delta == 0
    safe = torch.where(tie, torch.ones_like(delta), delta)
    if fn == "log":
        off = torch.log1p(safe / lo) / safe
        on = 1 / lo
    elif fn == "sqrt":
        off = 1 / (mi.sqrt() + mj.sqrt())
        on = 0.5 / lo.sqrt()
    elif fn == "power":
        off = lo ** p * torch.expm1(p * torch.log1p(safe / lo)) / safe
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
    def backward(ctx, gC):
        F, V, sig, mu = ctx.saved_tensors
        G = (gC + gC.transpose(-1, -2)) / 2
        D = divided_differences(mu, sig, ctx.fn, ctx.p)
        gA = V @ (D * (V.transpose(-1, -2) @ G @ V)) @ V.transpose(-1, -2)
        return 2 * F @ gA, None, None, None


def svd_dk_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = g(FᵀF + εI) from the SVD of F with the cancellation-free Daleckii–Krein backward."""
    scalar_function(fn, p)
    return _SvdDK.apply(F, fn, eps, p)


def eig_matrix_function(A: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None,
                        method: str | Spec = DEFAULT, **params):
    """C = U g(Λ + εI) Uᵀ from the EIG of symmetric A (..., d, d) — Prop. 4 (backward: ``method``)."""
    g = scalar_function(fn, p)
    lam, U = stabkit.torch.eigh(stabkit.torch.symmetrize(A), method=method, **params)
    return (U * g(lam + eps)[..., None, :]) @ U.transpose(-1, -2)


def o2p(F: torch.Tensor, eps: float = 1e-3, route: str = "svd", method: str | Spec = DEFAULT, **params):
    """DeepO2P, log(FᵀF + εI) (Corollary 1): SVD route (Prop. 3), EIG route (Prop. 4) or ``svd-dk``."""
    if route == "svd":
        return svd_matrix_function(F, "log", eps)
    if route == "svd-dk":
        return svd_dk_matrix_function(F, "log", eps)
    if route == "eig":
        return eig_matrix_function(F.transpose(-1, -2) @ F, "log", eps, method=method, **params)
    raise ValueError(f"unknown O2P route {route!r}: choose 'svd', 'svd-dk' or 'eig'")
