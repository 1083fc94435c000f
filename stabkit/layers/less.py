"""LESS — least squares on the sphere (Xu, Wang, Liu & Gould, principal matrix features via deep
declarative networks, "PMaF"): the principal eigenvector of symmetric A as

    y = argmin_{‖y‖ = 1} ½‖A − y yᵀ‖²_F  =  argmin_{‖y‖ = 1} −yᵀAy  (+ constants, since ‖y‖ = 1).

Forward: Riemannian steepest descent on the unit sphere with exact line search. The tangent
gradient is r = −2 (I − yyᵀ) A y; the next iterate is the best point of the geodesic through y
along r, i.e. the top eigenvector of A restricted to span(y, r̂) (a 2 × 2 problem in closed form),
so f never increases and there is no step size to tune. Stops when ‖r‖ ≤ tol·‖A‖_F, per batch
element. It iterates on A divided by a power of two near max|A| (exact; λ is scaled back), so
‖A‖_F and the residuals neither overflow nor underflow however A is scaled.

Deviation from PMaF: the paper's forward takes adaptive steps with a backtracking (Armijo) line
search and descent decay. Our earlier version of that rule stalled where f's change sinks below
rounding (a 2 × 2 with λ = (0.00036, 5.597) ran 5000 steps at a step size where the retraction
barely moves y; tests/test_layers_less.py), and the paper's growth and decay constants are not
ours to guess, so the step is the exact minimiser along the geodesic instead. The fixed point
(the principal vector) and the backward are the paper's; only the iterates and their number
differ, and a forward that does not reach ``tol`` raises instead of returning its iterate.

Start: the largest column of A (close to the top vector for PSD A) plus a seeded random nudge, so
the start is not orthogonal to the top vector (a stationary point of descent is any eigenvector).
The nudge is one vector of length d drawn from the seed and shared by every matrix of a batch, so a
matrix's start depends only on the matrix, the seed and d — not on its place in the batch or on the
other matrices (batched products may still round differently from unbatched ones).

Result checks, raising :class:`~stabkit.errors.EigensolverError`: ‖r‖ still above tol·‖A‖_F (or
above the rounding floor d·eps·‖A‖_F where that is larger: ``_checks.failure_tol``; at that floor
the iterates jitter, so where the last one lies above it the best iterate seen is returned)
(descent converges at a rate set by the relative top gap, so near-ties can need more than
``max_iter`` steps, or more than the dtype resolves); and y not principal, i.e. a Cholesky
factorisation of (λ + m) I − A + ‖A‖_F yyᵀ fails, m = ‖Ay − λy‖ + 16·d·eps·‖A‖_F (it succeeds iff
every eigenvalue of A but y's is below λ + m).

Backward: the implicit-function rule of the bi-level problem, identical to IED's (see
:mod:`.ied`): ∂L/∂A = sym(v yᵀ) + (∂L/∂λ) yyᵀ, v = (λI − A + c yyᵀ)⁻¹ (I − yyᵀ) ∂L/∂y — one
solve. First derivatives only: the rule uses the forward's y and λ as constants.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _xp
from ..errors import EigensolverError, InputError
from ._checks import check_iterations, check_matrix, check_seed, check_tol, failure_tol, not_converged
from .ied import fix_sign, principal_backward, scaled_sym, seeded_normal


def _start(A, seed):
    """Largest column of A, unit length, plus a seeded random nudge of length 1e-3, the same d-vector
    for every matrix of the batch."""
    col = torch.linalg.vector_norm(A, dim=-2).argmax(-1)
    y = torch.gather(A, -1, col[..., None, None].expand(A.shape[:-1] + (1,)))[..., 0]
    y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    z = seeded_normal(A.shape[-1:], seed, A)
    return y + 1e-3 * z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)


def _check_start(y0, A) -> None:
    """InputError unless y0 is None or a real tensor (d,) or (..., d) broadcasting to A's batch, on A's
    device, finite and non-zero in A's dtype (it is converted to that dtype)."""
    if y0 is None:
        return
    if not isinstance(y0, torch.Tensor):
        raise InputError(f"less: y0 must be a torch.Tensor or None, got {type(y0).__name__}")
    if y0.is_complex():
        raise InputError(f"less: y0 must be a real tensor, got dtype {y0.dtype}")
    if y0.device != A.device:
        raise InputError(f"less: y0 is on device {y0.device}, A on {A.device}: move y0 to A's device")
    batch = tuple(A.shape[:-1])
    if not 1 <= y0.ndim <= len(batch) or y0.shape[-1] != batch[-1] or any(
            n not in (1, m) for n, m in zip(y0.shape[::-1], batch[::-1])):
        raise InputError(f"less: y0 must have shape (d,) or (..., d) broadcasting to A's {batch}, got {tuple(y0.shape)}")
    if _xp.is_traced(y0) or y0.numel() == 0:
        return
    top = y0.detach().to(A.dtype).abs().amax(-1)              # not ‖y0‖, which under-/overflows at 1e∓200
    if not bool((torch.isfinite(top) & (top > 0)).all()):
        raise InputError(f"less: y0 must be finite and non-zero in {A.dtype} (a start vector's largest |entry| is "
                         f"{float(top[~(torch.isfinite(top) & (top > 0))].flatten()[0])})")


def less_forward(A, y0=None, max_iter=5000, tol=None, seed=0):
    """(y, λ, saved): the pair, and what ``principal_backward`` takes before its cotangents (k = 1)."""
    A, s = scaled_sym(A)                              # ‖A‖_F and its residuals stay in range
    scale = s[..., 0, 0]
    d = A.shape[-1]
    eps = torch.finfo(A.dtype).eps
    tol = 16 * eps if tol is None else tol
    normA = torch.linalg.matrix_norm(A)
    if y0 is None:
        y = _start(A, seed)
    else:                                             # max|y| = 1 first: ‖y0‖ may under- or overflow
        y = y0.to(A.dtype).expand(A.shape[:-1])
        y = y / y.abs().amax(-1, keepdim=True)
    y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    mv = lambda z: (A @ z[..., None])[..., 0]
    dot = lambda u, v: (u * v).sum(-1)

    def rayleigh(z):  # (zᵀAz, Az − (zᵀAz) z) of unit z
        Az = mv(z)
        a = dot(z, Az)
        return a, Az - a[..., None] * z

    best_y, best_gn = y, torch.full_like(normA, float("inf"))
    for _ in range(max_iter):
        a, g = rayleigh(y)                          # r = −2g
        gn = torch.linalg.vector_norm(g, dim=-1)
        better = gn < best_gn
        best_y, best_gn = torch.where(better[..., None], y, best_y), torch.where(better, gn, best_gn)
        active = 2 * gn > tol * normA
        if not bool(active.any()):
            break
        q = g / gn[..., None]
        # top eigenvector (cos θ, sin θ) of [[a, b], [b, c]] = [y, q]ᵀ A [y, q]: 2θ = atan2(2b, a − c)
        theta = torch.atan2(2 * gn, a - dot(q, mv(q))) / 2
        z = torch.cos(theta)[..., None] * y + torch.sin(theta)[..., None] * q
        z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
        y = torch.where(active[..., None], z, y)
    fail = failure_tol(tol, d, A.dtype)
    # at the rounding floor the iterates jitter (each step a rotation by a rounding-sized angle): where
    # the last one lies above the floor, the best one seen is the result (it was there, so it converged)
    lam, r = rayleigh(y)
    above = 2 * torch.linalg.vector_norm(r, dim=-1) > fail * normA
    if bool(above.any()):
        y = torch.where(above[..., None], best_y, y)
        lam, r = rayleigh(y)
    res = torch.linalg.vector_norm(r, dim=-1)
    if bool((2 * res > fail * normA).any()):
        rel = 2 * res / normA.clamp_min(torch.finfo(A.dtype).tiny)
        raise not_converged("less", rel, fail, max_iter, "the top eigenvalues are probably too close for "
                            "steepest descent (use ied, or a larger max_iter / tol)")
    _check_principal(A, y, lam, res, normA, d, eps, scale)
    Y = fix_sign(y[..., None])
    return Y[..., 0], lam * scale, (A, s, Y, lam[..., None], normA)


def _check_principal(A, y, lam, res, normA, d, eps, scale):
    """EigensolverError unless no eigenvalue of A exceeds λ + m (module docstring)."""
    tiny = torch.finfo(A.dtype).tiny
    m = (res + 16 * d * eps * normA).clamp_min(tiny)
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    B = (lam + m)[..., None, None] * eye - A + normA.clamp_min(tiny)[..., None, None] * (y[..., :, None] * y[..., None, :])
    info = torch.linalg.cholesky_ex(B).info
    if bool((info != 0).any()):
        raise EigensolverError(f"less: converged to an eigenvector that is not the principal one (λ = "
                               f"{float((lam * scale)[info != 0].flatten()[0]):.6g}; A has a larger eigenvalue) in "
                               f"{int((info != 0).sum())} of {info.numel()} matrices; try another y0 or seed")


class _LESS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, y0, max_iter, tol, seed):
        y, lam, saved = less_forward(A, y0, max_iter, tol, seed)
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)         # an unused output's cotangent is None: no solve for it
        return y, lam

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glam):
        gA = principal_backward(*ctx.saved_tensors, None if gy is None else gy[..., None],
                                None if glam is None else glam[..., None], fn="less")
        return gA, None, None, None, None


def less(A: torch.Tensor, y0: torch.Tensor | None = None, max_iter: int = 5000, tol: float | None = None,
         seed: int = 0):
    """Principal eigenvector y (..., d) and eigenvalue λ = yᵀAy (...) of symmetric A (..., d, d).

    ``y0``: start vector, a real tensor (d,) or (..., d) on A's device, converted to A's dtype (default:
    module docstring; ``seed``, an integer in [0, 2⁶⁴), seeds its nudge). ``tol``: stop at
    ‖(I − yyᵀ) A y‖ ≤ tol·‖A‖_F/2, tol in (0, 1) (default 16 eps). Raises EigensolverError if that is not reached
    or y is not the principal vector.
    """
    check_matrix(A, "less", symmetric=True)
    check_iterations(max_iter, "less")
    check_tol(tol, "less")
    check_seed(seed, "less")
    _check_start(y0, A)
    return _LESS.apply(A, y0, max_iter, tol, seed)
