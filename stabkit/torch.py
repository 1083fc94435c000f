"""``stabkit.torch.eigh(A, method=..., **params)``: torch.linalg.eigh with a chosen backward.

A drop-in for ``torch.linalg.eigh`` inside any model: returns (eigenvalues ascending,
eigenvectors), accepts any batch shape, float32/float64, CPU or CUDA. The backward is the
registry method's formula — the very code the numpy path runs (``stabkit.methods``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _xp
from .methods import get, resolve_params


class EighResult(NamedTuple):
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


class _Eigh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, name, params):
        method = get(name)
        lam, U, state = method.forward(A, **params)
        ctx.method, ctx.params, ctx.state = method, params, state
        return lam, U

    @staticmethod
    def backward(ctx, glam, gU):
        state = ctx.state
        ref = state.get("U", state.get("A"))
        if glam is None:
            glam = torch.zeros(ref.shape[:-1], dtype=ref.dtype, device=ref.device)
        if gU is None:
            gU = torch.zeros_like(ref)
        gA = ctx.method.backward(state, gU, glam, **ctx.params)
        return gA, None, None


def eigh(A: torch.Tensor, method: str = "analytic", **params) -> EighResult:
    """Eigendecomposition of symmetric A (..., d, d) whose gradient follows ``method``.

    ``method="torch"`` is torch.linalg.eigh itself. Raises ValueError for an unknown method or
    parameter, a non-float dtype, or a non-square input.
    """
    if not isinstance(A, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"unsupported dtype {A.dtype}: use float32 or float64")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2] or A.shape[-1] == 0:
        raise ValueError(f"expected a batch of non-empty square matrices (..., d, d), got shape {tuple(A.shape)}")
    resolved = resolve_params(method, params)
    if method == "torch":
        lam, U = torch.linalg.eigh(A)
        return EighResult(lam, U)
    lam, U = _Eigh.apply(A, method, resolved)
    return EighResult(lam, U)


def symmetrize(A: torch.Tensor) -> torch.Tensor:
    """(A + Aᵀ)/2 — what a layer should feed to ``eigh`` when A is only symmetric up to rounding."""
    return _xp.sym(A)


def eigh_kept(A: torch.Tensor, method: str = "analytic", **params):
    """(eigenvalues, eigenvectors, kept) — :func:`eigh` plus the bool mask (..., d) of the
    eigenpairs the method keeps (``pi`` drops pairs by SVD-PI's breaking conditions; for most
    methods it is all True). A layer computing f(A) should use U diag(kept·f(λ)) Uᵀ: that is the
    function the method's backward differentiates (Wang et al., NeurIPS 2019, Alg. 1). The mask is
    the method's own rule (``Method.kept_of``) applied to the eigenvalues its forward returned."""
    lam, U = eigh(A, method, **params)
    with torch.no_grad():
        kept = get(method).kept_of(lam.detach(), resolve_params(method, params))
    return lam, U, kept
