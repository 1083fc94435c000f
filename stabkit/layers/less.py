"""LESS — least squares on the sphere (Xu, Wang, Liu & Gould, principal matrix features via deep
declarative networks, "PMaF"): the principal eigenvector of symmetric A as

    y = argmin_{‖y‖ = 1} ½‖A − y yᵀ‖²_F  =  argmin_{‖y‖ = 1} −yᵀAy  (+ constants, since ‖y‖ = 1).

Forward: Riemannian gradient descent on the unit sphere. Tangent gradient r = −2 (I − yyᵀ) A y;
step y⁺ = (y − α r)/‖y − α r‖ (retraction). Each step starts from the current trial size α;
a backtracking line search halves it until Armijo's condition f(y⁺) ≤ f(y) − c₁ α ‖r‖²
holds (where f's change is below its rounding, Armijo is noise: there a step is
accepted iff ‖r‖ decreases — an approximate-Armijo safeguard); an accepted first try lets α grow (×``grow``, adaptive steps) while a backtracked step
keeps the reduced α (descent decay). Stops when ‖r‖ ≤ tol·‖A‖_F, per batch element.

Backward: the implicit-function rule of the bi-level problem, identical to IED's (see
:mod:`.ied`): ∂L/∂A = sym(v yᵀ) + (∂L/∂λ) yyᵀ, v = (λI − A + c yyᵀ)⁻¹ (I − yyᵀ) ∂L/∂y — one
Cholesky solve.
"""

from __future__ import annotations

import torch

from ..errors import InputError

from .ied import fix_sign, principal_backward


def less_forward(A, y0=None, max_iter=5000, tol=None, grow=2.0, c1=1e-4):
    A = (A + A.transpose(-1, -2)) / 2
    d = A.shape[-1]
    eps = torch.finfo(A.dtype).eps
    tol = 16 * eps if tol is None else tol
    normA = torch.linalg.matrix_norm(A)[..., None]
    if y0 is None:
        col = torch.linalg.vector_norm(A, dim=-2).argmax(-1)
        y = torch.gather(A, -1, col[..., None, None].expand(A.shape[:-1] + (1,)))[..., 0]
        y = y + normA * 1e-3 / d ** 0.5   # nudge off any exact orthogonality to the top vector
    else:
        y = y0.to(A.dtype).expand(A.shape[:-1]).clone()
    y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    alpha = 1.0 / normA.clamp_min(torch.finfo(A.dtype).tiny)
    f = lambda z: -(z * (A @ z[..., None])[..., 0]).sum(-1, keepdim=True)

    def accept(z, fy, a, rn2):
        # Armijo; where f's change sinks below its rounding (near the optimum) Armijo is decided
        # by noise, so there a step is accepted iff the tangent residual ‖r‖ decreases.
        fz = f(z)
        Az = (A @ z[..., None])[..., 0]
        rz = Az - (z * Az).sum(-1, keepdim=True) * z
        flat = (fz - fy).abs() <= 8 * eps * normA
        return torch.where(flat, 4 * (rz * rz).sum(-1, keepdim=True) < rn2, fz <= fy - c1 * a * rn2)
    for it in range(max_iter):
        Ay = (A @ y[..., None])[..., 0]
        rq = (y * Ay).sum(-1, keepdim=True)
        r = -2 * (Ay - rq * y)
        rn2 = (r * r).sum(-1, keepdim=True)
        active = rn2.sqrt() > tol * normA
        if not bool(active.any()):
            break
        fy = -rq
        a = alpha.clone()
        first = torch.ones_like(active)
        for _ in range(60):
            z = y - a * r
            z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
            ok = accept(z, fy, a, rn2)
            if bool((ok | ~active).all()):
                break
            a = torch.where(ok, a, a / 2)
            first = first & ok
        ok = accept(z, fy, a, rn2)
        y = torch.where(active & ok, z, y)
        alpha = torch.where(active & first, a * grow, a)
        if bool((active & ~ok).all()):
            break  # no decrease even at tiny steps: at the rounding floor
    Ay = (A @ y[..., None])[..., 0]
    lam = (y * Ay).sum(-1)
    return A, lam, fix_sign(y[..., None])[..., 0], it


class _LESS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, y0, max_iter, tol):
        As, lam, y, _ = less_forward(A, y0, max_iter, tol)
        ctx.save_for_backward(As, y, lam)
        return y, lam

    @staticmethod
    def backward(ctx, gy, glam):
        A, y, lam = ctx.saved_tensors
        gA = principal_backward(A, y[..., None], lam[..., None], None if gy is None else gy[..., None],
                                None if glam is None else glam[..., None])
        return gA, None, None, None


def less(A: torch.Tensor, y0: torch.Tensor | None = None, max_iter: int = 5000, tol: float | None = None):
    """Principal eigenvector y (..., d) and eigenvalue λ = yᵀAy (...) of symmetric A (..., d, d)."""
    if not isinstance(A, torch.Tensor) or A.dtype not in (torch.float32, torch.float64):
        raise InputError("less expects a float32/float64 torch.Tensor")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise InputError(f"less expects square (..., d, d) input, got {tuple(A.shape)}")
    return _LESS.apply(A, y0, max_iter, tol)
