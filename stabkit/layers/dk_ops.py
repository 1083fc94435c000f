"""The Daleckii–Krein autograd ops of :mod:`.matrix_functions` at a symmetric A = U diag(λ) Uᵀ whose
eigendecomposition is given: g(A) (:class:`EigDK`), its Fréchet derivative L_A(G) (:class:`Frechet`,
:class:`FrechetGram`) and, as their derivatives, L_A and the second-order L₂ (third derivatives
refused). g is log, √, x^p, or — fn = ``"ridge:<g>"`` — h(x) = g[x + ε, ε] (:mod:`.ridge_divided_differences`).
Each has a twin with a custom jvp (``…Jvp``) for forward mode; torch.compile uses the plain class."""

from __future__ import annotations

import torch

from .._autograd import compile_safe, undifferentiable
from .divided_differences import dk_frechet
from .ridge_divided_differences import first_differences, second_frechet, values

NO_THIRD = ("third derivatives of the Daleckii–Krein layers (eig_dk, svd_dk, CovariancePooling's default "
            "backward) are not implemented")


class EigDK(torch.autograd.Function):
    """g(A) = U g(λ) Uᵀ for symmetric A = U diag(λ) Uᵀ (λ, U given, no gradient); backward
    :func:`dk_frechet`. A is not read; it carries the derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, lam, U, fn, p):
        return (U * values(lam, fn, p)[..., None, :]) @ U.mT

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, lam, U, ctx.fn, ctx.p = inputs
        ctx.save_for_backward(A, lam, U)
        ctx.save_for_forward(A, lam, U)

    @staticmethod
    def backward(ctx, gC):
        return EigDK._frechet(ctx, gC), None, None, None, None

    @staticmethod
    def _frechet(ctx, G):
        A, lam, U = ctx.saved_tensors
        return compile_safe(Frechet, FrechetJvp).apply(A, G, lam, U, ctx.fn, ctx.p)


class Frechet(torch.autograd.Function):
    """L_A(G) = :func:`dk_frechet` at A = U diag(λ) Uᵀ (λ, U given), the EIG-DK backward, as an op whose
    own derivatives are the second-order Daleckii–Krein formula (:mod:`.divided_differences`):
    ∂⟨W, L_A(G)⟩/∂A = L₂(G, W), ∂/∂G = L_A(W) — exact on ties, where differentiating an eigh is not.
    A is not read (λ, U are its decomposition); it carries the derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, G, lam, U, fn, p):
        return dk_frechet(U, first_differences(lam, fn, p), G)

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, G, lam, U, ctx.fn, ctx.p = inputs
        ctx.in_basis, ctx.inputs = False, len(inputs)
        ctx.save_for_backward(A, G, lam, U)
        ctx.save_for_forward(A, G, lam, U)

    @staticmethod
    def backward(ctx, W):
        A, X, lam, U = ctx.saved_tensors  # X: G, or Gt = Uᵀ G U where ctx.in_basis (FrechetGram)
        gA = _second(A, X, W, lam, U, ctx.fn, ctx.p, ctx.in_basis) if ctx.needs_input_grad[0] else None
        gG = compile_safe(Frechet, FrechetJvp).apply(A, W, lam, U, ctx.fn, ctx.p) if ctx.needs_input_grad[1] else None
        return (gA, gG) + (None,) * (ctx.inputs - 2)


def _jvp(ctx, dA, dG, *_):
    """Forward mode of :class:`Frechet` and :class:`FrechetGram`: L₂(G, dA) + L_A(dG)."""
    A, X, lam, U = ctx.saved_tensors
    out = torch.zeros_like(X) if dA is None else _second(A, X, dA, lam, U, ctx.fn, ctx.p, ctx.in_basis)
    return out if dG is None else out + FrechetJvp.apply(A, dG, lam, U, ctx.fn, ctx.p)


class FrechetJvp(Frechet):
    """Frechet with forward mode (torch.func.hessian's forward-over-reverse)."""

    jvp = staticmethod(_jvp)


def _second(A, X, W, lam, U, fn, p, in_basis):
    """L₂(G, W) at A = U diag(λ) Uᵀ, X = G (or, ``in_basis``, X = Uᵀ G U), as an op that takes A, so that
    differentiating it (a third derivative of the layer, reverse or forward mode) reaches it and raises instead
    of treating the saved λ, U as constants."""
    if in_basis:
        return undifferentiable(lambda A, X, W, lam, U: second_frechet(U, lam, None, W, fn, p, Xt=X), NO_THIRD,
                                A, X, W, lam, U)
    return undifferentiable(lambda A, X, W, lam, U: second_frechet(U, lam, X, W, fn, p), NO_THIRD, A, X, W, lam, U)


class EigDKJvp(EigDK):
    """EigDK with forward mode; plain EigDK under torch.compile (Dynamo traces no custom jvp)."""

    @staticmethod
    def jvp(ctx, dA, _lam, _U, _fn, _p):
        """The Fréchet derivative is self-adjoint, so the tangent of g(A) is the backward's formula
        applied to dA (read as sym(dA), the backward's convention)."""
        return EigDK._frechet(ctx, dA)


class FrechetGram(Frechet):
    """L_A(G) as :class:`Frechet`, with G's value given in A's eigenbasis, Gt = Uᵀ G U (G is not read; it
    carries the derivatives): for G = F S Fᵀ at A = FFᵀ = U Σ² Uᵀ, Gt = Σ V₁ᵀ S V₁ Σ from F's SVD keeps
    the entries of small σ that Uᵀ G U would round to u·σ_max²·|S| — which L_A and its derivative then
    multiply by h's largest divided differences (:func:`.matrix_functions._row_gram_backward`). Its
    derivatives are Frechet's, L₂ read with Gt."""

    @staticmethod
    def forward(A, G, Gt, lam, U, fn, p):
        return U @ (first_differences(lam, fn, p) * Gt) @ U.mT

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, _G, Gt, lam, U, ctx.fn, ctx.p = inputs
        ctx.in_basis, ctx.inputs = True, len(inputs)
        ctx.save_for_backward(A, Gt, lam, U)
        ctx.save_for_forward(A, Gt, lam, U)


class FrechetGramJvp(FrechetGram):
    """FrechetGram with forward mode; plain FrechetGram under torch.compile."""

    jvp = staticmethod(_jvp)
