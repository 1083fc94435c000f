"""h(x) = g[x + ε, ε] = (g(x + ε) − g(ε))/x and its Daleckii–Krein derivatives, for the SVD-DK layer's
differentiated backward with a wide F and a ridge ε > 0 (:mod:`.matrix_functions`): g(FᵀF + εI) =
g(ε) I + Fᵀ h(FFᵀ) F, so the backward and its derivatives need h, L_h and L₂_h at the n × n FFᵀ only.

h's divided differences are g's higher ones with ε added: h[x_i, x_j] = g[μ_i, μ_j, ε] and
h[x_a, x_c, x_b] = g[μ_a, μ_c, μ_b, ε] (μ = x + ε, x ≥ 0 the eigenvalues of FFᵀ). ε is the smallest
point, so the widest pair is always (ε, μ_max), its gap x_max exact: where x_max > τ·μ_max (τ of
:mod:`.divided_differences`) the quotient over that pair, g[…, ε] = (g[…] − g[… \\ μ_max, ε])/x_max,
cancels at most about 1/τ (the lower-order differences without cancellation themselves, g[μ_a, μ_c, μ_b]
by :func:`.second_products`); otherwise every point is within τ of ε and the Taylor series about ε,
ε^(q−k) Σ_n a_n h_{n−k}(y) (y = x/ε, h_m the complete homogeneous polynomial, a_n the coefficients of
g(1 + y), q the degree of g, k the order), is used. The test "x_max ≤ τ·μ_max" holds for a triple
exactly when it holds for each point, and which point is largest factors into (a, c) and (c, b)
masks, so L₂_h is a sum of matrix products like :func:`.dk_second_frechet`.

Internally h is named fn = ``"ridge:<g's fn>"`` with g's p, and its λ (x) carries ε as a last entry (a
tensor, so that ε scaled per batch element passes through vmap as λ does; a tuple argument would not).
"""

from __future__ import annotations

import torch

from .. import _xp
from .divided_differences import (_TERMS, _exponent, _near_tau, divided_differences_of, eigen_divided_differences,
                                  pair_divided_differences, second_products, dk_second_frechet, scalar_function)

RIDGE = "ridge:"


def ridge_function(fn):
    """The name of h for g = ``fn``."""
    return RIDGE + fn


def _ridge(fn):
    """g's fn if ``fn`` names an h, else None."""
    return fn[len(RIDGE):] if fn.startswith(RIDGE) else None


def _coefficients(fn, p, first, count):
    """a_first … a_{first+count−1} of g(1 + y) = Σ a_n yⁿ (log: (−1)^{n+1}/n; x^p: binom(p, n); √: p = ½)."""
    if fn == "log":
        return [(-1) ** (n + 1) / n for n in range(first, first + count)]
    p = 0.5 if fn == "sqrt" else p
    coef, out = 1.0, []
    for n in range(first + count):
        if n >= first:
            out.append(coef)
        coef = coef * (p - n) / (n + 1)
    return out


def _degree(fn, p):
    return 0.0 if fn == "log" else (0.5 if fn == "sqrt" else p)


def _homogeneous(ya, yb, count):
    """[h_0, …, h_{count−1}] of (ya, yb), h_m = Σ_{i+j=m} ya^i yb^j."""
    out, power, h = [], torch.ones_like(ya * yb), torch.zeros_like(ya * yb)
    for _ in range(count):
        h = power + yb * h
        out.append(h)
        power = power * ya
    return out


def _near(x, eps, fn, p):
    """The points x (μ = x + ε, ε broadcast to x) within τ of ε, x ≤ τ·(x + ε); and y = x/ε there, else 0."""
    small = x <= _near_tau(fn, p) * (x + eps)
    return small, torch.where(small, x / eps, torch.zeros_like(x))


def ridge_values(x, fn, p, eps):
    """h(x) = g[x + ε, ε] (ε broadcast to x), the gap x exact; g'(ε) at x = 0 and wherever x/ε ≤ u², where
    h(x) = g'(ε)(1 + O(|p|·x/ε)) rounds to it — the quotient forms there divide by an x/ε that may be subnormal
    or 0 (float64 x = 2⁻¹⁰⁷⁴ next to ε = 1: log gave 0, x^p 0/0 = NaN, the layer's HVP 47–77 % off)."""
    eps = eps.expand_as(x)
    x = torch.where(x / eps <= torch.finfo(x.dtype).eps ** 2, torch.zeros_like(x), x)
    return pair_divided_differences(x + eps, eps, x, fn, _exponent(p))


def ridge_divided_differences(x, fn, p, eps):
    """h[x_i, x_j] = g[μ_i, μ_j, ε] (x ≥ 0): (g[μ_i, μ_j] − g[μ_lo, ε])/x_hi, or the series about ε where
    x_hi ≤ τ·μ_hi. ε has shape (..., 1)."""
    p = _exponent(p)
    xi, xj, eps2 = x[..., :, None], x[..., None, :], eps[..., None]
    hi, lo = torch.maximum(xi, xj), torch.minimum(xi, xj)
    first = divided_differences_of(x + eps, (xi - xj).abs(), fn, p)
    small = hi <= _near_tau(fn, p) * (hi + eps2)
    quotient = (first - ridge_values(lo, fn, p, eps2)) / torch.where(small, torch.ones_like(hi), hi)
    _, y = _near(x, eps, fn, p)
    coef = _coefficients(fn, p, 2, _TERMS)
    series = sum(c * h for c, h in zip(coef, _homogeneous(y[..., :, None], y[..., None, :], _TERMS)))
    scale = eps2 ** (_degree(fn, p) - 2)
    return torch.where(small, scale * series, quotient)


def ridge_second_products(x, Xt, Yt, fn, p, eps):
    """N_ab = Σ_c h[x_a, x_c, x_b] Xt_ac Yt_cb, h[x_a, x_c, x_b] = g[μ_a, μ_c, μ_b, ε]: over the triples whose
    largest point (c, else a, else b) has x > τ·μ the quotient by that x, the rest the series about ε. For x⁰,
    x¹, x² (third differences 0) exactly 0: the quotient's cancellation is relative to its inputs, ~1/x."""
    p = _exponent(p)
    if fn == "power" and p in (0.0, 1.0, 2.0):
        return torch.zeros_like(Xt @ Yt)
    mu = x + eps
    H2 = ridge_divided_differences(x, fn, p, eps)
    small, y = _near(x, eps, fn, p)
    r = torch.where(small, torch.zeros_like(x), 1 / torch.where(small, torch.ones_like(x), x))
    xa, xb = x[..., :, None], x[..., None, :]
    fl = lambda m: m.to(Xt.dtype)  # noqa: E731
    ge, gt = fl(xb >= xa), fl(xa > xb)                          # [x_c ≥ x_a] as (a, c); [x_a > x_c]
    X1, Y1 = ge * Xt, ge.mT * r[..., :, None] * Yt             # c largest: ÷ x_c
    N = second_products(mu, X1, Y1, fn, p) - H2 * (X1 @ Y1)
    X2 = gt * Xt                                                # a largest: ÷ x_a
    N = N + (1 - gt.mT) * r[..., :, None] * (second_products(mu, X2, Yt, fn, p) - X2 @ (H2 * Yt))
    Y3 = gt.mT * Yt                                             # b largest: ÷ x_b
    N = N + gt.mT * r[..., None, :] * (second_products(mu, Xt, Y3, fn, p) - (H2 * Xt) @ Y3)
    # every point near ε: Σ_j R_j ∘ (Xt diag(s y^j) Yt), R_j = Σ_m a_{j+m+3} h_m(y_a, y_b)
    s = fl(small)
    coef = _coefficients(fn, p, 3, _TERMS)
    hm = _homogeneous(y[..., :, None], y[..., None, :], _TERMS)
    series, w = torch.zeros_like(N), s
    for j in range(_TERMS):
        R = sum(coef[j + m] * hm[m] for m in range(_TERMS - j))
        series = series + R * (Xt @ (w[..., :, None] * Yt))
        w = w * y
    scale = eps[..., None] ** (_degree(fn, p) - 3)                # may overflow where no point is near ε
    return N + torch.where((s[..., :, None] * s[..., None, :]) > 0, scale * series, torch.zeros_like(series))


def ridge_spectrum(x, eps):
    """The λ that the ops take for an h (``"ridge:…"``): x with ε (shape (..., 1)) appended."""
    return torch.cat([x, eps.expand(x[..., :1].shape)], -1)


def values(lam, fn, p):
    """g(λ), or h(x) for an h (``"ridge:…"``) (λ = (x, ε))."""
    g = _ridge(fn)
    return scalar_function(fn, p)(lam) if g is None else ridge_values(lam[..., :-1], g, p, lam[..., -1:])


def first_differences(lam, fn, p):
    """:func:`.eigen_divided_differences`, or h's for an h (``"ridge:…"``)."""
    g = _ridge(fn)
    if g is None:
        return eigen_divided_differences(lam, fn, p)
    return ridge_divided_differences(lam[..., :-1], g, p, lam[..., -1:])


def second_frechet(U, lam, X, Y, fn, p, Xt=None):
    """:func:`.dk_second_frechet` L₂(sym X, sym Y) = U (N + Nᵀ) Uᵀ, also for an h (``"ridge:…"``);
    X̃ = Uᵀ sym(X) U unless given (Xt, symmetric)."""
    g = _ridge(fn)
    if g is None and Xt is None:
        return dk_second_frechet(U, lam, X, Y, fn, p)
    Xt, Yt = U.mT @ _xp.sym(X) @ U if Xt is None else Xt, U.mT @ _xp.sym(Y) @ U
    if g is None:
        N = second_products(lam, Xt, Yt, fn, p)
    else:
        N = ridge_second_products(lam[..., :-1], Xt, Yt, g, p, lam[..., -1:])
    return U @ (N + N.mT) @ U.mT
