"""Divided differences of g ∈ {log, sqrt, x^p} and the Daleckii–Krein derivatives built from them.

For symmetric A = U diag(λ) Uᵀ and X̃ = Uᵀ X U (X, Y symmetric):

* first Fréchet derivative  L(X)     = U (g[λ_a, λ_b] ∘ X̃) Uᵀ  (Daleckii–Krein; Higham, "Functions
  of Matrices", 2008, Thm. 3.11);
* second Fréchet derivative L₂(X, Y) = U M Uᵀ, M_ab = Σ_c g[λ_a, λ_c, λ_b] (X̃_ac Ỹ_cb + Ỹ_ac X̃_cb)
  (the second-order formula of Daleckii & Krein, "Integration and differentiation of functions of
  Hermitian operators …", AMS Transl. (2) 47, 1965; checked in the tests against finite differences).

g[x, y] and g[x, y, z] are the first and second divided differences, equal to g'(x) and g''(x)/2 on
ties. Both are evaluated without cancellation, so both derivatives are exact on (near-)ties, where
the eigenvector form 1/(λ_a − λ_b) is infinite. ⟨W, L₂(X, Y)⟩ is symmetric in W, X, Y (g[·,·,·] is
symmetric in its arguments), so the gradient of ⟨W, L(X)⟩ with respect to A is L₂(X, W).
"""

from __future__ import annotations

import torch

from .. import _xp

FUNCTIONS = ("log", "sqrt", "power")

#: near-tie threshold of the second divided difference: Taylor series when (max − min) ≤ τ·max of
#: the three points, else the difference quotient, whose cancellation is then at most a factor 1/τ
_TAU = 1 / 32
#: series terms: |y| ≤ τ/(1 − τ) = 1/31, so term n is below 31^-n times a low-degree polynomial in n
_TERMS = 14


def _unknown(fn):
    return ValueError(f"unknown matrix function {fn!r}: choose one of {', '.join(FUNCTIONS)}")


def divided_differences(mu: torch.Tensor, sig: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """D_ij = (g(μ_i) − g(μ_j))/(μ_i − μ_j), D_ii = g'(μ_i), without cancellation (μ = σ² + ε)."""
    delta = ((sig[..., :, None] - sig[..., None, :]) * (sig[..., :, None] + sig[..., None, :])).abs()
    return divided_differences_of(mu, delta, fn, p)


def divided_differences_of(mu: torch.Tensor, delta: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """D of :func:`divided_differences` given the gaps Δ_ij = |μ_i − μ_j| (ties: Δ = 0)."""
    return pair_divided_differences(mu[..., :, None], mu[..., None, :], delta, fn, p)


def eigen_divided_differences(lam: torch.Tensor, fn: str, p: float | None = None) -> torch.Tensor:
    """D of :func:`divided_differences_of` for eigenvalues λ (the gaps by subtraction)."""
    return divided_differences_of(lam, (lam[..., :, None] - lam[..., None, :]).abs(), fn, p)


def pair_divided_differences(mi, mj, delta, fn: str, p: float | None = None) -> torch.Tensor:
    """g[μ_i, μ_j] elementwise (broadcast), Δ = |μ_i − μ_j| given: log1p(Δ/m)/Δ for log, 1/(√μ_i + √μ_j)
    for √, m^p expm1(p log1p(Δ/m))/Δ for x^p (m = min(μ_i, μ_j); at m = 0, (M^p − 0^p)/M, M the max).

    Differentiable: each ``where`` branch is fed a placeholder 1 where it is not taken (the "double
    where"), so a branch that would be infinite there (1/0 on a tie, log1p(Δ/0)) leaves no NaN in
    the derivative of the branch taken."""
    lo = torch.minimum(mi, mj)                      # D is symmetric: expand around the smaller μ
    tie = delta == 0
    one = torch.ones_like(delta)
    gap = torch.where(tie, one, delta)              # off-tie branch's Δ
    lo_off, lo_on = torch.where(tie, one, lo), torch.where(tie, lo, one)
    if fn == "log":
        off = torch.log1p(gap / lo_off) / gap
        on = 1 / lo_on
    elif fn == "sqrt":
        return 1 / (mi.sqrt() + mj.sqrt())          # = g'(μ) = 1/(2√μ) on ties too
    elif fn == "power":
        hi = torch.maximum(mi, mj)
        at_zero = lo_off == 0
        at_zero_dd = (hi ** p - lo_off ** p) / gap  # lo = 0: no cancellation (lo^p is 0, 1 or inf)
        lo_pos = torch.where(at_zero, one, lo_off)
        off = torch.where(at_zero, at_zero_dd, lo_pos ** p * torch.expm1(p * torch.log1p(gap / lo_pos)) / gap)
        on = p * lo_on ** (p - 1)
    else:
        raise _unknown(fn)
    return torch.where(tie, on, off)


def second_divided_differences(x, y, z, fn: str, p: float | None = None) -> torch.Tensor:
    """g[x, y, z] elementwise (broadcast; = g''(x)/2 when x = y = z), for x, y, z ≥ 0.

    √: the closed form −1/((√x + √y)(√y + √z)(√x + √z)). log, x^p: with lo ≤ mid ≤ hi the sorted
    points, (g[mid, hi] − g[lo, mid])/(hi − lo) when hi − lo > τ·hi; otherwise the Taylor series of g
    about mid, g[x, y, z] = Σ_{n≥2} g⁽ⁿ⁾(mid)/n! · h_{n−2}(x − mid, y − mid, z − mid), h_k the
    complete homogeneous symmetric polynomial (the divided difference of (t − mid)ⁿ). Not
    differentiable (it serves the second derivative only)."""
    if fn == "sqrt":
        return _second_sqrt(x, y, z)
    pair = lambda s, t: pair_divided_differences(s, t, (s - t).abs(), fn, p)  # noqa: E731
    return _second_from_pairs(x, y, z, pair(x, y), pair(y, z), pair(x, z), fn, p)


def _second_sqrt(x, y, z):
    rx, ry, rz = x.sqrt(), y.sqrt(), z.sqrt()
    return -1 / ((rx + ry) * (ry + rz) * (rx + rz))


def _second_from_pairs(x, y, z, gxy, gyz, gxz, fn, p):
    """g[x, y, z] (log, x^p) given the first divided differences of the three pairs: the difference
    quotient over the widest pair when it is wider than τ·max, else the Taylor series of the docstring."""
    if fn not in FUNCTIONS:
        raise _unknown(fn)
    sxy, syz, sxz = (x - y).abs(), (y - z).abs(), (x - z).abs()
    hi = torch.maximum(torch.maximum(x, y), z)
    spread = torch.maximum(torch.maximum(sxy, syz), sxz)
    near = spread <= _TAU * hi
    one = torch.ones_like(spread)
    # far: g[x,y,z] = g[x,z,y] = g[y,x,z], each a quotient over one pair; cancellation ≤ 1/τ for the widest
    far = torch.where(sxz == spread, (gxy - gyz) / torch.where(near, one, x - z),
                      torch.where(sxy == spread, (gxz - gyz) / torch.where(sxy == 0, one, x - y),
                                  (gxy - gxz) / torch.where(syz == 0, one, y - z)))
    # near: series in the relative offsets (t − mid)/mid, |·| ≤ τ/(1 − τ)
    mid = torch.maximum(torch.minimum(x, y), torch.minimum(torch.maximum(x, y), z))
    c = torch.where(near & (mid > 0), mid, one)
    ys = [torch.where(near, (t - mid) / c, torch.zeros_like(t)) for t in (x, y, z)]
    scale = c ** -2 if fn == "log" else c ** (p - 2)
    near_value = torch.where(mid > 0, scale * _series(ys, fn, p), _second_at_zero(fn, p, spread))
    return torch.where(near, near_value, far)


def _series(ys, fn, p):
    """Σ_{n≥2} a_n h_{n−2}(y0, y1, y2), a_n the Taylor coefficients of g(1 + t) (log: (−1)^{n+1}/n;
    x^p: binom(p, n)). h_k by the recurrence over variables: A_k = y0^k, B_k = A_k + y1 B_{k−1},
    C_k = B_k + y2 C_{k−1}."""
    y0, y1, y2 = ys
    A = B = C = torch.ones_like(y0)
    coeff = p * (p - 1) / 2 if fn == "power" else -0.5
    total = coeff * C
    for n in range(3, _TERMS + 2):
        A = y0 * A
        B = A + y1 * B
        C = B + y2 * C
        coeff = coeff * (p - n + 1) / n if fn == "power" else (-1) ** (n + 1) / n
        total = total + coeff * C
    return total


def _second_at_zero(fn, p, like):
    """g''(0)/2 (all three points 0): −∞ for log, binom(p, 2)·0^{p−2} for x^p."""
    if fn == "log":
        return torch.full_like(like, -torch.inf)
    binom = p * (p - 1) / 2
    return torch.zeros_like(like) if binom == 0 else binom * torch.zeros_like(like) ** (p - 2)


def dk_frechet(U: torch.Tensor, D: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """U (D ∘ Uᵀ sym(G) U) Uᵀ: the Fréchet derivative of A ↦ g(A) at A = U Λ Uᵀ applied to sym(G), D
    the divided differences of g on Λ (Daleckii–Krein; Higham 2008, Thm. 3.11) — which is also the
    gradient of ⟨G, g(A)⟩. Plain torch ops, so a backward built on it can be differentiated."""
    return U @ (D * (U.mT @ _xp.sym(G) @ U)) @ U.mT


def dk_second_frechet(U, lam, X, Y, fn: str, p: float | None = None, block_elems: int = 1 << 22) -> torch.Tensor:
    """L₂(sym X, sym Y) = U (N + Nᵀ) Uᵀ at A = U diag(λ) Uᵀ, N_ab = Σ_c g[λ_a, λ_c, λ_b] X̃_ac Ỹ_cb (the
    module docstring's M is N + Nᵀ: g[·,·,·] is symmetric and X̃, Ỹ are). For a pair with
    |λ_a − λ_b| > τ·max, g[λ_a, λ_c, λ_b] = (D_ac − D_cb)/(λ_a − λ_b) for every c, so that row of N is
    ((D∘X̃)Ỹ − X̃(D∘Ỹ))_ab/(λ_a − λ_b): two matrix products. Only the near pairs (the diagonal, ties,
    clusters) are summed term by term, O(d) each; under torch.func transforms and torch.compile,
    where their number cannot set a shape, all pairs are, in blocks of about ``block_elems`` entries."""
    Xt, Yt = U.mT @ _xp.sym(X) @ U, U.mT @ _xp.sym(Y) @ U
    D = eigen_divided_differences(lam, fn, p)
    gap = lam[..., :, None] - lam[..., None, :]
    near = gap.abs() <= _TAU * torch.maximum(lam[..., :, None].abs(), lam[..., None, :].abs())
    N = torch.where(near, 0, ((D * Xt) @ Yt - Xt @ (D * Yt)) / torch.where(near, 1, gap))
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(lam):
        N = torch.where(near, _near_terms_dense(lam, D, Xt, Yt, fn, p, block_elems), N)
    else:
        N = _add_near_terms(N, near, lam, D, Xt, Yt, fn, p)
    return U @ (N + N.mT) @ U.mT


def _second_of(la, lc, lb, Dac, Dcb, Dab, fn, p):
    """g[λ_a, λ_c, λ_b] from the eigenvalues and the pairs' entries of D (no log per triple)."""
    if fn == "sqrt":
        return _second_sqrt(la, lc, lb)
    return _second_from_pairs(la, lc, lb, Dac, Dcb, Dab, fn, p)


def _add_near_terms(N, near, lam, D, Xt, Yt, fn, p):
    """N_ab = Σ_c g[λ_a, λ_c, λ_b] X̃_ac Ỹ_cb for the near pairs (a, b), term by term."""
    d = lam.shape[-1]
    flat = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731
    Nf, Df, Xf, Yf, lf = flat(N).clone(), flat(D), flat(Xt), flat(Yt), lam.reshape(-1, d)
    k, a, b = near.reshape(-1, d, d).nonzero(as_tuple=True)
    T = _second_of(lf[k, a][:, None], lf[k], lf[k, b][:, None], Df[k, a], Df[k, b], Df[k, a, b][:, None], fn, p)
    Nf[k, a, b] = (T * Xf[k, a] * Yf[k, b]).sum(-1)             # Ỹ_cb = Ỹ_bc
    return Nf.reshape(N.shape)


def _near_terms_dense(lam, D, Xt, Yt, fn, p, block_elems):
    """N of :func:`_add_near_terms` for every pair, summed over c in blocks (shapes set by d alone)."""
    d = lam.shape[-1]
    step = max(1, block_elems // max(1, d * d * max(1, lam[..., 0].numel())))
    la, lb = lam[..., :, None, None], lam[..., None, None, :]
    N = torch.zeros_like(Xt)
    for c0 in range(0, d, step):
        cs = slice(c0, min(d, c0 + step))
        T = _second_of(la, lam[..., None, cs, None], lb, D[..., :, cs, None], D[..., None, cs, :], D[..., :, None, :], fn, p)
        N = N + torch.einsum("...acb,...ac,...cb->...ab", T, Xt[..., :, cs], Yt[..., cs, :])
    return N
