"""Helpers of stabkit's custom autograd ops (:mod:`stabkit.torch`, the Daleckii–Krein layers): the class
to use under torch.compile, results (tangents, second derivatives) that refuse to be differentiated,
and factors rebuilt for a backward that is itself differentiated."""

from __future__ import annotations

import torch

from . import _xp
from .errors import UnsupportedDerivativeError


def compile_safe(plain, with_jvp):
    """The op class to apply: ``plain`` under torch.compile (Dynamo traces no custom jvp), else ``with_jvp``."""
    return plain if torch.compiler.is_compiling() else with_jvp


class _Undifferentiable(torch.autograd.Function):
    """``formula(*args)`` as an op whose backward and jvp raise UnsupportedDerivativeError(``message``):
    for a result computed from saved factors that would silently be treated as constants if differentiated."""

    generate_vmap_rule = True

    @staticmethod
    def forward(formula, message, *args):
        return formula(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[1]

    @staticmethod
    def backward(ctx, *_grads):
        raise UnsupportedDerivativeError(ctx.message)

    @staticmethod
    def jvp(ctx, *_tangents):
        raise UnsupportedDerivativeError(ctx.message)


def undifferentiable(formula, message: str, *args):
    """``formula(*args)``, refusing to be differentiated with ``message`` (:class:`_Undifferentiable`)."""
    return _Undifferentiable.apply(formula, message, *args)


def tangent_op(formula, name: str, *args):
    """The tangent ``formula(*args)`` of a custom jvp, refusing to be differentiated. torch.func does not
    trace a custom jvp's own operations for an enclosing forward-mode level, so jacfwd(jacfwd(·))
    treated the saved factors as constants: a silently wrong second derivative."""
    return undifferentiable(formula, f"{name}: the forward-mode tangent cannot be differentiated (jacfwd(jacfwd(·)), "
                            "jacrev(jacfwd(·))); for a second derivative use torch.func.hessian (forward over reverse) "
                            "or double backward", *args)


def differentiating_backward(A) -> bool:
    """The backward itself is being differentiated (double backward, or a torch.func transform
    that may apply forward mode to it): the decomposition must then be rebuilt from A with ops
    whose derivatives are exact, instead of using the saved, constant factors."""
    if torch.is_grad_enabled():
        return True
    return not torch.compiler.is_compiling() and bool(torch._C._functorch.is_functorch_wrapped_tensor(A))


def eigh_for_backward(A, lam, U):
    """The saved (λ, U), or — when the backward is itself differentiated — (λ, U) rebuilt from A by
    :func:`stabkit._xp.eigh` (a watch neither logs nor swaps it: its derivative must be exact),
    the columns signed like the saved ones."""
    if not differentiating_backward(A):
        return lam, U
    lam, U_new = _xp.eigh(A)
    return lam, U_new * same_sign(U_new, U)


def rebuilt_svd(X, Vh, driver=None):
    """X's thin (U, σ, Vᵀ) recomputed by the aten op (whose derivative is exact; a watch neither logs
    nor swaps it) for a backward that is itself differentiated, each pair signed like ``Vh``'s rows."""
    U, S, Vh_new = torch.ops.aten.linalg_svd(X, full_matrices=False, driver=driver)
    sign = same_sign(Vh_new.mT, Vh.mT)
    return U * sign, S, Vh_new * sign.mT


def same_sign(new, old):
    """±1 per column making ``new``'s columns point like ``old``'s (a recomputed basis)."""
    s = torch.sign((new * old).sum(-2, keepdim=True))
    return torch.where(s == 0, torch.ones_like(s), s).detach()
