"""Projector layer Π_A = A A⁺ with the backward of Ionescu et al. (ICCV 2015), Lemma 1.

Stated for a *general* A ∈ ℝ^{m×n} of rank r that stays constant under the perturbation (Π_A
jumps where the rank changes, so no derivative exists across ranks). Π_A is the orthogonal
projector onto range(A) and, differentiating A A⁺ on the fixed-rank manifold,

    dΠ = (I − Π) dA A⁺ + (A⁺)ᵀ dAᵀ (I − Π)   ⇒   ∂L/∂A = 2 (I − Π_A) (∂L/∂Π_A)_sym (A⁺)ᵀ,

which is Lemma 1's 2(I − Π_A)(∂L/∂Π_A)_sym A⁺ for symmetric A (then (A⁺)ᵀ = A⁺). A⁺ and Π come
from one thin SVD; the rank is ``rank`` if given (an InputError where that keeps a σ = 0: A's rank
is lower), else #{σ_i > rtol·σ_max} with rtol = max(m, n)·eps(dtype) by default. First derivatives
only (``once_differentiable``): the backward uses the forward's A⁺ as a constant.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _xp
from ..errors import InputError
from ..validation import is_integer
from ._checks import check_eps, check_matrix


def _T(x):
    return x.transpose(-1, -2)


def range_factors(A: torch.Tensor, rank: int | None = None, rtol: float | None = None, fn: str = "projector"):
    """(Π_A, A⁺) from the thin SVD, keeping the top ``rank`` (or numerically nonzero) σ; ``fn`` names the
    calling layer in its InputErrors."""
    k = min(A.shape[-2:])
    if rank is not None and not is_integer(rank, 0, k):
        raise InputError(f"{fn}: rank must be an integer in [0, {k}], got {rank!r}")
    if rtol is not None:
        check_eps(rtol, fn, "rtol")
    P, pinv = kept_factors(A, rank, rtol)
    if rank is not None and not _xp.is_traced(pinv) and not bool(torch.isfinite(pinv).all()):
        raise InputError(f"{fn}: rank={rank} exceeds the rank of A: a kept singular value is 0 (or 1/σ overflows "
                         f"{A.dtype}), where Π_A has no derivative; pass A's rank")
    return P, pinv


def kept_factors(A: torch.Tensor, rank: int | torch.Tensor | None, rtol: float | None):
    """:func:`range_factors` unchecked; ``rank`` may also be an integer tensor of A's batch shape."""
    k = min(A.shape[-2:])
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
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
    pinv = (_T(Vh) * inv[..., None, :]) @ _T(U)
    return P, pinv


def projector_backward(P, pinv, gP):
    """Lemma 1: 2 (I − Π)(∂L/∂Π)_sym (A⁺)ᵀ."""
    G = (gP + _T(gP)) / 2
    return 2 * (G - P @ G) @ _T(pinv)


class _Projector(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, rank, rtol):
        P, pinv = range_factors(A, rank, rtol)
        ctx.save_for_backward(P, pinv)
        return P

    @staticmethod
    @once_differentiable
    def backward(ctx, gP):
        P, pinv = ctx.saved_tensors
        return projector_backward(P, pinv, gP), None, None


def projector(A: torch.Tensor, rank: int | None = None, rtol: float | None = None) -> torch.Tensor:
    """Π_A = A A⁺ (..., m, m) for A (..., m, n) of constant rank; Lemma 1 backward."""
    check_matrix(A, "projector")
    return _Projector.apply(A, rank, rtol)
