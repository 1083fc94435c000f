"""Matrix-function layers of Ionescu, Vantzos & Sminchisescu (ICCV 2015), Props. 3 and 4.

* SVD route (Prop. 3): F ∈ ℝ^{n×d}, F = U Σ Vᵀ, C = V g(ΣᵀΣ + εI) Vᵀ. The backward is Prop. 3's
  ∂L/∂V = 2 (∂L/∂C)_sym V g(ΣᵀΣ + εI), ∂L/∂Σ = 2 Σ g'(ΣᵀΣ + εI) (Vᵀ (∂L/∂C)_sym V)_diag, fed to
  Prop. 1 (:mod:`.svd`) — torch autograd of these few products produces exactly those two
  expressions, so the layer composes them on top of the Prop. 1 SVD layer. C is smooth in F where σ
  repeat, this backward is not: a tie of nonzero σ² drops the pair's term (K_ij = 0; F = diag(2, 1, 1)
  on zero rows: 16–22 % off in norm for √, log, x^0.3), a near-tie cancels (below); ``svd-dk`` is exact.
  If n < d the thin V spans only the row space; we use C = V (g(σ² + ε) − g(ε)) Vᵀ + g(ε) I
  (the same matrix), whose V-gradient runs through Prop. 1's D term (needs σ > 0).
* EIG route (Prop. 4): symmetric A = U Λ Uᵀ, C = U g(Λ + εI) Uᵀ with ∂L/∂U = 2 (∂L/∂C)_sym U g,
  ∂L/∂Λ = g'(Λ + εI) (Uᵀ ∂L/∂C U)_diag, fed to Prop. 2 through :func:`stabkit.torch.eigh` — so any
  registry method can replace the analytic backward (``method=``).

g ∈ {``log``, ``sqrt``, ``power`` (x^p)}. DeepO2P (Corollary 1) is g = log of FᵀF + εI:
:func:`o2p` with ``route="svd"`` or ``route="eig"``.

Extension (not in the paper), ``route="svd-dk"``: the SVD forward with the Daleckii–Krein backward
∂L/∂F = 2 F V (D ∘ Vᵀ (∂L/∂C)_sym V) Vᵀ, D_ij = (g(μ_i) − g(μ_j))/(μ_i − μ_j), D_ii = g'(μ_i),
μ = σ² + ε (full V, σ padded with zeros; Higham, "Functions of Matrices", 2008, Thm. 3.11 for the
divided-difference form), evaluated from the thin V (:func:`_thin_frechet`). The divided differences are evaluated without cancellation —
log: log1p(Δ/m)/Δ; sqrt: 1/(√μ_i + √μ_j); x^p: m^p expm1(p log1p(Δ/m))/Δ, with m = min(μ_i, μ_j)
and Δ = |μ_i − μ_j| = |σ_i − σ_j|(σ_i + σ_j) — so it needs no 1/(σ_i² − σ_j²) and is exact on ties;
at m = 0 (ε = 0, singular FᵀF) it is (g(M) − g(0))/M, M = max(μ_i, μ_j): M^(p−1) for x^p, p > 0,
and infinite for log and p < 0, where g(0) itself is. For x^p, 0 < p < 1, D_ii = g'(0) = ∞ at a σ = 0 (a dead
channel: an all-zero column of F), which F multiplies by that σ; for ½ < p < 1, where C is differentiable, D_ij
between two σ that are zero to within rounding is taken as its limit 0 (:func:`_limit_where_sigma_vanishes`),
so the backward, the tangent and the backward that is itself differentiated (create_graph, ``torch.func.grad``,
``jacrev``; a wide F's: :func:`_row_gram_limit`) are right there; C has no second derivative there (σ^(2p−2)), so a
Hessian there means nothing; for p ≤ ½ (√) C has no derivative there and the result is NaN or meaningless.
Prop. 1's K-form instead cancels two large terms (rounding of Vᵀ∂L/∂V's asymmetry times K). :func:`eig_dk` is the same backward for a
symmetric A (no SVD); :func:`svd_dk` and :func:`eig_dk` are the routes' one decomposition each,
which ``stabkit.monitor.watch`` logs (``stabkit.layers.matrix_functions.svd_dk`` / ``eig_dk``, backward
:data:`DK_BACKWARD`) and never swaps: the backward is the exact Fréchet derivative of g, not an
eigen-backward rule. They decompose with ``torch.ops.aten`` ops, which the monitor does not watch.

Second derivatives of the DK routes: the EIG backward is an op (:class:`.dk_ops.Frechet`) whose own
derivative is the second-order Daleckii–Krein formula with cancellation-free second divided
differences (:mod:`.divided_differences`), exact on ties and near-ties, where differentiating an
eigh is infinite or loses digits; the SVD route uses it at FᵀF + εI for a square or tall F. A wide F's
differentiated backward uses it at the n × n FFᵀ instead (:func:`_row_gram_backward`): g(FᵀF + εI) =
g(ε) I + Fᵀ h(FFᵀ) F, h(x) = g[x + ε, ε] (:mod:`.ridge_divided_differences`; ε = 0: x^(p−1), which needs F
of full row rank for √ and x^p, p < 2), so F never multiplies FᵀF + εI's block g'(ε) on F's null space,
which it annihilates only up to u·|F| (float32 F = 2⁵·randn(3, 5), ε = 1e-3, x^−½: gradient 23 % and
Hessian-vector product 20 % off; float64 4e-10, 9e-10). A third derivative raises UnsupportedDerivativeError.
``torch.func`` vmap/grad/jacrev/jacfwd/hessian work (vmap rules generated). Forward mode is the same
Fréchet derivative (it is self-adjoint): the EIG tangent of g(A) is that op applied to sym(dA)
(so jacfwd of jacfwd is exact too), the SVD one L(dFᵀF + FᵀdF) (:func:`_svd_dk_tangent`, an op that
refuses to be differentiated: ``stabkit._autograd.tangent_op``); under torch.compile the classes
without a custom jvp are used (Dynamo traces none).

Input: F a finite float32/float64 (..., n, d), ε a finite number ≥ 0, and an EIG-route A symmetric
(stabkit.torch's contract, InputError otherwise) with A + εI in g's real domain (positive definite for
log, semidefinite for √: :func:`._checks.check_domain`). o2p's own FᵀF is not checked: in float32 at a
small ε its rounding may leave λ + ε < 0, and that NaN is a result of the o2p-stability study. With
ε = 0, log and x^p (p < 0) of a singular FᵀF are infinite; a wide F (n < d) always makes FᵀF
singular, so that case is refused. Where σ² + ε overflows (float32 σ > 1.8e19) or is subnormal or 0
(float32 σ < 1.1e-19, ε = 0) the SVD routes take g(σ² + ε) without σ² (:func:`gram_values`); SVD-DK's backward, its derivatives and its forward mode are
taken at 2^−k F outside an ordinary range of σ (:func:`.svd.range_scale`), or, where g'(μ_min) would overflow or
μ_min is subnormal (float32 x^−½: σ_min/σ_max ≲ 1e-13), at the 2^−k that centres the σ (:func:`.spread_scale`) — on a
wide F's differentiated path with ε > 0 also where h's third differences at the smallest μ would overflow
(:func:`.ridge_scale`); x^p whose C
overflows (p > 0 on the SVD routes, any p on the EIG route), and o2p's EIG route where FᵀF does,
raise InputError.
"""

from __future__ import annotations

import torch

from . import svd as _svd
import stabkit.torch
from .. import _xp
from .._autograd import compile_safe, differentiating_backward, tangent_op
from ._checks import check_domain, check_eps, check_matrix, method_params
from .divided_differences import divided_differences, scalar_function, dk_frechet, eigen_divided_differences
from .dk_ops import EigDK as _EigDK, EigDKJvp as _EigDKJvp, Frechet as _Frechet, FrechetJvp as _FrechetJvp
from .dk_ops import FrechetGram as _FrechetGram, FrechetGramJvp as _FrechetGramJvp
from .ridge_divided_differences import ridge_function, ridge_spectrum
from ._gram_values import gram_values
from ._spread_scale import centred_range_scale, ridge_scale, spread_scale
from ..errors import InputError
from ..methods import DEFAULT, Spec

#: the ``backward`` the monitor logs for :func:`eig_dk` and :func:`svd_dk` (never swapped)
DK_BACKWARD = "daleckii-krein (exact g(A); no swap)"


def _check_features(F, fn: str, eps, p, name: str) -> float:
    """The module docstring's input contract for F and ε; ε as a float."""
    check_matrix(F, name)
    scalar_function(fn, p)
    eps = check_eps(eps, name)
    if eps == 0 and F.shape[-2] < F.shape[-1] and (fn == "log" or (fn == "power" and p < 0)):
        raise InputError(f"{name}: g = {fn} of FᵀF + εI with ε = 0 is infinite for a wide F (n = {F.shape[-2]} < "
                         f"d = {F.shape[-1]}: FᵀF is singular); pass eps > 0")
    return eps


def _check_overflow(C, F, fn, p, name):
    """C, unless x^p (p > 0) of FᵀF + εI overflows F's dtype (then InputError: scaling F cannot help, the
    result itself is not representable). log and √ of a finite F's Gram matrix do not overflow."""
    if fn == "power" and p > 0 and not _xp.is_traced(C) and not bool(torch.isfinite(C).all()):
        wider = " or pass F in float64" if F.dtype == torch.float32 else ""
        raise InputError(f"{name}: g = x^{p:g} of FᵀF + εI overflows {F.dtype} (max |F| = "
                         f"{float(F.detach().abs().max()):.3g}): scale F down{wider}")
    return C


def svd_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = V g(ΣᵀΣ + εI) Vᵀ ∈ ℝ^{d×d} from the SVD of F (..., n, d) — Prop. 3."""
    name = "svd_matrix_function"
    return _check_overflow(_svd_matrix_function(F, fn, _check_features(F, fn, eps, p, name), p), F, fn, p, name)


def _svd_matrix_function(F, fn, eps, p):
    g = scalar_function(fn, p)
    n, d = F.shape[-2], F.shape[-1]
    if n >= d:
        _, S, V = _svd.svd(F)
        return (V * gram_values(S, eps, fn, p)[..., None, :]) @ V.transpose(-1, -2)
    U, S, _ = _svd.svd(F.transpose(-1, -2))  # Fᵀ = U Σ Wᵀ: U is F's right factor V (d × n)
    base = g(torch.as_tensor(eps, dtype=F.dtype, device=F.device))
    C = (U * (gram_values(S, eps, fn, p) - base)[..., None, :]) @ U.transpose(-1, -2)
    return C + base * torch.eye(d, dtype=F.dtype, device=F.device)


class _SvdDK(torch.autograd.Function):
    """(g(FᵀF + εI), σ, V) from the SVD of F (full V); backward ∂L/∂F = 2 F L(∂L/∂C), L the Fréchet
    derivative of g at FᵀF + εI (σ, V: no gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(F, fn, eps, p):
        # the full V (d × d) only: full_matrices for a tall F would add an unused n × n U
        _, S, Vh = torch.ops.aten.linalg_svd(F, full_matrices=F.shape[-2] < F.shape[-1])
        V = Vh.mT
        values = gram_values(_pad(S, F.shape[-1]), eps, fn, p)     # σ = 0 for the directions beyond min(n, d)
        return (V * values[..., None, :]) @ V.mT, S, V

    @staticmethod
    def setup_context(ctx, inputs, output):
        F, ctx.fn, ctx.eps, ctx.p = inputs
        _, S, V = output
        ctx.mark_non_differentiable(S, V)
        ctx.save_for_backward(F, S, V)
        ctx.save_for_forward(F, S, V)

    @staticmethod
    def backward(ctx, gC, _gS, _gV):
        """2 F L(gC) (L the Fréchet derivative of g at FᵀF + εI), taken at cF, c²ε (:func:`_at_scale`): with the
        saved factors (:func:`_thin_frechet`), or — where it is itself differentiated — by the EIG-DK op at
        (cF)ᵀ(cF), whose derivative (exact on ties) reaches F through that gradient handle. A wide F goes through
        :func:`_row_gram_backward` instead (F times the null space's g'(ε) rounds to u·|F|·g'(ε), not 0; infinite
        at ε = 0 for √, x^p, p < 1)."""
        F, S, V = ctx.saved_tensors
        differentiated, wide = differentiating_backward(F), F.shape[-2] < F.shape[-1]
        # ridge: σ_max nearer 1, and h's third differences at c²ε finite (:func:`_at_scale`)
        c, unscale = _at_scale(S, ctx.fn, ctx.eps, ctx.p, ridge=bool(differentiated and wide and ctx.eps))
        F, S, eps = F * c[..., None], S * c, ctx.eps * c * c
        if not differentiated:
            L = _thin_frechet(V[..., :S.shape[-1]], S, F.shape[-2:], gC, ctx.fn, eps, ctx.p)
            return 2 * F @ L * unscale, None, None, None
        if wide:
            return _row_gram_backward(F, gC, ctx.fn, ctx.p, eps if ctx.eps else None) * unscale, None, None, None
        twice = 2 * F  # made before the handle FᵀF: a double backward adds its 3 terms of ∂/∂F in the same order
        mu = _pad(S * S, F.shape[-1]) + eps  # as before the scaling (bitwise the same result at c = 1)
        small = _vanishing(_pad(S, F.shape[-1]), mu, F.shape[-2:], ctx.fn, ctx.p)
        if small is None:
            L = compile_safe(_Frechet, _FrechetJvp).apply(F.mT @ F, gC, mu, V, ctx.fn, ctx.p)
        else:  # the plain backward's limit, taken in V's basis where its zeros are exact; μ lifted: D finite
            Gt = (V.mT @ _xp.sym(gC) @ V) * ~(small[..., :, None] & small[..., None, :])
            mu = torch.where(small, _rank_cut(S, F.shape[-2:]) ** 2, mu)
            L = compile_safe(_FrechetGram, _FrechetGramJvp).apply(F.mT @ F, gC, Gt, mu, V, ctx.fn, ctx.p)
        return twice @ L * unscale, None, None, None


def _at_scale(S, fn, eps, p, ridge=False):
    """(c, c^(1−2q)) for :func:`.svd.range_scale`'s c (1 at ordinary scales; moved by :func:`.spread_scale` where
    the smallest μ's g'(μ) overflows), g of degree q (log 0, √ ½, x^p p):
    the divided differences at c²μ are c^(2q−2) times those at μ, so the backward and the tangent, of degree
    2q − 1 in F, are c^(1−2q) times their values at cF, c²ε — where σ², FᵀF and the second divided differences
    neither overflow nor underflow (float32 σ ~ 1e12 made a second derivative 1e17× off, ~1e20 NaN). ``ridge``: the
    wide F's differentiated path with ε > 0, :func:`.centred_range_scale` then :func:`.ridge_scale`."""
    q = 0.0 if fn == "log" else (0.5 if fn == "sqrt" else p)
    c = _svd.range_scale(S, eps, q)
    c = centred_range_scale(S, eps, q, c) if ridge else c
    c = spread_scale(S, eps, fn, p, c)
    c = ridge_scale(S, eps, q, c) if ridge else c
    return c, (c ** (1 - 2 * q))[..., None]


def _row_gram_backward(F, G, fn, p, ridge=None):
    """∂⟨G, g(FᵀF + εI)⟩/∂F for a wide F (n < d), written through the n × n M = FFᵀ so that its own derivative
    is exact on ties and F never meets FᵀF's null space: g(FᵀF + εI) = g(ε) I + Fᵀ h(M) F with
    h(x) = (g(x + ε) − g(ε))/x, hence ∂/∂F = 2 h(M) F S + 2 L_h(F S Fᵀ) F, S = sym(G), L_h the Fréchet
    derivative of h at M — both EIG-DK ops at M, whose eigenpairs (σ², U) come from F's SVD.
    ε = 0 (``ridge`` None; g = √ or x^p, p ≥ 0): h(x) = x^(p−1) (√: p = ½; x⁰ is constant, h = 0); at FᵀF
    itself the complement's g'(0) = ∞ (√, p < 1) would meet −∞ in the second-order terms. Needs a full-row-rank
    F for p < 2 (h or h' is infinite at a zero σ, where √ and x^p, p ≤ ½, have no derivative either), except
    x^p, ½ < p < 1, whose first derivative there is the limit :func:`_row_gram_limit` takes.
    ε > 0 (``ridge``, the scaled ε, shape (..., 1)): h(x) = g[x + ε, ε] (:mod:`.ridge_divided_differences`),
    finite at σ = 0, so any rank; at FᵀF + εI the complement's g'(ε) times F's rounding (u·|F|, not 0) made
    the gradient 19 % off (float32 x^−½, σ ~ 2⁵, ε = 1e-3). F S Fᵀ enters L_h in M's eigenbasis from the SVD,
    Σ V₁ᵀ S V₁ Σ (:class:`.dk_ops.FrechetGram`): Uᵀ(F S Fᵀ)U rounds a small σ's entries to u·σ_max², which
    h's divided differences (largest there, ~g^(k)(ε)) magnified in the second derivative."""
    if fn == "power" and p == 0:
        return 0 * F                                # still a function of F: its derivative is 0 too
    U, S, Vh = torch.ops.aten.linalg_svd(F.detach(), full_matrices=False)
    M, Sym = F @ F.mT, _xp.sym(G)
    small = _vanishing(S, S * S, F.shape[-2:], fn, p) if ridge is None else None
    if small is not None:
        H, L = _row_gram_limit(F, Sym, M, U, S, Vh, small, p - 1)
    elif ridge is None:
        lam, q = S * S, (0.5 if fn == "sqrt" else p) - 1
        H = compile_safe(_EigDK, _EigDKJvp).apply(M, lam, U, "power", q)
        L = compile_safe(_Frechet, _FrechetJvp).apply(M, F @ Sym @ F.mT, lam, U, "power", q)
    else:
        lam, P = ridge_spectrum(S * S, ridge), S[..., :, None] * Vh      # P = Σ V₁ᵀ, "UᵀF" without rounding
        H = compile_safe(_EigDK, _EigDKJvp).apply(M, lam, U, ridge_function(fn), p)
        Gt = _xp.sym(P @ Sym.detach() @ P.mT)
        L = compile_safe(_FrechetGram, _FrechetGramJvp).apply(M, F @ Sym @ F.mT, Gt, lam, U, ridge_function(fn), p)
    return 2 * (H @ F @ Sym + L @ F)


class _SvdDKJvp(_SvdDK):
    """_SvdDK with forward mode; plain _SvdDK under torch.compile."""

    @staticmethod
    def jvp(ctx, dF, _fn, _eps, _p):
        F, S, V = ctx.saved_tensors
        return tangent_op(_svd_dk_tangent, "svd_dk", F, dF, S, V, ctx.fn, ctx.eps, ctx.p), None, None


def _svd_dk_tangent(F, dF, S, V, fn, eps, p):
    """dC = L(dFᵀF + FᵀdF), L the Fréchet derivative of g at FᵀF + εI: :func:`dk_frechet` with the full
    V for a square or tall F, :func:`_gram_frechet` with the thin one for a wide F; at cF, c²ε (:func:`_at_scale`)."""
    c, unscale = _at_scale(S, fn, eps, p)
    F, S, eps = F * c[..., None], S * c, eps * c * c
    G = 2 * F.mT @ dF
    k, d = S.shape[-1], F.shape[-1]
    if k == d:
        mu = S * S + eps
        D = _limit_where_sigma_vanishes(eigen_divided_differences(mu, fn, p), S, mu, F.shape[-2:], fn, p)
        return dk_frechet(V, D, G) * unscale
    return _gram_frechet(V[..., :k], S, F.shape[-2:], G, fn, eps, p) * unscale


def _pad(x, d):
    return torch.nn.functional.pad(x, (0, d - x.shape[-1]))


def _thin_frechet(V1, S, shape, G, fn, eps, p):
    """L(G) as far as F L(G) sees it, from the thin V1 (d × k) alone: on span(V1) :func:`dk_frechet`;
    if k < d the complement (eigenvalue ε of FᵀF + εI) adds V1 diag(D_iε) V1ᵀ sym(G) (I − V1V1ᵀ) —
    the other complement terms start with (I − V1V1ᵀ), which F annihilates (and g'(0) = ∞ for √ and
    x^p, p < 1, at ε = 0, would make them NaN). ``shape``: F's (n, d)."""
    k, d = S.shape[-1], shape[-1]
    sig = _pad(S, min(d, k + 1))                    # one σ = 0 stands for the complement
    mu = sig * sig + eps
    D = _limit_where_sigma_vanishes(divided_differences(mu, sig, fn, p), sig, mu, shape, fn, p)
    L = dk_frechet(V1, D[..., :k, :k], G)
    if k < d:
        VtG = V1.mT @ _xp.sym(G)
        L = L + V1 @ (D[..., :k, k:] * (VtG - (VtG @ V1) @ V1.mT))
    return L


def _limit_where_sigma_vanishes(D, sig, mu, shape, fn, p):
    """D with D_ij = 0 where both μ_i, μ_j ≤ τ² (τ = max(n, d)·u·σ_max, the numerical rank's cut: such σ are
    zero to within the SVD's rounding; so is ε), for x^p, ½ < p < 1. There D ~ pμ^(p−1) is huge (∞ at μ = 0)
    and meets F's σ_i only through F: at σ = 0, 0·∞ made the whole gradient and tangent NaN (an all-zero column
    of F, a dead channel, was enough), and at a σ that is rounding, F's rounding u·|F| times it was off by
    O(1) (float32, x^0.6). C is differentiable at σ = 0 — its zero-σ block grows as |δF|^(2p) — with σ·g'(σ²)
    = pσ^(2p−1) → 0 the limit, which D_ij = 0 gives. A σ ≤ τ that the SVD resolves exactly (a diagonal F with
    σ = 2^−51 σ_max) loses its pσ^(2p−1) — at most pτ^(2p−1), the change of the gradient under the SVD's own
    rounding (2.4 % of the gradient's largest entry at p = 0.55 in float64 there). At p ≤ ½ (√ too) C has no
    derivative at σ = 0 and nothing is changed."""
    small = _vanishing(sig, mu, shape, fn, p)
    return D if small is None else torch.where(small[..., :, None] & small[..., None, :], torch.zeros_like(D), D)


def _row_gram_limit(F, Sym, M, U, S, Vh, small, q):
    """(h(M), L_h(F S Fᵀ)) of :func:`_row_gram_backward` at ε = 0 for x^p, ½ < p < 1 (h = x^q, q = p − 1), with
    the limit of :func:`_limit_where_sigma_vanishes`: a vanishing σ (a zero row of F) has h = ∞ there, which F
    multiplies by σ (σ·σ^(2q) → 0), so its direction of M is left out — exactly, in U's basis: h(M)'s value
    without it (its derivative, where no second derivative of C exists, is the op's at λ lifted to τ² there),
    and L_h read with Σ V₁ᵀ S V₁ Σ whose rows and columns of vanishing σ are 0."""
    keep = ~small
    lam = torch.where(small, _rank_cut(S, F.shape[-2:]) ** 2, S * S)    # finite h and D, never read there
    op = compile_safe(_EigDK, _EigDKJvp).apply(M, lam, U, "power", q)
    H = (U * (lam ** q * keep)[..., None, :]) @ U.mT + (op - op.detach())
    P = S[..., :, None] * Vh                                              # Σ V₁ᵀ: "UᵀF" without rounding
    Gt = _xp.sym(P @ Sym.detach() @ P.mT) * (keep[..., :, None] & keep[..., None, :])
    L = compile_safe(_FrechetGram, _FrechetGramJvp).apply(M, F @ Sym @ F.mT, Gt, lam, U, "power", q)
    return H, L


def _vanishing(sig, mu, shape, fn, p):
    """For x^p, ½ < p < 1 (else None): where μ = σ² + ε ≤ τ², τ = max(n, d)·u·σ_max — σ and ε zero to within
    the SVD's rounding (the numerical rank's cut); F of shape ``shape``."""
    if fn != "power" or not 0.5 < p < 1 or sig.shape[-1] == 0:
        return None
    tol = _rank_cut(sig, shape)
    return mu <= tol * tol


def _rank_cut(sig, shape):
    """τ = max(n, d)·u·σ_max (shape (..., 1)): an F of ``shape``'s σ below it are 0 to within the SVD's rounding."""
    return max(shape) * torch.finfo(sig.dtype).eps * sig.detach().amax(-1, keepdim=True)


def _gram_frechet(V1, S, shape, G, fn, eps, p):
    """L(G) (d × d, symmetric) from the thin V1, for G = 2FᵀdF (sym(G) = dFᵀF + FᵀdF, FᵀF's tangent):
    :func:`_thin_frechet`'s T = A + B (A its span(V1) block, B = V1 (D_iε ∘ V1ᵀ sym(G) P⊥),
    P⊥ = I − V1V1ᵀ) gives A + B + Bᵀ = T + Tᵀ − T V1V1ᵀ. The complement block g'(ε) P⊥ sym(G) P⊥ of a
    general L is left out: it is 0 for such G (F P⊥ = 0), and g'(0) = ∞ (ε = 0, √x, x^p with
    p < 1) times its rounding would be NaN."""
    T = _thin_frechet(V1, S, shape, G, fn, eps, p)
    return T if S.shape[-1] == shape[-1] else T + T.mT - T @ (V1 @ V1.mT)


def eig_dk(A: torch.Tensor, fn: str, p: float | None = None, *, psd: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(g(A), λ) for symmetric A (lower triangle read, unchecked): g(A) = U g(Λ) Uᵀ with the
    Daleckii–Krein backward :func:`dk_frechet`, exact on ties (Higham 2008, Thm. 3.11), and λ A's
    eigenvalues (ascending, no gradient). The EIG-DK layers' one eigendecomposition: inside
    ``stabkit.monitor.watch`` it is logged under its own name and never swapped. ``psd``: A is
    positive semidefinite by construction (a covariance), so a λ < 0 is rounding and is taken as 0."""
    scalar_function(fn, p)
    lam, U = _xp.eigh(A.detach())
    if psd:
        lam = lam.clamp_min(0)
    return compile_safe(_EigDK, _EigDKJvp).apply(A, lam, U, fn, p), lam


def svd_dk(F: torch.Tensor, fn: str, eps: float = 0.0, p: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g(FᵀF + εI), μ) from the SVD of F (unchecked) with the Daleckii–Krein backward, and μ the
    eigenvalues of FᵀF + εI (ascending, no gradient); logged by the monitor under its own name."""
    scalar_function(fn, p)
    C, S, _ = compile_safe(_SvdDK, _SvdDKJvp).apply(F, fn, eps, p)
    return C, (_pad(S * S, F.shape[-1]) + eps).flip(-1)


def svd_dk_matrix_function(F: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None):
    """C = g(FᵀF + εI) from the SVD of F with the cancellation-free Daleckii–Krein backward."""
    name = "svd_dk_matrix_function"
    return _check_overflow(svd_dk(F, fn, _check_features(F, fn, eps, p, name), p)[0], F, fn, p, name)


def eig_matrix_function(A: torch.Tensor, fn: str = "log", eps: float = 0.0, p: float | None = None,
                        method: str | Spec = DEFAULT, **params):
    """C = U g(Λ + εI) Uᵀ from the EIG of symmetric A (..., d, d) — Prop. 4 (backward: ``method``)."""
    check_matrix(A, "eig_matrix_function", symmetric=True)
    params = method_params(params, "eig_matrix_function")
    C, lam = _eig_matrix_function(A, fn, eps := check_eps(eps, "eig_matrix_function"), p, method, **params)
    check_domain(lam, eps, fn, p, "eig_matrix_function")
    if fn == "power" and not _xp.is_traced(C) and not bool(torch.isfinite(C).all()):  # log, √ of finite A are finite
        raise InputError(f"eig_matrix_function: g = x^{p:g} of A + εI overflows {A.dtype} (λ + ε from "
                         f"{float(lam.min() + eps):.3g} to {float(lam.max() + eps):.3g}): scale A or pass float64")
    return C


def _eig_matrix_function(A, fn, eps, p, method, **params):
    """(C, λ): C as :func:`eig_matrix_function`, λ A's eigenvalues (detached)."""
    g = scalar_function(fn, p)
    lam, U = stabkit.torch.eigh(stabkit.torch.symmetrize(A), method=method, check=False, **params)
    return (U * g(lam + eps)[..., None, :]) @ U.transpose(-1, -2), lam.detach()


def o2p(F: torch.Tensor, eps: float = 1e-3, route: str = "svd", method: str | Spec | None = None, **params):
    """DeepO2P, log(FᵀF + εI) (Corollary 1): SVD route (Prop. 3), EIG route (Prop. 4) or ``svd-dk``.
    ``method`` (default the exact rule) and its parameters choose the EIG route's backward; others refuse them."""
    if route not in ("svd", "svd-dk", "eig"):
        raise InputError(f"unknown O2P route {route!r}: choose 'svd', 'svd-dk' or 'eig'")
    params = method_params(params, "o2p")
    if route != "eig" and (method is not None or params):
        raise InputError(f"o2p: route={route!r} has its own backward; method= and its parameters apply to route='eig' only")
    eps = _check_features(F, "log", eps, None, "o2p")
    if route == "svd":
        return _svd_matrix_function(F, "log", eps, None)
    if route == "svd-dk":
        return svd_dk(F, "log", eps)[0]
    try:  # only a failure is checked for overflow: no host read on the path that works
        return _eig_matrix_function(gram := F.mT @ F, "log", eps, None, method or DEFAULT, **params)[0]
    except torch.linalg.LinAlgError:
        if bool(torch.isfinite(gram).all()):
            raise
        raise InputError(f"o2p: FᵀF overflows {F.dtype} on route='eig' (max |F| = {float(F.detach().abs().max()):.3g}): "
                         "scale F down or pass float64, or take route='svd' or 'svd-dk', which avoid FᵀF") from None
