"""Second divided differences g[x, y, z] against 60-digit mpmath values (ties, near-ties, far points),
the polynomial closed forms as a property, and the second-order Daleckii–Krein formula against
finite differences of the first-order one."""

import mpmath
import pytest
import torch
from hypothesis import given, settings, strategies as st

from stabkit.layers import divided_differences as dd

D = torch.float64
G_FUNCTIONS = [("log", None), ("sqrt", None), ("power", 0.5), ("power", -0.5), ("power", 3.0), ("power", -2.5)]
G_IDS = ["log", "sqrt", "p=0.5", "p=-0.5", "p=3", "p=-2.5"]


def _g_mp(fn, p):
    return {"log": mpmath.log, "sqrt": mpmath.sqrt}.get(fn, lambda x: x ** p)


def _second_mp(fn, p, pts):
    """g[x, y, z] in 60 digits: the confluent cases from derivatives, else the difference quotients."""
    g = _g_mp(fn, p)
    with mpmath.workdps(60):
        x, y, z = sorted(mpmath.mpf(t) for t in pts)
        if x == z:
            return mpmath.diff(g, x, 2) / 2

        def first(a, b):
            return mpmath.diff(g, a) if a == b else (g(a) - g(b)) / (a - b)
        return (first(y, z) - first(x, y)) / (z - x)


TRIPLES = {
    "exact tie": (1.5, 1.5, 1.5),
    "double tie": (1.0, 1.0, 3.0),
    "near tie 1e-9": (1.0, 1.0 + 1e-9, 1.0 + 3e-9),
    "near tie 1e-4": (2.0, 2.0 + 1e-4, 2.0 - 2e-4),
    "just inside the series": (0.97, 1.0, 0.985),         # spread 0.03 ≤ τ = 1/32
    "just outside the series": (0.96, 1.0, 0.98),
    "cluster and a far point": (1e-3, 1e-3 * (1 + 1e-7), 10.0),
    "far": (0.5, 2.0, 7.0),
}


@pytest.mark.parametrize("fn, p", G_FUNCTIONS, ids=G_IDS)
@pytest.mark.parametrize("pts", list(TRIPLES.values()), ids=list(TRIPLES))
def test_second_divided_difference_matches_mpmath(fn, p, pts):
    x, y, z = (torch.tensor(t, dtype=D) for t in pts)
    got = dd.second_divided_differences(x, y, z, fn, p).item()
    expected = float(_second_mp(fn, p, pts))
    # cancellation-free: the far branch loses at most about a factor 1/τ = 32 to rounding of g[·,·]
    assert got == pytest.approx(expected, rel=1e-13, abs=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=3), st.sampled_from([0, 1, 2]))
def test_second_divided_difference_of_polynomials_is_their_closed_form(pts, tie):
    """x³: g[x, y, z] = x + y + z; x²: 1 — on any points, ties included (``tie`` copies one point)."""
    pts = list(pts)
    pts[tie] = pts[(tie + 1) % 3]
    x, y, z = (torch.tensor(t, dtype=D) for t in pts)
    assert dd.second_divided_differences(x, y, z, "power", 3.0).item() == pytest.approx(sum(pts), rel=1e-12)
    assert dd.second_divided_differences(x, y, z, "power", 2.0).item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("fn, p", G_FUNCTIONS, ids=G_IDS)
def test_all_zero_points_give_the_second_derivative_at_zero(fn, p):
    z = torch.zeros((), dtype=D)
    got = dd.second_divided_differences(z, z, z, fn, p).item()
    if fn != "power":
        assert got == -float("inf")                       # g''(0) of log and √
    else:                                                 # binom(p, 2)·0^(p−2)
        assert got == (0.0 if p > 2 else p * (p - 1) / 2 * float("inf"))


@pytest.mark.parametrize("fn, p", G_FUNCTIONS, ids=G_IDS)
@pytest.mark.parametrize("lam", [[0.5, 1.0, 2.0, 4.0], [1.0, 1.0, 1.0 + 1e-10, 3.0]], ids=["separated", "tie"])
def test_second_frechet_is_the_derivative_of_the_first(fn, p, lam):
    """d/dt L_{A+tH}(X) at t = 0 (central differences of dk_frechet, its λ, U from eigh of A + tH)
    equals L₂(X, H); under vmap (every pair summed term by term, in blocks of one middle index) it
    is the same as the default path (matrix products for the separated pairs)."""
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
    dense = torch.func.vmap(lambda *t: dd.dk_second_frechet(*t, fn, p, block_elems=1))(U[None], w[None], X[None], H[None])
    torch.testing.assert_close(dense[0], got, rtol=1e-12, atol=1e-12)
