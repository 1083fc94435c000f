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

from fractions import Fraction

import torch

from .. import _xp
from ..errors import InputError
from ..validation import is_real

FUNCTIONS = ("log", "sqrt", "power")

#: λ_a, λ_b are "near" when |λ_a − λ_b| ≤ τ·max(|λ_a|, |λ_b|): a quotient over a separated pair
#: cancels at most about a factor 1/τ; near ones use the Taylor series (|y| ≤ τ/(1 − τ) = 1/31)
_TAU = 1 / 32
#: series terms: term n is below 31^-n times a low-degree polynomial in n (< 1e-16 relative at 14)
_TERMS = 14


def _near_tau(fn: str, p: float | None) -> float:
    """τ of the near test: :data:`_TAU`, or 1/(2|p|) for x^p with |p| > 16. The series' term n is about
    (|p|·|y|)ⁿ/n! times its first, so |p|·|y| ≤ ½ keeps :data:`_TERMS` terms at rounding level for any p
    (at τ = 1/32, p = 100 lost 6 digits); a quotient then cancels at most about 2|p|."""
    return 1 / (2 * abs(p)) if fn == "power" and abs(p) > 16 else _TAU


def _unknown(fn):
    return InputError(f"unknown matrix function {fn!r}: choose one of {', '.join(FUNCTIONS)}")


def _exponent(p):
    """p as a Python float: a numpy p (a real number to ``is_real``) would do numpy arithmetic here —
    numpy bools do not subtract, and float32 would round p − 1 and p/2."""
    return None if p is None else float(p)


def scalar_function(fn: str, p: float | None = None):
    """g as a torch function of a tensor."""
    if fn == "log":
        return torch.log
    if fn == "sqrt":
        return torch.sqrt
    if fn == "power":
        if p is None:
            raise InputError("g = power needs the exponent p")
        if not is_real(p):
            raise InputError(f"g = power needs a finite real exponent p, got {p!r}")
        return lambda x: x ** p
    raise _unknown(fn)


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
    for √, and for x^p (m = min(μ_i, μ_j), M the max) :func:`_power_off_tie` off ties, p·m^(p−1) on them.
    x^p in float64, against 50-digit mpmath over pairs 1e-300 … 1e300 and p ∈ {−0.7, 0.3, ½, 2, 2.5, 3,
    100}: ≤ 4.9e-16 relative wherever the value is a normal number, ±inf where it overflows. In float32,
    torch's vectorised pow rounds a fractional p to float32, so μ^p, like the layer's forward g(μ), is off
    by about |p ln μ|·6e-8 (≤ 2.6e-6 relative on the same kind of grid, 1e-37 … 1e37).

    Differentiable: each ``where`` branch is fed a placeholder 1 where it is not taken (the "double
    where"), so a branch that would be infinite there (1/0 on a tie, log1p(Δ/0)) leaves no NaN in
    the derivative of the branch taken."""
    p = _exponent(p)
    lo = torch.minimum(mi, mj)                      # D is symmetric: expand around the smaller μ
    tie = delta == 0
    one = torch.ones_like(delta)
    gap = torch.where(tie, one, delta)              # off-tie branch's Δ
    lo_off, lo_on = torch.where(tie, one, lo), torch.where(tie, lo, one)
    if fn == "log":
        r = gap / lo_off
        wide = r.isinf()                            # Δ/m beyond the dtype (float32 1e41 against ε = 1e-3)
        lo_wide, gap_wide = torch.where(wide, lo_off, one), torch.where(wide, gap, one)
        off = torch.where(wide, (torch.log(gap_wide) - torch.log(lo_wide)) / gap_wide,
                          torch.log1p(torch.where(wide, one, r)) / gap)
        on = 1 / lo_on
    elif fn == "sqrt":
        return 1 / (mi.sqrt() + mj.sqrt())          # = g'(μ) = 1/(2√μ) on ties too
    elif fn == "power":
        off = _power_off_tie(lo_off, torch.where(tie, one, torch.maximum(mi, mj)), gap, p)
        on = _pow_m1_times(lo_on, p, p) if p != 0 else torch.zeros_like(lo_on)  # x⁰: 0·0⁻¹ would be NaN
    else:
        raise _unknown(fn)
    return torch.where(tie, on, off)


def _power_off_tie(lo, hi, gap, p):
    """(M^p − m^p)/Δ for m = lo < M = hi, Δ = gap > 0, without cancellation, and ±inf or 0 only where the
    quotient itself over- or underflows (not where M^p or m^p alone does):

    * near pairs, |t| ≤ 1 with t = p log1p(r), r = Δ/m (m, M of one sign, m ≠ 0): m^(p−1) expm1(t)/r;
    * far pairs (|t| > 1, or m ≤ 0 ≤ M): the plain quotient, which cancels at most a factor 1/(1 − 1/e) —
      except for 0 ≤ m where the dominant power d^p (d = M for p > 0, m for p < 0; s the other point)
      is not a normal number: sign(p) (d^(p/2) q/Δ) d^(p/2), q = 1 − (s^(p/2)/d^(p/2))² ∈ (1 − 1/e, 1]."""
    one = torch.ones_like(gap)
    opposite = (lo < 0) & (hi >= 0)
    lo_same = torch.where(opposite | (lo == 0), one, lo)    # m, M of one sign and m ≠ 0: |Δ/m| < 1 if m < 0
    r = gap / lo_same
    t = p * torch.log1p(r)
    far = opposite | (lo == 0) | (t.abs() > 1) | r.isinf()
    dom_p = torch.where(far, hi if p > 0 else lo, one).detach() ** p     # only selects the branch
    factored = far & (lo >= 0) & ~((dom_p.abs() >= torch.finfo(gap.dtype).tiny) & dom_p.isfinite())
    plain = far & ~factored
    dom, sub = (hi, lo) if p > 0 else (lo, hi)
    a = torch.where(factored, dom, one) ** (p / 2)
    b = torch.where(factored, sub, one) ** (p / 2)
    extreme = (a == 0) | a.isinf()                          # d^(p/2) under-/overflows, and so does D
    q = 1 - torch.where(extreme, torch.zeros_like(a), b / torch.where(extreme, one, a)) ** 2
    factored_dd = ((p > 0) - (p < 0)) * ((a * q / gap) * a)
    plain_dd = (torch.where(plain, hi, one) ** p - torch.where(plain, lo, one) ** p) / gap
    c = torch.expm1(torch.where(far, torch.zeros_like(t), t)) / r
    near_dd = _pow_m1_times(torch.where(far, one, lo_same), p, c)
    return torch.where(factored, factored_dd, torch.where(plain, plain_dd, near_dd))


def _pow_m1_times(m, p, c):
    """m^(p−1)·c. Where p − 1 is inexact in binary (p < ½, e.g. 0.3 − 1), m^(p−1) would carry its
    rounding times |ln m| (3.8e-14 relative at m = 1e±300), so it is m^p·c/m there; otherwise m^(p−1)·c,
    or, where m^(p−1) is subnormal or overflows but the product need not, (h·c)·h with h = m^((p−1)/2)."""
    if Fraction(p) - 1 != Fraction(p - 1):
        zero = m == 0                                       # m^p/m is 0/0 there; m^(p−1) is exact (inf)
        safe = torch.where(zero, torch.ones_like(m), m)
        return torch.where(zero, torch.where(zero, m, safe) ** (p - 1) * c, safe ** p * c / safe)
    probe = m.detach() ** (p - 1)                           # only selects the form
    normal = (probe.abs() >= torch.finfo(m.dtype).tiny) & probe.isfinite()
    one = torch.ones_like(m)
    h = torch.where(normal, one, m) ** ((p - 1) / 2)
    return torch.where(normal, torch.where(normal, m, one) ** (p - 1) * c, (h * c) * h)


def dk_frechet(U: torch.Tensor, D: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """U (D ∘ Uᵀ sym(G) U) Uᵀ: the Fréchet derivative of A ↦ g(A) at A = U Λ Uᵀ applied to sym(G), D
    the divided differences of g on Λ (Daleckii–Krein; Higham 2008, Thm. 3.11) — which is also the
    gradient of ⟨G, g(A)⟩. Plain torch ops, so a backward built on it can be differentiated."""
    return U @ (D * (U.mT @ _xp.sym(G) @ U)) @ U.mT


def dk_second_frechet(U, lam, X, Y, fn: str, p: float | None = None) -> torch.Tensor:
    """L₂(sym X, sym Y) = U (N + Nᵀ) Uᵀ at A = U diag(λ) Uᵀ, N_ab = Σ_c g[λ_a, λ_c, λ_b] X̃_ac Ỹ_cb (the
    module docstring's M is N + Nᵀ: g[·,·,·] is symmetric and X̃, Ỹ are), by matrix products alone.

    Each g[λ_a, λ_c, λ_b] is taken in a form without cancellation: the quotient over the triple's
    widest pair, g[x, y, z] = (g[x, y] − g[y, z])/(x − z) (cancellation ≤ about 1/τ), when that pair is
    separated (|x − z| > τ·max, τ = :func:`_near_tau`); otherwise (all three near) the Taylor series of g
    about λ_a, λ_a^{p−2} Σ_{n≥2} a_n Σ_{j+l=n−2} y_ac^j y_ab^l with y_ac = (λ_c − λ_a)/λ_a and a_n the
    coefficients of g(1 + y) (log: λ_a^{−2}, (−1)^{n+1}/n; x^p: binom(p, n); √: p = ½). Which pair is
    widest depends only on where λ_c lies against λ_a and λ_b (below both, between, above both), and
    each of those masks factors into an (a, c) and a (c, b) part, so every case is a sum of products
    like ((D∘X̃')(Ỹ'))_ab with X̃', Ỹ' masked and scaled copies of X̃, Ỹ (:func:`second_products`).
    """
    Xt, Yt = U.mT @ _xp.sym(X) @ U, U.mT @ _xp.sym(Y) @ U
    N = second_products(lam, Xt, Yt, fn, p)
    return U @ (N + N.mT) @ U.mT


def second_products(lam, Xt, Yt, fn: str, p: float | None = None) -> torch.Tensor:
    """N_ab = Σ_c g[λ_a, λ_c, λ_b] Xt_ac Yt_cb for any (not only symmetric) Xt, Yt in the eigenbasis, by
    :func:`dk_second_frechet`'s cancellation-free cases."""
    p = _exponent(p)
    D = eigen_divided_differences(lam, fn, p)
    la, lb = lam[..., :, None], lam[..., None, :]          # (a, b) — also (a, c) and (c, b) below
    gap = la - lb
    near = gap.abs() <= _near_tau(fn, p) * torch.maximum(la.abs(), lb.abs())
    one, zero = torch.ones_like(gap), torch.zeros_like(gap)
    V = torch.where(near, zero, 1 / torch.where(near, one, gap))    # V_ij = 1/(λ_i − λ_j), 0 if near
    fl = lambda m: m.to(Xt.dtype)  # noqa: E731
    below, above = fl(lb <= la), fl(lb >= la)              # [λ_c ≤ λ_a] as an (a, c) mask, …
    below_b, above_b = below.mT, above.mT                  # … [λ_c ≤ λ_b] as a (c, b) mask
    strictly_below, strictly_above = 1 - above, 1 - below

    def pair(XX, YY):                                      # Σ_c (D_ac − D_cb) XX_ac YY_cb
        return (D * XX) @ YY - XX @ (D * YY)

    # λ_a ≥ λ_b: below both → widest (c, a); above both → (b, c); between → (a, b)
    XA, YB = V.mT * below * Xt, below_b * Yt               # V_ca as an (a, c) factor
    low_a = XA @ (D * YB) - D * (XA @ YB)
    XH, YC = above * Xt, -V * above_b * Yt                 # −V_cb = V_bc as a (c, b) factor
    high_a = D * (XH @ YC) - (D * XH) @ YC
    mid_a = V * pair(strictly_below * Xt, strictly_above.mT * Yt)
    # λ_a < λ_b: below both → widest (c, b); above both → (a, c); between → (a, b)
    XL, YB2 = below * Xt, V * below_b * Yt                 # V_cb as a (c, b) factor
    low_b = (D * XL) @ YB2 - D * (XL @ YB2)
    XD, YH = V * above * Xt, above_b * Yt                  # V_ac as an (a, c) factor
    high_b = D * (XD @ YH) - XD @ (D * YH)
    mid_b = V * pair(strictly_above * Xt, strictly_below.mT * Yt)
    N = torch.where(la >= lb, low_a + high_a + mid_a, low_b + high_b + mid_b)
    # all three near: the series about λ_a, Σ_j ((P_j ∘ X̃)(near ∘ Ỹ)) ∘ R_j, P_j = [near] y^j
    at_zero = la == 0
    y = torch.where(at_zero, zero, (lb - la) / torch.where(at_zero, one, la))   # y[a, c] = (λ_c − λ_a)/λ_a
    coef = _taylor_coefficients(fn, p)
    Yn = fl(near) * Yt
    Pj, series = fl(near), zero
    for j in range(_TERMS):
        Rj = torch.full_like(y, coef[-1])
        for c in reversed(coef[j:-1]):                     # Horner in y_ab
            Rj = Rj * y + c
        series = series + ((Pj * Xt) @ Yn) * Rj
        Pj = Pj * y
    power = -2.0 if fn == "log" else (0.5 if fn == "sqrt" else p) - 2.0
    scale = torch.where(at_zero, zero, torch.where(at_zero, one, la) ** power)
    q0 = (fl(near) * Xt) @ Yn
    zero_triples = torch.where(q0 == 0, zero, _second_at_zero(fn, p, la) * q0)  # g''(0) = ∞ times an exact 0
    return N + torch.where(near, torch.where(at_zero, zero_triples, scale * series), zero)


def _taylor_coefficients(fn, p):
    """a_2 … a_{_TERMS+1} of g(1 + y) = Σ a_n yⁿ (log: (−1)^{n+1}/n; x^p: binom(p, n); √: p = ½)."""
    if fn == "log":
        return [(-1) ** (n + 1) / n for n in range(2, _TERMS + 2)]
    if fn not in FUNCTIONS:
        raise _unknown(fn)
    p = 0.5 if fn == "sqrt" else p
    coef, out = p * (p - 1) / 2, []
    for n in range(2, _TERMS + 2):
        out.append(coef)
        coef = coef * (p - n) / (n + 1)
    return out


def _second_at_zero(fn, p, like):
    """g''(0)/2 (all three points 0): −∞ for log and √, binom(p, 2)·0^{p−2} for x^p."""
    if fn != "power":
        return torch.full_like(like, -torch.inf)
    binom = p * (p - 1) / 2
    return torch.zeros_like(like) if binom == 0 else binom * torch.zeros_like(like) ** (p - 2)
