"""IED — implicit eigen decomposition (Xu, Wang, Liu & Gould, principal matrix features via deep
declarative networks, "PMaF"): the top-k eigenvectors of symmetric A as the solution of a
declarative problem, forward by any solver, backward by the implicit function theorem.

Backward (bi-level / DDN result of Gould, Hartley & Campbell, "Deep Declarative Networks",
TPAMI 2021, eigenvector example; derived here). y = argmax_{‖y‖=1} yᵀAy has the optimality
conditions (A − λI) y = 0, yᵀy = 1 with λ = yᵀAy. Differentiating: (dA − dλ I) y + (A − λI) dy = 0
and yᵀdy = 0, dλ = yᵀ dA y, hence dy = (λI − A)⁺ dA y (the pseudo-inverse lives on y⊥), and

    ∂L/∂A = sym(v yᵀ) + (∂L/∂λ) y yᵀ,   v = (λI − A)⁺ (I − y yᵀ) ∂L/∂y = −(A − λI)⁺ (I − yyᵀ) ∂L/∂y.

Structure: B = λI − A + c yyᵀ (c > 0) maps y ↦ c y and y⊥ onto itself, equal to λI − A there, so
v = B⁻¹ (I − yyᵀ) ∂L/∂y — one linear solve, no eigendecomposition. For the principal vector B is
symmetric positive definite (Cholesky for d ≥ 64, LU below); for the i-th of k vectors B_i = λ_i I − A + c y_i y_iᵀ is
indefinite but nonsingular when λ_i is simple (LU). Needs simple eigenvalues λ_1 > … > λ_k > λ_{k+1}.

Forward solvers: ``"eigh"`` (LAPACK, then the top k) or ``"power"`` (orthogonal subspace
iteration + Rayleigh–Ritz, on A divided by a power of two near max|A| as LESS does, from a seeded
random d × k start shared by every matrix of a batch, so a result does not depend on the matrix's
place in the batch; finds the k eigenvalues of largest *magnitude* — the principal ones for PSD
inputs such as covariances). It stops when the Ritz
residual ‖AY − YH‖_F ≤ tol·‖A‖_F and raises :class:`~stabkit.errors.EigensolverError` if that is not
reached in ``max_iter`` steps, unless the residual is within the rounding floor d·eps·‖A‖_F (there
it jitters from step to step: where the last iterate lies above the floor, the best one seen). Its
error shrinks like (1 − g)^t with g = 1 − |λ_{k+1}/λ_k| the relative gap in magnitude (Golub & Van
Loan, "Matrix Computations", 4th ed., §8.2.4), so the default ``max_iter`` is the step count that
takes the error from 1 to ``tol`` at g = ``MIN_GAP`` (:func:`default_max_iter`). A smaller gap can
exhaust it and raise; λ_k = −λ_{k+1} always does (no convergence: the iterate turns inside the ±λ
plane and its Rayleigh quotient is no eigenvalue). An exact
positive tie λ_k = λ_{k+1} is no error of the forward: the iterate converges (at the rate of the next
gap) to a seed-dependent vector of the tied eigenspace, which is an eigenvector; the backward,
which assumes simple eigenvalues, then solves with a matrix singular up to rounding and returns
entries of order 1/eps (no derivative exists there); where that matrix is exactly singular (a tie
held exactly with exact eigenvectors, as ``solver="eigh"`` returns for a diagonal A with a repeated top
eigenvalue, or A = 0) it raises :class:`~stabkit.errors.EigensolverError` (so does LESS's backward).
The power solver's vector lies off such a tie's basis vectors by rounding (diag(3, 3, 1): entries up
to 2e-15 off), so there its backward returns the 1/eps-sized entries (5.6e14) instead. A loss of λ alone solves
nothing: its gradient is Σ ∂L/∂λ_i y_i y_iᵀ (at a tie, with the returned vectors).
Signs: each vector's largest-magnitude entry is made positive.

First derivatives only (``once_differentiable``): the backward uses the forward's Y and λ as
constants, so differentiating it again would be wrong.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .. import _xp
from ..errors import EigensolverError, InputError
from ..validation import is_integer
from ._checks import check_iterations, check_matrix, check_seed, check_tol, failure_tol, not_converged


#: The smallest relative gap 1 − |λ_{k+1}/λ_k| the power solver's default budget is sized for. Sample
#: covariances have small top gaps: for Wishart XᵀX/n, X 64 × 32 standard normal, the gap is below
#: 0.034 (what 1000 steps resolve in float64) in about one draw in 10 and below 0.01 in about one
#: in 100. At 1e-3 the budget is ≈ 34k steps at float64's default tol, ≈ 14k at float32's.
MIN_GAP = 1e-3


def default_max_iter(tol: float) -> int:
    """Power-iteration steps t with (1 − MIN_GAP)^t ≤ tol: the error, 1 at the start, reaches ``tol``."""
    return max(1, math.ceil(math.log(tol) / math.log1p(-MIN_GAP)))


def _T(x):
    return x.transpose(-1, -2)


def fix_sign(Y: torch.Tensor) -> torch.Tensor:
    """Flip each column of Y (..., d, k) so its largest-magnitude entry is positive."""
    idx = Y.abs().argmax(-2, keepdim=True)
    s = torch.sign(torch.gather(Y, -2, idx))
    return Y * torch.where(s == 0, torch.ones_like(s), s)


def pow2_scale(A: torch.Tensor) -> torch.Tensor:
    """2^(e−1) ≤ max|A| < 2^e over the last two axes, shape (..., 1, 1) (1 where A = 0). Dividing by it is
    exact, and torch's ‖·‖_F (an unscaled sum of squares) then neither overflows nor underflows, as it
    does on A itself for entries beyond about 1e±154 (float64) or 1e±19 (float32)."""
    amax = A.abs().amax((-2, -1), keepdim=True)
    m, _ = torch.frexp(amax)                                     # amax = m·2^e, m ∈ [0.5, 1)
    return torch.where(m > 0, amax / (2 * m), torch.ones_like(amax))


def scaled_sym(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sym(A / s), s), s = :func:`pow2_scale` (A): the symmetric part in a scale where (A + Aᵀ)/2 cannot
    overflow and ‖·‖_F neither overflows nor underflows; times s it is (A + Aᵀ)/2 exactly."""
    s = pow2_scale(A)
    return _xp.sym(A / s), s


def principal_backward(As, s, Y, lam_s, normAs, gY, glam, fn="ied"):
    """∂L/∂A for Y (..., d, k) top eigenvectors (descending λ) of A by one solve per vector, from what
    the forward has in A's scale s (:func:`scaled_sym`): As = A/s, λ/s and ‖A/s‖_F. Solving with B/s
    and dividing by s equals solving with B wherever B neither over- nor underflows (bitwise with LU;
    Cholesky rounds √s), and stays finite where B would overflow (entries near the dtype's maximum:
    c = ‖A‖_F or λ − A_ii). EigensolverError where a B_i is exactly singular (λ_i repeated exactly:
    no derivative)."""
    d, k = Y.shape[-2], Y.shape[-1]
    eye = torch.eye(d, dtype=As.dtype, device=As.device)
    gA = torch.zeros_like(As)
    if glam is not None:
        gA = gA + (Y * glam[..., None, :]) @ _T(Y)
    if gY is None:
        return gA
    c = normAs.clamp_min(torch.finfo(As.dtype).tiny)[..., None, None, None]   # c/s, > 0 also at A = 0
    Yc = _T(Y)[..., :, :, None]                                  # (..., k, d, 1)
    B = lam_s[..., :, None, None] * eye - As[..., None, :, :] + c * (Yc @ _T(Yc))   # B/s
    r = _T(gY)[..., :, :, None]
    r = r - Yc * (_T(Yc) @ r)                                    # (I − y yᵀ) ∂L/∂y
    if k == 1 and d >= 64:
        # SPD: Cholesky. Below d = 64 LU is as fast and avoids torch's multithreaded tril inside
        # cholesky, which costs milliseconds on a loaded machine.
        Lc, info = torch.linalg.cholesky_ex(B)
        if bool((info == 0).all()):
            v = torch.cholesky_solve(r, Lc)
        else:
            v = _solve(B, r, fn)
    else:
        v = _solve(B, r, fn)
    V = _T(v[..., 0]) / s                                        # (..., d, k); v of B/s, over s
    G = V @ _T(Y)
    return gA + (G + _T(G)) / 2


def _solve(B, r, fn):
    v, info = torch.linalg.solve_ex(B, r)
    if bool((info != 0).any()):
        raise EigensolverError(f"{fn} backward: λI − A + c yyᵀ is singular in {int((info != 0).sum())} of {info.numel()} "
                               f"solves: a returned eigenvalue is repeated exactly in A, where the eigenvector "
                               f"has no derivative")
    return v


def seeded_normal(shape, seed: int, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers of ``shape`` from a CPU generator seeded with ``seed`` (the same on
    every device), in ``like``'s dtype and device."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=like.dtype, device=like.device)


def _power(A, k, max_iter, tol, seed, scale):
    """Top-|λ| pairs of the scaled A, ‖A‖_F = ``scale``."""
    d = A.shape[-1]
    Y, _ = torch.linalg.qr(seeded_normal((d, k), seed, A))    # one start per seed, shared by the batch
    Y = Y.expand(A.shape[:-2] + (d, k))
    best_Y, best_res = Y, torch.full_like(scale, float("inf"))
    for _ in range(max_iter):
        Y, _ = torch.linalg.qr(A @ Y)
        # convergence: residual of the Rayleigh–Ritz pairs
        H = _T(Y) @ A @ Y
        res = torch.linalg.matrix_norm(A @ Y - Y @ H)
        better = res < best_res
        best_Y, best_res = torch.where(better[..., None, None], Y, best_Y), torch.where(better, res, best_res)
        if bool((res <= tol * scale).all()):
            break
    else:
        fail = failure_tol(tol, d, A.dtype)
        # at the rounding floor the residual jitters from step to step (seen up to 0.6 of d·eps·‖A‖_F at
        # d = 5): where the last iterate lies above the floor, the best one seen is the result
        above = res > fail * scale
        Y, res = torch.where(above[..., None, None], best_Y, Y), torch.where(above, best_res, res)
        rel = res / scale.clamp_min(torch.finfo(A.dtype).tiny)
        if bool((rel > fail).any()):
            raise not_converged("ied(solver='power')", rel, fail, max_iter, "the k-th and (k+1)-th eigenvalues "
                                f"are probably too close in magnitude for this budget (the default at this tol, "
                                f"{default_max_iter(tol)} steps, resolves a relative gap of {MIN_GAP:g}); use "
                                "solver='eigh', or a larger max_iter")
    H = _T(Y) @ A @ Y
    mu, W = torch.linalg.eigh((H + _T(H)) / 2)
    order = torch.argsort(mu.abs(), dim=-1, descending=True)
    mu = torch.gather(mu, -1, order)
    W = torch.gather(W, -1, order[..., None, :].expand(W.shape))
    return mu, Y @ W


def ied_forward(A, k=1, solver="eigh", max_iter=None, tol=None, seed=0):
    """(Y, λ, saved): the pairs, and what :func:`principal_backward` takes before its cotangents."""
    As, s = scaled_sym(A)
    normAs = torch.linalg.matrix_norm(As)
    if solver == "eigh":
        lam, U = torch.linalg.eigh(As * s)                      # (A + Aᵀ)/2, exactly, without overflow
        lam, Y = lam[..., -k:].flip(-1), U[..., -k:].flip(-1)
        lam_s = lam / s[..., 0]
    else:  # "power" (ied() checked the name)
        tol = 8 * torch.finfo(A.dtype).eps if tol is None else tol
        lam_s, Y = _power(As, k, default_max_iter(tol) if max_iter is None else max_iter, tol, seed, normAs)
        lam = lam_s * s[..., 0]
    Y = fix_sign(Y)
    return Y, lam, (As, s, Y, lam_s, normAs)


class _IED(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, k, solver, max_iter, tol, seed):
        Y, lam, saved = ied_forward(A, k, solver, max_iter, tol, seed)
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)         # an unused output's cotangent is None: no solve for it
        return Y, lam

    @staticmethod
    @once_differentiable
    def backward(ctx, gY, glam):
        return principal_backward(*ctx.saved_tensors, gY, glam), None, None, None, None, None


def ied(A: torch.Tensor, k: int = 1, solver: str = "eigh", max_iter: int | None = None, tol: float | None = None,
        seed: int = 0):
    """Top-k eigenvectors Y (..., d, k) and eigenvalues (..., k), descending, of symmetric A.

    ``solver``: ``"eigh"`` or ``"power"``. The power solver's k are those of largest *magnitude*, in
    descending magnitude (the top k, descending, for PSD A; for A = diag(−5, 1, 3), k = 2: λ = (−5, 3)).
    Its ``tol`` (default 8 eps) is a number in (0, 1); ``max_iter`` (default None: the budget of
    :func:`default_max_iter`, module docstring) a positive integer.
    """
    check_matrix(A, "ied", symmetric=True)
    if max_iter is not None:
        check_iterations(max_iter, "ied")
    check_tol(tol, "ied")
    check_seed(seed, "ied")
    if not isinstance(solver, str) or solver not in ("eigh", "power"):
        raise InputError(f"ied: solver must be 'eigh' or 'power', got {solver!r}")
    if not is_integer(k, 1, A.shape[-1]):
        raise InputError(f"ied: k must be an integer with 1 ≤ k ≤ d = {A.shape[-1]}, got k={k!r}")
    return _IED.apply(A, int(k), solver, max_iter, tol, seed)
