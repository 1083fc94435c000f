"""``stabkit.torch``: ``torch.linalg.eigh / eigvalsh / svd / svdvals`` with a chosen backward.

Drop-ins for the ``torch.linalg`` functions of the same names — same positional arguments
(``UPLO``, ``full_matrices``, ``driver``), same return types (``torch.return_types.linalg_eigh``,
``linalg_svd``), any batch shape, float32/float64, CPU or CUDA — plus ``method=`` (a
:class:`stabkit.methods.Spec`, or a registry name / spec text, ``stabkit.methods.NAMES``, with the
method's parameters as keywords) and ``check=``:

    lam, U = stabkit.torch.eigh(A, method="taylor", K=9)
    U, S, Vh = stabkit.torch.svd(X, full_matrices=False, method="clip", tau=100)
    spec = stabkit.methods.spec("taylor:K=9"); lam, U = stabkit.torch.eigh(A, method=spec)

Text and keywords are turned into a Spec once, at the top of the call; a Spec passes through as
is (keywords given with it change its parameters) and travels into the autograd Function.

The backward is the registry method's formula, the very code the numpy path runs. For the SVD
X = U diag(σ) Vᵀ the rule is Ionescu, Vantzos & Sminchisescu (ICCV 2015), Prop. 1, with the
method's kernel F(σ²) in place of 1/(σ_j² − σ_i²) (the papers' rules applied to σ² gaps) and the
D term for the part of ∂L/∂U (∂L/∂V) outside span(U) (span(V)) when m ≠ n — the formula torch's
own SVD backward uses. A native method (``Method.native``: ``torch``) is torch.linalg itself.

Works under ``torch.func`` (vmap, grad, jacrev, jacfwd, hessian), ``torch.compile(fullgraph=True)``
(no numpy on the torch path) and plain autograd. Forward mode (jvp) is the transpose of the
backward rule; a rule without a kernel (power iteration, ``analytic-trunc``) has none and says so
(UnsupportedDerivativeError; use reverse mode).

**Exact ties** (λ_i = λ_j bitwise, where the analytic F is ∞). The kernel multiplies the projected
gradient Uᵀ∂L/∂U (and the tangent Uᵀ dA U in forward mode) through ``_xp.kernel_product``: an entry
that is exactly 0 at a tie contributes 0, not ∞ · 0 = NaN. So a loss of λ (σ) alone, a U whose
cotangent arrives as zeros (``torch.compile`` materializes it), or a used U with exactly zero
projected gradient at an exact tie (a loss of the untied columns only) gives the finite, exact
gradient; torch's own gives NaN there. A nonzero projected entry at a tie is still ±∞ for the
analytic rule (the derivative does not exist); a bounded method (``Method.bounded``) is finite
there — ``taylor`` and ``taylor-authors`` only where λ + ε > 0: at two eigenvalues exactly −ε (with
the default ε = 0, two zero eigenvalues) their F is ±∞ too (a loss of λ alone still gets the exact gradient).

**Second derivatives** (double backward, Hessian-vector products). When the backward is itself
differentiated it rebuilds the decomposition from A with exactly differentiable ops and applies
the method's rule to it, so the op's double backward is the exact derivative of the method's
rule A, (∂L/∂λ, ∂L/∂U) ↦ ∂L/∂A — ``gradgradcheck`` holds for every method away from exact ties.
At an exact tie (λ_i = λ_j bitwise, e.g. X = I) second derivatives are NaN for every method, even
for a loss of λ alone (the Hessian of Σ log λ at I) and for bounded kernels: the rebuilt
decomposition's own derivative divides by λ_j − λ_i, as torch's eigh double backward does (NaN
there too); the Daleckii–Krein layers (``stabkit.layers.matrix_functions``) have finite second
derivatives of a spectral function there. Through a loss that
is nonlinear in U, autograd differentiates ∂L/∂U(U(A)) with the op's own (the method's) rule
again, so for an approximate rule (taylor, clip when it clips, pi) a Hessian carries the method's
approximation error, of the order of its first-order error, and is not symmetric; for the exact
rules it is the exact Hessian. Near-degenerate (not exactly tied) spectra make second derivatives large for every
method, bounded kernels included: a bounded first derivative does not bound its own derivative.

**Input contract** (``check=True``, the default): a ValueError (``stabkit.errors.InputError``)
naming the problem for a
non-tensor, a sparse tensor, a non-float dtype, a non-square (eigh) or empty input, NaN or ±Inf entries, and (eigh,
eigvalsh) a matrix that is not symmetric within max|A − Aᵀ| ≤ √eps·max|A| (eps of the dtype; both
maxima over that matrix alone, not the batch, and the message names its batch index).
The check costs a few reductions and one device→host sync; ``check=False`` skips it (inside layers
that symmetrize their input). Under ``torch.compile`` and ``torch.func`` transforms the value
checks are skipped (tensor values cannot steer Python there), as for a meta tensor (no values);
dtype and shape are always checked.
``out=`` is refused with a ValueError (InputError).
"""

from __future__ import annotations

import torch

from . import _xp, methods
from ._autograd import compile_safe, differentiating_backward, eigh_for_backward, rebuilt_svd, tangent_op
from .errors import InputError, UnsupportedDerivativeError
from .methods import DEFAULT, NAMES, Spec
from .validation import symmetry_rtol

SVD_METHODS = tuple(n for n in NAMES if methods.get(n).has_svd_rule)


def EighResult(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor):
    """``torch.return_types.linalg_eigh`` — the type ``torch.linalg.eigh`` returns."""
    return torch.return_types.linalg_eigh((eigenvalues, eigenvectors))


def SVDResult(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor):
    """``torch.return_types.linalg_svd`` — the type ``torch.linalg.svd`` returns."""
    return torch.return_types.linalg_svd((U, S, Vh))


# ---------------------------------------------------------------- input contract

def _check_tensor(A, fn: str, square: bool, out) -> None:
    if out is not None:
        raise InputError(f"{fn}: out= is not supported (assign the result instead)")
    if not isinstance(A, torch.Tensor):
        raise InputError(f"{fn}: expected a torch.Tensor, got {type(A).__name__}")
    if A.layout != torch.strided:  # a sparse one failed deep inside ("Could not run 'aten::ne.Scalar'")
        raise InputError(f"{fn}: expected a dense tensor, got layout {A.layout}: use A.to_dense()")
    if A.dtype not in (torch.float32, torch.float64):
        raise InputError(f"{fn}: unsupported dtype {A.dtype}: use float32 or float64")
    if A.ndim < 2 or A.shape[-1] == 0 or A.shape[-2] == 0 or (square and A.shape[-1] != A.shape[-2]):
        kind = "non-empty square matrices (..., d, d)" if square else "non-empty matrices (..., m, n)"
        raise InputError(f"{fn}: expected a batch of {kind}, got shape {tuple(A.shape)}")


def check_values(A: torch.Tensor, fn: str = "eigh", symmetric: bool = True,
                 advice: str = "symmetrize it (stabkit.torch.symmetrize) or pass check=False") -> None:
    """InputError (a ValueError) if A holds NaN/Inf or (``symmetric``) a matrix of the batch has
    max|A − Aᵀ| > √eps·max(max|A|, tiny) (both over that matrix, tiny the dtype's smallest normal number,
    as in :func:`stabkit.validation.check_symmetric`); either message names the first bad matrix's
    batch index;
    ``advice`` ends the non-symmetric message (a caller without ``check=`` gives its own).

    Skipped under torch.compile and torch.func transforms (see the module docstring), and for a meta
    tensor (shapes without values, as deferred initialisation passes; torch.linalg takes them).
    """
    if _xp.is_traced(A) or A.numel() == 0 or A.is_meta:  # an empty batch or a meta tensor holds no value to check
        return
    A = A.detach()
    rtol = symmetry_rtol(_xp.finfo_eps(A.dtype))
    stats = [(~torch.isfinite(A)).any()]
    if symmetric:  # each matrix against its own max|A|: a large one beside it must not widen its tolerance
        asym, tol = (A - A.mT).abs().amax((-2, -1)), rtol * A.abs().amax((-2, -1)).clamp_min(torch.finfo(A.dtype).tiny)
        stats.append((asym > tol).any())
    values = torch.stack(stats).tolist()  # one device→host sync
    if values[0]:
        n_nan, n_inf = int(torch.isnan(A).sum()), int(torch.isinf(A).sum())
        what = ", ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "Inf")) if n)
        where = ""
        if A.ndim > 2:  # which matrix of the batch, as the non-symmetric message says
            first = torch.nonzero((~torch.isfinite(A)).flatten(-2).any(-1))[0].tolist()
            where = f", the first in batch index {first}"
        raise InputError(f"{fn}: input has non-finite entries ({what} of {A.numel()}){where}")
    if symmetric and values[1]:
        first = tuple(int(i) for i in torch.nonzero(asym > tol)[0])  # the failure path: more syncs are fine
        where = f" (batch index {list(first)})" if first else ""
        raise InputError(f"{fn}: input{where} is not symmetric: max|A − Aᵀ| = {float(asym[first]):.3g} > "
                         f"{float(tol[first]):.3g} (√eps·max|A| of that matrix); {advice}")


def _split_method(UPLO, method, fn: str):
    """(UPLO, method), also accepting the older call ``eigh(A, "taylor")`` (method second: a
    registry name, spec text or a Spec)."""
    if isinstance(UPLO, str) and UPLO.upper() in ("L", "U"):
        return UPLO.upper(), method
    second = isinstance(UPLO, Spec) or (isinstance(UPLO, str) and UPLO.partition(":")[0] in NAMES)
    if second and isinstance(method, str) and method == DEFAULT:
        return "L", UPLO
    raise InputError(f"{fn}: UPLO must be 'L' or 'U', got {UPLO!r}")


def _spec_of(method, params: dict) -> Spec:
    """The call's one conversion: a Spec as is (keyword parameters replace its own), text or a
    name with keyword parameters bound and validated (MethodSpecError otherwise)."""
    spec = methods.spec(method)
    return spec.replace(**params) if params else spec


# ---------------------------------------------------------------- eigh

class _Eigh(torch.autograd.Function):
    """(λ, U) = method.forward(A); backward = method.backward, on factors recomputed from A when the
    backward is itself differentiated, so the second derivative differentiates the rule itself."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, spec):
        lam, U, _ = spec.forward(A)
        return lam, U

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, spec = inputs
        ctx.save_for_backward(A, *output)
        ctx.save_for_forward(*output)
        ctx.spec = spec

    @staticmethod
    def backward(ctx, glam, gU):
        A, lam, U = ctx.saved_tensors
        spec = ctx.spec
        if spec.method.exact_state:  # the rule needs only the exact (λ, U)
            lam, U = eigh_for_backward(A, lam, U)
            state = {"U": U, "lam": lam}
        else:  # power iteration: its state (iterates, norms) is rebuilt from A
            _, _, state = spec.forward(A)
        return spec.backward(state, gU, glam), None


class _EighJvp(_Eigh):
    """_Eigh with forward mode (torch.func.jvp / jacfwd / hessian). Dynamo cannot trace a custom
    jvp, so under torch.compile the plain _Eigh is used."""

    @staticmethod
    def jvp(ctx, dA, _spec):
        """Forward mode, the transpose of the backward rule: with M = Uᵀ sym(dA) U,
        dλ = diag(M), dU = U (F ∘ M) (exact for the analytic F)."""
        lam, U = ctx.saved_tensors
        if ctx.spec.method.kernel is None:
            raise UnsupportedDerivativeError(
                f"stabkit.torch.eigh(method={ctx.spec.name!r}): forward-mode AD (torch.func.jvp, jacfwd, hessian) is "
                "implemented only for rules given by a kernel F(λ); use reverse mode, e.g. "
                "torch.func.jacrev(torch.func.jacrev(f)) for a Hessian")
        return tangent_op(_eigh_tangent, "stabkit.torch.eigh", lam, U, dA, ctx.spec)


def _eigh_tangent(lam, U, dA, spec):
    M = U.mT @ _xp.sym(dA) @ U
    return _xp.diagonal(M), U @ _xp.kernel_product(spec.kernel(lam), M)


def eigh(A: torch.Tensor, UPLO: str = "L", *, out=None, method: str | Spec = DEFAULT, check: bool = True, **params):
    """``torch.linalg.eigh(A, UPLO)`` (ascending eigenvalues, eigenvectors) whose gradient follows ``method``.

    One exception to "ascending": ``pi-forward`` and ``pi-authors`` (power iteration from random
    starts) return their pairs in ascending |λ|, the order their stages find them in — the same
    for a positive semi-definite A, not for an indefinite one (λ = (−1, 2, 3, −5) for the spectrum
    (−5, −1, 2, 3)).

    ``UPLO``: the triangle an exact forward (LAPACK) reads, as torch's. The power-iteration forwards
    (``pi-forward``, ``pi-authors``, ``pi-legacy``) multiply by the whole matrix, as the authors'
    code does (the ``paper`` preset's PI rows iterate on an unsymmetrised covariance, as theirs):
    they ignore ``UPLO``, so give them a full symmetric A — ``check=True`` refuses one that is not
    symmetric within √eps·max|A|; with ``check=False`` a triangle-only A gives them another matrix.
    ``method``: a Spec, or a registry name / spec text with ``params`` its parameters (e.g. ``K=9``
    for taylor); ``check`` the input contract of the module docstring. ``eigh(A, "taylor")``
    (method second, the older spelling) still works.
    """
    UPLO, spec = _eigh_call(A, UPLO, out, method, check, params, "eigh")
    if spec.method.native:
        return torch.linalg.eigh(A, UPLO=UPLO)
    return EighResult(*compile_safe(_Eigh, _EighJvp).apply(A if UPLO == "L" else A.mT, spec))


def eigvalsh(A: torch.Tensor, UPLO: str = "L", *, out=None, method: str | Spec = DEFAULT, check: bool = True, **params):
    """``torch.linalg.eigvalsh``: the eigenvalues of :func:`eigh` (their gradient U diag(∂L/∂λ) Uᵀ
    is the same for every kernel method, finite at exact ties, zero eigenvalues included; a truncating method such as ``pi``
    gives its dropped pairs none; ``pi-forward`` differentiates its own iteration)."""
    UPLO, spec = _eigh_call(A, UPLO, out, method, check, params, "eigvalsh")
    if spec.method.native:
        return torch.linalg.eigvalsh(A, UPLO=UPLO)
    return compile_safe(_Eigh, _EighJvp).apply(A if UPLO == "L" else A.mT, spec)[0]


def _eigh_call(A, UPLO, out, method, check: bool, params: dict, fn: str) -> tuple[str, Spec]:
    """The checks and the one method conversion of an eigh-like call: (UPLO, Spec)."""
    UPLO, method = _split_method(UPLO, method, fn)
    _check_tensor(A, fn, True, out)
    spec = _spec_of(method, params)
    if check:
        check_values(A, fn)
    return UPLO, spec


def symmetrize(A: torch.Tensor) -> torch.Tensor:
    """(A + Aᵀ)/2 — what a layer should feed to ``eigh`` when A is only symmetric up to rounding."""
    if getattr(A, "ndim", 0) < 2 or A.shape[-1] != A.shape[-2]:  # not an IndexError/RuntimeError from inside
        raise InputError(f"symmetrize: expected square matrices (..., d, d), got {type(A).__name__} {tuple(getattr(A, 'shape', ()))}")
    return _xp.sym(A)


# ---------------------------------------------------------------- svd

def svd_backward(U, S, Vh, gU, gS, gVh, F):
    """∂L/∂X for the thin SVD X = U diag(S) Vh (U: m×k, Vh: k×n, k = min(m, n)).

    Ionescu et al., ICCV 2015, Prop. 1, written as torch writes it, with F_ij ≈ 1/(σ_j² − σ_i²):

        ∂L/∂X = U [ diag(∂L/∂σ) + (F ∘ skew(Uᵀ∂L/∂U)) Σ + Σ (F ∘ skew(Vᵀ∂L/∂V)) ] Vᵀ
                + (I − UUᵀ) ∂L/∂U Σ⁻¹ Vᵀ + U Σ⁻¹ (∂L/∂V)ᵀ (I − VVᵀ),   skew(M) = M − Mᵀ.

    The last two terms are the D term (zero when m = n), with Σ⁺ (:func:`pinv_diag`) for Σ⁻¹; the
    exact F is the analytic method's. F multiplies through ``_xp.kernel_product``: an exactly zero
    entry of skew(·) at a tie (an unused factor, whose cotangent is zeros) contributes 0, not ∞ · 0.
    """
    m, n = U.shape[-2], Vh.shape[-1]
    J = U.mT @ gU
    P = Vh @ gVh.mT  # Vᵀ ∂L/∂V with V = Vhᵀ, ∂L/∂V = gVhᵀ
    inner = (torch.diag_embed(gS) + _xp.kernel_product(F, J - J.mT) * S[..., None, :]
             + S[..., :, None] * _xp.kernel_product(F, P - P.mT))
    gX = U @ inner @ Vh
    if m > S.shape[-1]:
        gX = gX + ((gU - U @ J) * pinv_diag(S)[..., None, :]) @ Vh
    if n > S.shape[-1]:
        gX = gX + U @ ((gVh - (gVh @ Vh.mT) @ Vh) * pinv_diag(S)[..., :, None])
    return gX


def pinv_diag(S: torch.Tensor) -> torch.Tensor:
    """Σ⁺'s diagonal: 1/σ, and 0 where σ = 0. In the D terms this drops the part of ∂L/∂U (∂L/∂V)
    outside span(U) that belongs to a zero σ: u_i is then any unit vector orthogonal to the others,
    so L has no derivative along it; the result is exact for every L that does not depend on it."""
    zero = S == 0
    return torch.where(zero, torch.zeros_like(S), 1 / torch.where(zero, torch.ones_like(S), S))


class _SVD(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(X, full_matrices, driver, spec):
        U, S, Vh = torch.linalg.svd(X, full_matrices=full_matrices, driver=driver)
        return U, S, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):
        X, full_matrices, driver, spec = inputs
        ctx.save_for_backward(X, *output)
        ctx.save_for_forward(*output)
        ctx.driver, ctx.spec = driver, spec

    @staticmethod
    def backward(ctx, gU, gS, gVh):
        X, U, S, Vh = ctx.saved_tensors
        k = S.shape[-1]
        U, Vh = U[..., :, :k], Vh[..., :k, :]
        if differentiating_backward(X):  # the factors as differentiable functions of X
            U, S, Vh = rebuilt_svd(X, Vh, ctx.driver)
        F = ctx.spec.kernel(S * S)
        return svd_backward(U, S, Vh, gU[..., :, :k], gS, gVh[..., :k, :], F), None, None, None

class _SVDJvp(_SVD):
    """_SVD with forward mode; plain _SVD under torch.compile (no custom jvp in Dynamo)."""

    @staticmethod
    def jvp(ctx, dX, _full, _driver, _spec):
        """Forward mode, the transpose of :func:`svd_backward`: with M = Uᵀ dX V, G = F ∘ (M Σ),
        H = F ∘ (Σ M): dσ = diag(M), dU = U (G − Gᵀ) + (I − UUᵀ) dX V Σ⁺,
        dV = V (H − Hᵀ) + (I − VVᵀ) dXᵀ U Σ⁺; columns beyond min(m, n) get no tangent. Σ⁺ as in
        the backward (0 where σ = 0), so the two stay transposes at a rank-deficient X."""
        U_all, S, Vh_all = ctx.saved_tensors
        return tangent_op(_svd_tangent, "stabkit.torch.svd", U_all, S, Vh_all, dX, ctx.spec)


def _svd_tangent(U_all, S, Vh_all, dX, spec):
    k = S.shape[-1]
    U, Vh = U_all[..., :, :k], Vh_all[..., :k, :]
    V = Vh.mT
    F = spec.kernel(S * S)
    XV, XtU = dX @ V, dX.mT @ U
    M = U.mT @ XV
    G, H = _xp.kernel_product(F, M * S[..., None, :]), _xp.kernel_product(F, S[..., :, None] * M)
    Sp = pinv_diag(S)[..., None, :]
    dU = U @ (G - G.mT) + (XV - U @ M) * Sp
    dV = V @ (H - H.mT) + (XtU - V @ M.mT) * Sp
    pad_u, pad_v = U_all.shape[-1] - k, Vh_all.shape[-2] - k
    if pad_u:
        dU = torch.cat([dU, torch.zeros_like(U_all[..., :, k:])], -1)
    dVh = dV.mT
    if pad_v:
        dVh = torch.cat([dVh, torch.zeros_like(Vh_all[..., k:, :])], -2)
    return dU, _xp.diagonal(M), dVh


def _svd_spec(method, params: dict, fn: str) -> Spec:
    """:func:`_spec_of` for the SVD: the method must have an SVD rule (``Method.has_svd_rule``)."""
    spec = _spec_of(method, params)
    if not spec.method.has_svd_rule:
        raise methods.MethodSpecError(f"{fn}: method {spec.name!r} has no SVD rule; choose one of {', '.join(SVD_METHODS)}")
    return spec


def svd(A: torch.Tensor, full_matrices: bool = True, *, driver=None, out=None, method: str | Spec = DEFAULT,
        check: bool = True, **params):
    """``torch.linalg.svd(A, full_matrices)`` → (U, S, Vh) whose gradient follows ``method``.

    A is any real (..., m, n). As in torch, with ``full_matrices=True`` the gradient ignores the
    columns of U and rows of Vh beyond min(m, n) (they are an arbitrary basis).
    """
    _check_tensor(A, "svd", False, out)
    if not isinstance(full_matrices, bool):  # bool("taylor") is True: refused, as by torch.linalg.svd
        raise InputError(f"svd: full_matrices must be True or False, got {full_matrices!r} (a method goes in method=)")
    spec = _svd_spec(method, params, "svd")
    if check:
        check_values(A, "svd", symmetric=False)
    if spec.method.native:
        return torch.linalg.svd(A, full_matrices=full_matrices, driver=driver)
    return SVDResult(*compile_safe(_SVD, _SVDJvp).apply(A, full_matrices, driver, spec))


def svdvals(A: torch.Tensor, *, driver=None, out=None, method: str | Spec = DEFAULT, check: bool = True, **params):
    """``torch.linalg.svdvals``: singular values, descending (gradient U diag(∂L/∂σ) Vᵀ)."""
    _check_tensor(A, "svdvals", False, out)
    spec = _svd_spec(method, params, "svdvals")
    if check:
        check_values(A, "svdvals", symmetric=False)
    if spec.method.native:
        return torch.linalg.svdvals(A, driver=driver)
    return compile_safe(_SVD, _SVDJvp).apply(A, False, driver, spec)[1]


def eigh_kept(A: torch.Tensor, method: str | Spec = DEFAULT, *, check: bool = True, **params):
    """(eigenvalues, eigenvectors, kept) — :func:`eigh` plus the bool mask (..., d) of the
    eigenpairs the method keeps (``pi`` drops pairs by SVD-PI's breaking conditions; for most
    methods it is all True). A layer computing f(A) should use U diag(kept·f(λ)) Uᵀ: that is the
    function the method's backward differentiates (Wang et al., NeurIPS 2019, Alg. 1). The mask is
    the method's own rule (``Method.kept_of``) applied to the eigenvalues its forward returned."""
    spec = _spec_of(method, params)
    lam, U = eigh(A, method=spec, check=check)
    with torch.no_grad():
        kept = spec.kept_of(lam.detach())
    return lam, U, kept
