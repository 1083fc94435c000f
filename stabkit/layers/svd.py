"""SVD layer X = U Σ Vᵀ (X ∈ ℝ^{m×n}, m ≥ n) with the backward of Ionescu, Vantzos & Sminchisescu,
"Matrix backpropagation for deep networks with structured layers", ICCV 2015, Proposition 1.

Choice: the *thin* SVD (U ∈ ℝ^{m×n}, Σ = diag(σ) ∈ ℝ^{n×n}, V ∈ ℝ^{n×n}); V is returned, not Vᵀ.
Prop. 1 written for the thin factors, with K_ij = 1/(σ_i² − σ_j²) (i ≠ j), K_ii = 0:

    ∂L/∂X = U [ diag(∂L/∂σ) − Σ (K ∘ (Vᵀ∂L/∂V − (Vᵀ∂L/∂V)ᵀ)) − (K ∘ (Uᵀ∂L/∂U − (Uᵀ∂L/∂U)ᵀ)) Σ ] Vᵀ
            + (I_m − U Uᵀ) (∂L/∂U) Σ⁻¹ Vᵀ.

The last term is the paper's D term: the part of ∂L/∂U outside span(U), i.e. what the m − n
extra columns U₂ of the full U carry (U₂U₂ᵀ = I − UUᵀ); it is skipped when m = n. The
antisymmetric parts are the paper's (·)_sym with K antisymmetric, written out. On exact ties
σ_i² = σ_j² (i ≠ j) the paper's K is undefined; we set K_ij = 0, extending its K_ii = 0. When the
tied σ are 0 the value does not matter (Σ multiplies both K terms); for tied nonzero σ it is an
approximation (the derivative does not exist there for general losses). Near-ties are computed as
is.

σ_i = 0 (rank-deficient X): u_i is then any unit vector orthogonal to the other columns, so L(U)
has no derivative through the part of ∂L/∂u_i outside span(U). We use Σ⁺ (1/σ_i, and 0 where
σ_i = 0) in the D term, i.e. drop that part: the result is the exact gradient whenever L does not
depend on that direction of u_i (L a function of σ and V, for which torch passes zeros as ∂L/∂U,
or of U diag(h(σ)) with h(0) = 0).
"""

from __future__ import annotations

import math

import torch

from .._xp import unit_scale
from ..errors import InputError
from ..torch import pinv_diag
from ._checks import check_matrix


def _T(x):
    return x.transpose(-1, -2)


def ionescu_K(s2: torch.Tensor) -> torch.Tensor:
    """K_ij = 1/(s2_i − s2_j) off the diagonal, 0 on it and on exact ties (shape (..., n, n))."""
    diff = s2[..., :, None] - s2[..., None, :]
    tie = diff == 0
    return torch.where(tie, torch.zeros_like(diff), 1.0 / torch.where(tie, torch.ones_like(diff), diff))


def range_scale(S: torch.Tensor, eps: float, q: float) -> torch.Tensor:
    """c = 2^−k (shape (..., 1), from σ (..., k) without gradient) at which the Daleckii–Krein routes of
    :mod:`.matrix_functions` (g of degree q: log 0, √ ½, x^p p) take their derivatives, at cF and c²ε.

    The least shift that brings s = max(σ_max, √ε) = m·2^e (m ∈ [½, 1)) to |e| ≤ ⌊(⌊log2 max float⌋ − 8) /
    (2 (max(|q|, |q − 3|) + 1))⌋ (float32: 14 for log, 17 for √; float64: 126, 145), where μ = σ² + ε, the
    powers μ^(q−j), j ≤ 3, that the first and second derivatives form, and their products with F stay normal
    numbers. So c = 1 at ordinary scales, where a call is computed as is, bitwise (x^p's pow is not exact
    under scaling), and a small ε next to a large σ is shifted no further than needed (c²ε stays normal:
    float32 σ ~ 1e20 with ε = 1e-3)."""
    if S.shape[-1] == 0:
        return torch.ones(S.shape[:-1] + (1,), dtype=S.dtype, device=S.device)
    s = S.detach().amax(-1, keepdim=True).clamp_min(math.sqrt(eps))
    top = int(math.log2(torch.finfo(S.dtype).max))
    limit = int((top - 8) / (2 * (max(abs(q), abs(q - 3)) + 1)))
    _, e = torch.frexp(s)
    return torch.exp2((e.clamp(-limit, limit) - e).clamp_max(top).to(S.dtype))  # c finite for a subnormal s


def svd_backward(U, S, V, gU, gS, gV):
    """∂L/∂X of Prop. 1 (thin form) from the cotangents of (U, σ, V); any of them may be None.

    Computed at cσ with the cotangents of U and V times c (:func:`stabkit._xp.unit_scale` over σ): the result is the
    same (σK, Kσ and Σ⁻¹ are of degree −1 in σ, diag(∂L/∂σ) of degree 0), and bitwise so where nothing
    leaves the normal range, but σ_i² − σ_j² can neither overflow (float32 σ ~ 1e20 made K = 1/(inf − inf)
    = NaN) nor underflow (σ² subnormal made K infinite, σ² = 0 made K = 0), nor K·(c Uᵀ∂L/∂U) underflow."""
    c = unit_scale(S, axes=(-1,))
    S = S * c
    gU = None if gU is None else gU * c[..., None, :]
    gV = None if gV is None else gV * c[..., None, :]
    K = ionescu_K(S * S)
    inner = torch.zeros(S.shape + S.shape[-1:], dtype=S.dtype, device=S.device)
    if gS is not None:
        inner = inner + torch.diag_embed(gS)
    if gV is not None:
        P = _T(V) @ gV
        inner = inner - S[..., :, None] * (K * (P - _T(P)))
    extra = None
    if gU is not None:
        J = _T(U) @ gU
        inner = inner - (K * (J - _T(J))) * S[..., None, :]
        if U.shape[-2] > U.shape[-1]:
            extra = ((gU - U @ J) * pinv_diag(S)[..., None, :]) @ _T(V)
    gX = U @ inner @ _T(V)
    return gX if extra is None else gX + extra


class _SVD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X):
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        V = _T(Vh)
        ctx.save_for_backward(U, S, V)
        return U, S, V

    @staticmethod
    def backward(ctx, gU, gS, gV):
        U, S, V = ctx.saved_tensors
        return svd_backward(U, S, V, gU, gS, gV)


def svd(X: torch.Tensor):
    """(U, σ, V) of the thin SVD of X (..., m, n), m ≥ n, σ descending, with Prop. 1's backward."""
    check_matrix(X, "svd layer")
    if X.shape[-2] < X.shape[-1]:
        raise InputError(f"svd layer: expected (..., m, n) with m ≥ n, got shape {tuple(X.shape)}")
    return _SVD.apply(X)
