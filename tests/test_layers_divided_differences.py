"""The second-order Daleckii–Krein formula: against 60-digit mpmath divided differences (ties,
near-ties, far points), the closed forms of x² and x³ as a property, and finite differences of the
first-order formula."""

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from stabkit.layers import divided_differences as dd

D = torch.float64
G_FUNCTIONS = [("log", None), ("sqrt", None), ("power", 0.5), ("power", -0.5), ("power", 3.0), ("power", -2.5)]
G_IDS = ["log", "sqrt", "p=0.5", "p=-0.5", "p=3", "p=-2.5"]

SPECTRA = {
    "exact triple tie": [1.5, 1.5, 1.5, 4.0],
    "double tie": [1.0, 1.0, 3.0],
    "near tie 1e-9": [1.0, 1.0 + 1e-9, 1.0 + 3e-9, 2.0],
    "near tie 1e-4": [2.0 - 2e-4, 2.0, 2.0 + 1e-4],
    "inside the series": [0.97, 0.985, 1.0],            # spreads ≤ τ = 1/32
    "just separated": [0.96, 0.98, 1.0],
    "chain of near pairs": [1.0, 1.025, 1.05, 1.075],    # neighbours near, ends separated
    "cluster and a far point": [1e-3, 1e-3 * (1 + 1e-7), 1e-3 * (1 + 3e-7), 10.0],
    "wide spread": [1e-8, 1e-4, 1.0, 1e4],
}


def _second_mp(fn, p, pts):
    """g[x, y, z] at mpmath's working precision: confluent cases by derivatives, else quotients."""
    g = {"log": mpmath.log, "sqrt": mpmath.sqrt}.get(fn, lambda t: t ** p)
    x, y, z = sorted(pts)
    if x == z:
        return mpmath.diff(g, x, 2) / 2

    def first(a, b):
        return mpmath.diff(g, a) if a == b else (g(a) - g(b)) / (a - b)
    return (first(y, z) - first(x, y)) / (z - x)


@pytest.mark.parametrize("fn, p", G_FUNCTIONS, ids=G_IDS)
@pytest.mark.parametrize("lam", list(SPECTRA.values()), ids=list(SPECTRA))
def test_second_frechet_matches_mpmath(fn, p, lam):
    """A = diag(λ) (U = I): L₂(X, Y)_ab = Σ_c g[λ_a, λ_c, λ_b] (X_ac Y_cb + Y_ac X_cb), each g[·,·,·]
    in 60 digits. Every regime (ties, near-ties, the series/quotient boundary, a chain of near
    pairs, 12 decades of spread) holds to 1e-12."""
    d = len(lam)
    gen = torch.Generator().manual_seed(d)
    X, Y = (torch.randn(d, d, dtype=D, generator=gen) for _ in range(2))
    X, Y = (X + X.T) / 2, (Y + Y.T) / 2
    with mpmath.workdps(60):
        w = [mpmath.mpf(t) for t in lam]
        ref = torch.tensor([[float(sum(_second_mp(fn, p, (w[a], w[c], w[b]))
                                       * (float(X[a, c]) * float(Y[c, b]) + float(Y[a, c]) * float(X[c, b]))
                                       for c in range(d))) for b in range(d)] for a in range(d)], dtype=D)
    got = dd.dk_second_frechet(torch.eye(d, dtype=D), torch.tensor(lam, dtype=D), X, Y, fn, p)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())


_EIGENVALUES = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


@settings(max_examples=100, deadline=None)
@given(st.lists(_EIGENVALUES, min_size=1, max_size=6), st.integers(0, 5), st.integers(0, 2 ** 31 - 1))
def test_second_frechet_of_polynomials_is_their_closed_form(lam, tie, seed):
    """x³: L₂(X, Y) = AXY + XAY + XYA + AYX + YAX + YXA; x²: XY + YX — for any spectrum, zeros,
    negative eigenvalues and ties included (``tie`` copies one eigenvalue onto its neighbour), any
    orthogonal U."""
    lam = list(lam)
    if len(lam) > 1:
        lam[tie % len(lam)] = lam[(tie + 1) % len(lam)]
    d = len(lam)
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, d, dtype=D, generator=gen))
    X, Y = (torch.randn(d, d, dtype=D, generator=gen) for _ in range(2))
    X, Y = (X + X.T) / 2, (Y + Y.T) / 2
    w = torch.tensor(lam, dtype=D)
    A = U @ torch.diag(w) @ U.T
    cubic = A @ X @ Y + X @ A @ Y + X @ Y @ A + A @ Y @ X + Y @ A @ X + Y @ X @ A
    atol = 1e-12 * (1 + max(map(abs, lam))) * X.abs().max().item() * Y.abs().max().item() * d ** 2
    torch.testing.assert_close(dd.dk_second_frechet(U, w, X, Y, "power", 3.0), cubic, rtol=1e-10, atol=atol)
    torch.testing.assert_close(dd.dk_second_frechet(U, w, X, Y, "power", 2.0), X @ Y + Y @ X, rtol=1e-10, atol=atol)


@pytest.mark.parametrize("fn, p", G_FUNCTIONS, ids=G_IDS)
@pytest.mark.parametrize("lam", [[0.5, 1.0, 2.0, 4.0], [1.0, 1.0, 1.0 + 1e-10, 3.0]], ids=["separated", "tie"])
def test_second_frechet_is_the_derivative_of_the_first(fn, p, lam):
    """d/dt L_{A+tH}(X) at t = 0 (central differences of dk_frechet, its λ, U from eigh of A + tH)
    equals L₂(X, H); batched, each matrix's own."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=D, generator=gen))
    A = Q @ torch.diag(torch.tensor(lam, dtype=D)) @ Q.T
    X, H = (torch.randn(4, 4, dtype=D, generator=gen) for _ in range(2))

    def first(M):
        w, U = torch.linalg.eigh(M)
        return dd.dk_frechet(U, dd.divided_differences_of(w, (w[:, None] - w[None, :]).abs(), fn, p), X)

    h = 1e-5
    Hs = (H + H.T) / 2
    fd = (first(A + h * Hs) - first(A - h * Hs)) / (2 * h)
    w, U = torch.linalg.eigh(A)
    got = dd.dk_second_frechet(U, w, X, H, fn, p)
    torch.testing.assert_close(got, fd, rtol=1e-7, atol=1e-7)
    batched = dd.dk_second_frechet(torch.stack([U, -U]), torch.stack([w, w]), X, H, fn, p)
    torch.testing.assert_close(batched, torch.stack([got, got]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_spread_of_twelve_decades_keeps_the_closed_form(dtype, rtol):
    """λ = 1e-8 … 1e4, x²: L₂ = XY + YX. A quotient over a pair that is not the widest of its triple
    (λ_c = 1e4 beside λ_a, λ_b ≤ 1e-2) cancels about λ_c/|λ_a − λ_b|; the widest-pair form does not."""
    gen = torch.Generator().manual_seed(0)
    X, Y = (torch.randn(4, 4, dtype=torch.float64, generator=gen) for _ in range(2))
    X, Y = ((M + M.T) / 2 for M in (X, Y))
    w = torch.tensor([1e-8, 3e-8, 1e-2, 1e4], dtype=dtype)
    got = dd.dk_second_frechet(torch.eye(4, dtype=dtype), w, X.to(dtype), Y.to(dtype), "power", 2.0)
    expected = X @ Y + Y @ X
    assert ((got.double() - expected).norm() / expected.norm()).item() < rtol


def test_constant_and_identity_powers_on_zero_eigenvalues():
    """x⁰ and x¹ on a spectrum with a tie at 0 and a negative eigenvalue: g[·,·] is 0 and 1, and
    L₂ is 0 (x⁰ was NaN at the tie at 0, from 0·0⁻¹)."""
    w = torch.tensor([0.0, 0.0, 1.0, -2.0], dtype=D)
    gen = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(4, 4, dtype=D, generator=gen))
    X, Y = (torch.randn(4, 4, dtype=D, generator=gen) for _ in range(2))
    for p, value in ((0.0, 0.0), (1.0, 1.0)):
        torch.testing.assert_close(dd.eigen_divided_differences(w, "power", p), torch.full((4, 4), value, dtype=D))
        torch.testing.assert_close(dd.dk_second_frechet(U, w, X, Y, "power", p), torch.zeros(4, 4, dtype=D),
                                   rtol=0, atol=1e-14)


def _assert_second_frechet(lam, p, second, seed, rtol):
    """dk_second_frechet of x^p at U = I, λ = ``lam`` for random symmetric X, Y equals Daleckii–Krein's
    M_ab = Σ_c g[λ_a, λ_c, λ_b] (X_ac Y_cb + Y_ac X_cb) from the given second divided differences."""
    d = len(lam)
    gen = torch.Generator().manual_seed(seed)
    X, Y = (torch.randn(d, d, dtype=D, generator=gen) for _ in range(2))
    X, Y = (X + X.T) / 2, (Y + Y.T) / 2
    ref = torch.tensor([[sum(second[a][c][b] * (X[a, c] * Y[c, b] + Y[a, c] * X[c, b]).item() for c in range(d))
                         for b in range(d)] for a in range(d)], dtype=D)
    got = dd.dk_second_frechet(torch.eye(d, dtype=D), torch.tensor(lam, dtype=D), X, Y, "power", p)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.parametrize("p", [100.0, -100.0, 1000.0])
@pytest.mark.parametrize("lam", [[0.97, 0.985, 1.0], [1.0, 1.0 + 1e-3, 1.002], [1.0, 1.0 + 1e-12, 1.01], [1.0, 1.2, 1.5]],
                         ids=["1/32 wide", "1e-3 apart", "tie and 1e-2", "separated"])
def test_large_powers_match_mpmath(p, lam):
    """x^p for |p| ≫ 1: the series' terms grow like (|p|·y)ⁿ/n!, so the near test narrows to
    1/(2|p|) (at 1/32, p = 1000 was 1e8 off). First and second divided differences to 1e-13."""
    d = len(lam)
    with mpmath.workdps(60):
        w = [mpmath.mpf(t) for t in lam]
        first = torch.tensor([[float(mpmath.diff(lambda t: t ** p, w[a]) if a == b else (w[a] ** p - w[b] ** p) / (w[a] - w[b]))
                               for b in range(d)] for a in range(d)], dtype=D)
        second = [[[float(_second_mp("power", p, (w[a], w[c], w[b]))) for b in range(d)] for c in range(d)] for a in range(d)]
    torch.testing.assert_close(dd.eigen_divided_differences(torch.tensor(lam, dtype=D), "power", p), first, rtol=1e-13, atol=0)
    _assert_second_frechet(lam, p, second, seed=d, rtol=1e-13)


@pytest.mark.parametrize("p, mu", [(100.0, 1e-3), (3.0, 1e-120), (2.0, 1e300)],
                         ids=["p=100 at 1e-3", "p=3 at 1e-120", "p=2 at 1e300"])
@pytest.mark.parametrize("rel", [1e-15, 1e-3])
def test_near_pair_beside_underflow_or_overflow_of_mu_to_the_p(p, mu, rel):
    """g[μ, μ(1 + rel)] for x^p where μ^p under- or overflows but g[·,·] ≈ p μ^(p−1) does not: the
    expm1 form was μ^p expm1(t)/Δ, whose μ^p·expm1(t) underflowed (p = 100 at 1e-3: 8e-12 off at rel
    1e-15; p = 3 at 1e-120: 0) or μ^p overflowed (inf); as μ^(p−1) expm1(t)/(Δ/μ) it is exact."""
    a = torch.tensor(mu, dtype=D)
    b = a * (1 + rel)
    with mpmath.workdps(50):
        x, y = mpmath.mpf(a.item()), mpmath.mpf(b.item())
        truth = float((x ** p - y ** p) / (x - y))
    got = dd.pair_divided_differences(a, b, (b - a).abs(), "power", p).item()
    assert got == pytest.approx(truth, rel=1e-14, abs=0)


def _first_mp(p, a, b):
    """g[a, b] of x^p at 50 digits (p exactly as the float given, not p − 1 rounded)."""
    with mpmath.workdps(50):
        x, y, P = mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(p)
        return P * x ** (P - 1) if a == b else (x ** P - y ** P) / (x - y)


_FAR_POINTS = [1.2345 * 10.0 ** e for e in range(-300, 301, 25)]


@pytest.mark.parametrize("p", [-0.7, 0.3, 0.5, 2.0, 2.5, 3.0, 100.0])
def test_far_pairs_are_finite_where_representable_and_inf_where_they_overflow(p):
    """Pairs 1e-300 … 1e300 (float64): g[μ_i, μ_j] within 1e-15 of 50-digit mpmath wherever that is a
    normal number, ±inf exactly where it overflows. The plain (M^p − m^p)/Δ was NaN where both powers
    overflow (p = 100 at 1e5 and 1.03e5: inf − inf), inf where only M^p does but the quotient is
    finite (p = 2.5 at 1e150 and 3e150), and 0 where M^p underflows (p = 2 at 1e-300 and 1e-294)."""
    pairs = [(a, b) for a in _FAR_POINTS for b in _FAR_POINTS if a < b] + [(1e5, 1.03e5), (1e150, 3e150)]
    a = torch.tensor([x for x, _ in pairs], dtype=D)
    b = torch.tensor([y for _, y in pairs], dtype=D)
    got = dd.pair_divided_differences(a, b, b - a, "power", p)
    big, tiny = torch.finfo(D).max, torch.finfo(D).tiny
    for (x, y), value in zip(pairs, got.tolist()):
        truth = _first_mp(p, x, y)
        if abs(truth) > big:
            assert value == (math.inf if truth > 0 else -math.inf), (x, y, value)
        elif abs(truth) >= tiny:
            assert abs(value - float(truth)) <= 1e-15 * abs(float(truth)), (x, y, value, float(truth))
        else:
            assert abs(value) <= 2 * tiny, (x, y, value)


@pytest.mark.parametrize("mu", [1e-300, 1e-100, 1.0, 1e100, 1e300])
@pytest.mark.parametrize("rel", [0.0, 1e-15, 1e-6, 1e-2])
def test_fractional_p_keeps_rounding_level_at_extreme_scales(mu, rel):
    """x^0.3 on a tie or near pair: 0.3 − 1 is not a binary number, and μ^(p−1) carried its rounding
    times |ln μ| (3.8e-14 relative at 1e±300); as μ^p/μ it is within 1e-15 of mpmath."""
    a = torch.tensor(mu, dtype=D)
    b = a * (1 + rel)
    got = dd.pair_divided_differences(a, b, (b - a).abs(), "power", 0.3).item()
    truth = float(_first_mp(0.3, a.item(), b.item()))
    assert abs(got - truth) <= 1e-15 * abs(truth)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 1.5, 2.5])
def test_tie_at_zero_is_the_derivative_at_zero(p):
    """A tie at μ = 0 (a zero singular value of F with ε = 0) is g'(0) = p·0^(p−1): +inf for p < 1, 0 for
    p > 1 — not 0/0 from the μ^p/μ form that keeps a fractional p's rounding small elsewhere."""
    z = torch.zeros(1, dtype=D)
    got = dd.pair_divided_differences(z, z, z, "power", p).item()
    assert got == (math.inf if p < 1 else 0.0)


@pytest.mark.parametrize("p", [np.float64(0.3), np.float32(0.3), np.int64(3), np.float32(-2.5)], ids=repr)
def test_numpy_exponent_is_the_exponent_it_holds(p):
    """A numpy p, accepted as a real number by the layers' check (validation.is_real), is the number it
    holds: first and second divided differences against 50-digit mpmath at that exact value (numpy
    bools do not subtract, so sign(p) raised a TypeError, and float32 arithmetic would round p − 1)."""
    lam = [0.5, 0.5, 0.5 * (1 + 1e-9), 2.0]
    d, P = len(lam), float(p)
    with mpmath.workdps(50):
        w = [mpmath.mpf(t) for t in lam]
        first = torch.tensor([[_first_mp(P, lam[a], lam[b]) for b in range(d)] for a in range(d)], dtype=D)
        second = [[[float(_second_mp("power", P, (w[a], w[c], w[b]))) for b in range(d)] for c in range(d)]
                  for a in range(d)]
    torch.testing.assert_close(dd.eigen_divided_differences(torch.tensor(lam, dtype=D), "power", p), first,
                               rtol=1e-13, atol=0)
    _assert_second_frechet(lam, p, second, seed=0, rtol=1e-12)
