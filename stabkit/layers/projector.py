"""Projector layer Π_A = A A⁺ with the backward of Ionescu et al. (ICCV 2015), Lemma 1.

Stated for a *general* A ∈ ℝ^{m×n} of rank r that stays constant under the perturbation (Π_A
jumps where the rank changes, so no derivative exists across ranks). Π_A is the orthogonal
projector onto range(A) and, differentiating A A⁺ on the fixed-rank manifold,

    dΠ = (I − Π) dA A⁺ + (A⁺)ᵀ dAᵀ (I − Π)   ⇒   ∂L/∂A = 2 (I − Π_A) (∂L/∂Π_A)_sym (A⁺)ᵀ,

which is Lemma 1's 2(I − Π_A)(∂L/∂Π_A)_sym A⁺ for symmetric A (then (A⁺)ᵀ = A⁺). A⁺ and Π come
from one thin SVD; the rank is ``rank`` if given (an InputError where that keeps a σ = 0: A's rank
is lower), else #{σ_i > rtol·σ_max} with rtol = max(m, n)·eps(dtype) by default. A ``rank`` below
A's numerical rank (that default rule) gives the projector onto the top ``rank`` singular vectors, a
different function whose derivative is not Lemma 1's: its backward raises
:class:`~stabkit.errors.UnsupportedDerivativeError`. First derivatives only (``once_differentiable``):
the backward uses the forward's A⁺ as a constant.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .. import _xp
from ..errors import InputError, UnsupportedDerivativeError
from ..validation import is_integer
from ._checks import check_eps, check_matrix


def _T(x):
    return x.transpose(-1, -2)


def range_factors(A: torch.Tensor, rank: int | None = None, rtol: float | None = None, fn: str = "projector"):
    """(Π_A, A⁺, refusal) from the thin SVD, keeping the top ``rank`` (or numerically nonzero) σ; ``fn`` names
    the calling layer in its InputErrors. ``refusal``: None, or the message of a backward that must not run
    (:func:`raise_refusal`) because ``rank`` is below A's numerical rank."""
    k = min(A.shape[-2:])
    if rank is not None and not is_integer(rank, 0, k):
        raise InputError(f"{fn}: rank must be an integer in [0, {k}], got {rank!r}")
    if rtol is not None:
        check_eps(rtol, fn, "rtol")
    P, pinv, S = kept_factors(A, rank, rtol)
    if rank is None or _xp.is_traced(pinv):
        return P, pinv, None
    numerical_rank = (S > max(A.shape[-2:]) * torch.finfo(A.dtype).eps * S[..., :1]).sum(-1)
    overflow, short = torch.stack([~torch.isfinite(pinv).all(), (numerical_rank > rank).any()]).tolist()  # one host read
    if overflow:
        raise InputError(f"{fn}: rank={rank} exceeds the rank of A: a kept singular value is 0 (or 1/σ overflows "
                         f"{A.dtype}), where Π_A has no derivative; pass A's rank")
    refusal = None
    if short:
        refusal = (f"{fn} backward: rank={rank} is below the numerical rank {int(numerical_rank.max())} of its matrix "
                   f"(σ > max(m, n)·eps·σ_max): Π then projects onto the top {rank} singular vectors, whose derivative "
                   f"is not Lemma 1's; pass the matrix's rank (or rank=None)")
    return P, pinv, refusal


def raise_refusal(refusal: str | None) -> None:
    """UnsupportedDerivativeError(refusal) unless it is None (:func:`range_factors`)."""
    if refusal is not None:
        raise UnsupportedDerivativeError(refusal)


def kept_factors(A: torch.Tensor, rank: int | torch.Tensor | None, rtol: float | None):
    """(Π_A, A⁺, σ of cA): :func:`range_factors` unchecked; ``rank`` may also be an integer tensor of A's
    batch shape. Where σ_max ≤ √(mn)·max|A| could overflow (entries near the dtype's maximum: the rank rule
    then kept no σ and Π was 0), the SVD is of cA, c = :func:`stabkit._xp.unit_scale` (A), the power of two
    putting max|cA| in [½, 1) (exact; Π is the same and A⁺ = c·(cA)⁺); elsewhere c = 1."""
    k = min(A.shape[-2:])
    amax = A.abs().amax((-2, -1), keepdim=True)
    c = torch.where(amax > torch.finfo(A.dtype).max / (2 * math.sqrt(A.shape[-2] * A.shape[-1])),
                    _xp.unit_scale(A), torch.ones_like(amax))
    U, S, Vh = torch.linalg.svd(A * c, full_matrices=False)
    if isinstance(rank, torch.Tensor):
        keep = torch.arange(k, device=A.device) < rank[..., None]
    elif rank is not None:
        keep = (torch.arange(k, device=A.device) < rank).expand(S.shape)
    else:
        tol = (rtol if rtol is not None else max(A.shape[-2:]) * torch.finfo(A.dtype).eps) * S[..., :1]
        keep = S > tol
    w = keep.to(A.dtype)
    inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    P = (U * w[..., None, :]) @ _T(U)
    pinv = (_T(Vh) * inv[..., None, :]) @ _T(U) * c
    return P, pinv, S


def projector_backward(P, pinv, gP):
    """Lemma 1: 2 (I − Π)(∂L/∂Π)_sym (A⁺)ᵀ."""
    G = (gP + _T(gP)) / 2
    return 2 * (G - P @ G) @ _T(pinv)


class _Projector(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, rank, rtol):
        P, pinv, ctx.refusal = range_factors(A, rank, rtol)
        ctx.save_for_backward(P, pinv)
        return P

    @staticmethod
    @once_differentiable
    def backward(ctx, gP):
        raise_refusal(ctx.refusal)
        P, pinv = ctx.saved_tensors
        return projector_backward(P, pinv, gP), None, None


def projector(A: torch.Tensor, rank: int | None = None, rtol: float | None = None) -> torch.Tensor:
    """Π_A = A A⁺ (..., m, m) for A (..., m, n) of constant rank; Lemma 1 backward."""
    check_matrix(A, "projector")
    return _Projector.apply(A, rank, rtol)
