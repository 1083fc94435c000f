"""Normalized-cuts losses of Ionescu, Vantzos & Sminchisescu (ICCV 2015), Sec. on normalized cuts.

Affinity W ∈ ℝ^{m×m} (symmetric, nonnegative, positive degrees), ground-truth partition
indicators E ∈ {0,1}^{m×k}, degrees D = diag(W 1):

* J₁ = ½‖Π_M − Π_Ω‖²_F, M = D^-1/2 W D^-1/2, Ω = D^1/2 E Eᵀ D^1/2 (Π_Ω = projector onto
  range(D^1/2 E)). Gradient (Prop. 5, derived here via Lemma 1 and the chain rule through D):
  with G_M = 2(I − Π_M)(Π_M − Π_Ω)(M⁺)ᵀ, G_Ω = 2(I − Π_Ω)(Π_Ω − Π_M)(Ω⁺)ᵀ (Ω := D^1/2 E),
  s = diag(D)^-1/2, t = diag(D)^1/2:
      ∂J₁/∂W = diag(s) G_M diag(s) + (∂J₁/∂δ) 1ᵀ,   δ = W 1,
      ∂J₁/∂δ = −½ δ^-3/2 ∘ ((G_M ∘ W) s + (G_Mᵀ ∘ Wᵀ) s) + ½ δ^-1/2 ∘ ((G_Ω ∘ E) 1).
* J₂ = ½‖Π_W − Π_Ψ‖²_F with Ψ = E Eᵀ (so Π_Ψ, the projector onto range(E), is E(EᵀE)⁻¹Eᵀ when
  E has full column rank; constant in W); Prop. 6:
      ∂J₂/∂W = 2(I − Π_W)(Π_W − Π_Ψ)(W⁺)ᵀ = −2(I − Π_W) Π_Ψ (W⁺)ᵀ.
* Low-rank affinity W = F Λ Fᵀ (F ∈ ℝ^{m×d}, Λ = diag(λ)), the low-rank affinity
  derivatives of the normalized-cuts section of the extended version (arXiv:1509.07838; equation
  numbers differ between versions, so none are cited): with G = ∂J/∂W,
      ∂J/∂F = (G + Gᵀ) F Λ,   ∂J/∂Λ = (Fᵀ G F)_diag.
  For J₂, Fᵀ(I − Π_W) = 0 when F has full column rank and Λ is invertible, so ∂J₂/∂Λ = 0: Π_W
  does not depend on Λ at all (the paper's remark).

Both J's are only differentiable where the ranks of W (or M) stay constant; ``rank`` fixes it
(default: numerical rank; one below it makes the backward raise, :mod:`.projector`). E may have
rank < k (an empty cluster, a repeated column): Π_Ω and Π_Ψ keep E's numerical rank of singular values. The formulas hold for any square W (no symmetry used); J₁ needs
positive degrees. First derivatives only (``once_differentiable``) for J₁ and J₂: their backwards
use the forward's projectors and pseudo-inverses as constants.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._checks import check_matrix
from .projector import kept_factors, raise_refusal, range_factors
from .. import _xp
from ..errors import InputError


def _T(x):
    return x.transpose(-1, -2)


def _ncut_j1_parts(W, E, rank):
    deg = W.sum(-1)
    s, t = deg.rsqrt(), deg.sqrt()
    M = s[..., :, None] * W * s[..., None, :]
    Omega = t[..., :, None] * E
    PM, Mp, refusal = range_factors(M, rank, fn="ncut_j1")
    PO, Op, _ = kept_factors(Omega, _indicator_rank(E), None)   # rank D^1/2 E = rank E (D > 0)
    J = 0.5 * ((PM - PO) ** 2).sum((-2, -1))
    return J, (deg, s, PM, Mp, PO, Op), refusal


def _ncut_j1_grad(W, E, deg, s, PM, Mp, PO, Op):
    I = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    GM = 2 * (I - PM) @ (PM - PO) @ _T(Mp)
    GO = 2 * (I - PO) @ (PO - PM) @ _T(Op)
    gs = ((GM * W) @ s[..., None] + (_T(GM) * _T(W)) @ s[..., None])[..., 0]
    gt = (GO * E).sum(-1)
    gdeg = -0.5 * (s * gs) / deg + 0.5 * s * gt    # δ^-3/2 ∘ gs as (s ∘ gs)/δ: δ^-3/2 alone overflows first
    return s[..., :, None] * GM * s[..., None, :] + gdeg[..., :, None]


def _indicator_rank(E):
    """rank E per matrix (numerical, :func:`range_factors`' default rule): below k when a cluster is
    empty (a zero column) or columns repeat, where keeping k σ added an arbitrary direction to Π_Ω.
    Ω = D^1/2 E takes E's rank, not its own numerical one: degrees far apart would shrink a cluster's σ."""
    return torch.linalg.matrix_rank(E)


class _NcutJ1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W, E, rank):
        J, parts, ctx.refusal = _ncut_j1_parts(W, E, rank)
        ctx.save_for_backward(W, E, *parts)
        return J

    @staticmethod
    @once_differentiable
    def backward(ctx, gJ):
        raise_refusal(ctx.refusal)
        return gJ[..., None, None] * _ncut_j1_grad(*ctx.saved_tensors), None, None


class _NcutJ2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W, E, rank):
        PW, Wp, ctx.refusal = range_factors(W, rank, fn="ncut_j2")
        PPsi, _, _ = range_factors(E)   # at E's numerical rank: an empty cluster or a repeated column adds no direction
        ctx.save_for_backward(PW, Wp, PPsi)
        return 0.5 * ((PW - PPsi) ** 2).sum((-2, -1))

    @staticmethod
    @once_differentiable
    def backward(ctx, gJ):
        raise_refusal(ctx.refusal)
        PW, Wp, PPsi = ctx.saved_tensors
        I = torch.eye(PW.shape[-1], dtype=PW.dtype, device=PW.device)
        G = 2 * (I - PW) @ (PW - PPsi) @ _T(Wp)
        return gJ[..., None, None] * G, None, None


class _LowRankAffinity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, F, lam):
        ctx.save_for_backward(F, lam)
        return (F * lam[..., None, :]) @ _T(F)

    @staticmethod
    def backward(ctx, G):
        F, lam = ctx.saved_tensors
        gF = ((G + _T(G)) @ F) * lam[..., None, :]          # ∂J/∂F
        glam = (F * (G @ F)).sum(-2)                       # ∂J/∂Λ = (Fᵀ G F)_diag
        return gF, glam


def _check_affinity(W, E, fn: str) -> torch.Tensor:
    """E in W's dtype after the input contract: W finite square float, E (..., m, k) finite."""
    check_matrix(W, fn, square=True)
    if not isinstance(E, torch.Tensor) or E.ndim < 2 or E.shape[-2] != W.shape[-1] or E.shape[-1] == 0:
        raise InputError(f"{fn}: expected indicators E of shape (..., {W.shape[-1]}, k), got "
                         f"{tuple(E.shape) if isinstance(E, torch.Tensor) else type(E).__name__}")
    if E.is_complex() or E.device != W.device:  # .to(W.dtype) would drop an imaginary part or fail later
        raise InputError(f"{fn}: expected real indicators E on W's device {W.device}, got {E.dtype} on {E.device}")
    _check_batches(fn, f"W {tuple(W.shape)}", W.shape[:-2], f"E {tuple(E.shape)}", E.shape[:-2])
    E = E.to(W.dtype)
    check_matrix(E, f"{fn}: indicators E in {W.dtype} (W's dtype)")   # not a bare "input": W or E?
    return E


def _check_batches(fn: str, x: str, x_batch, y: str, y_batch) -> None:
    """InputError unless two inputs' batch shapes broadcast (torch failed deep inside the op)."""
    try:
        torch.broadcast_shapes(x_batch, y_batch)
    except RuntimeError:
        raise InputError(f"{fn}: the batch shapes of {x} and {y} do not broadcast") from None


def ncut_j1(W: torch.Tensor, E: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """J₁ = ½‖Π_M − Π_Ω‖²_F per batch element (Prop. 5 backward)."""
    E = _check_affinity(W, E, "ncut_j1")
    if not _xp.is_traced(W):
        deg = W.detach().sum(-1)
        nonpositive, overflow = torch.stack([(deg <= 0).any(), deg.isinf().any()]).tolist()   # one host read
        if nonpositive:
            raise InputError("ncut_j1: W has a node of zero or negative degree (a row sum ≤ 0): D^-1/2 is undefined")
        if overflow:   # J₁ is invariant under W → cW
            raise InputError(f"ncut_j1: a node's degree (a row sum of W) overflows {W.dtype}: scale W down")
    return _NcutJ1.apply(W, E, rank)


def ncut_j2(W: torch.Tensor, E: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """J₂ = ½‖Π_W − Π_Ψ‖²_F per batch element (Prop. 6 backward)."""
    return _NcutJ2.apply(W, _check_affinity(W, E, "ncut_j2"), rank)


def low_rank_affinity(F: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """W = F diag(λ) Fᵀ with the paper's low-rank affinity backward."""
    check_matrix(F, "low_rank_affinity")
    if not isinstance(lam, torch.Tensor) or lam.dtype != F.dtype or lam.shape[-1:] != F.shape[-1:] or lam.device != F.device:
        raise InputError(f"low_rank_affinity: expected λ (..., {F.shape[-1]}) of dtype {F.dtype} on {F.device}")
    _check_batches("low_rank_affinity", f"F {tuple(F.shape)}", F.shape[:-2], f"λ {tuple(lam.shape)}", lam.shape[:-1])
    check_matrix(lam[..., None], "low_rank_affinity: weights λ")
    return _LowRankAffinity.apply(F, lam)
