"""h(x) = g[x + ε, ε] and its divided differences (g's with ε added) against mpmath at high precision,
over points that take every branch: x = 0, x ≪ ε (the series about ε), either side of the series'
threshold x = τε/(1 − τ), ties, near-ties, x ≫ ε."""

import mpmath as mp
import pytest
import torch

from stabkit.layers import ridge_divided_differences as rdd

D = torch.float64
FUNCTIONS = [("log", None), ("sqrt", None), ("power", -0.5), ("power", 0.3), ("power", 2.0), ("power", 2.5),
             ("power", -2.5), ("power", 20.5)]
IDS = ["log", "sqrt", "p=-0.5", "p=0.3", "p=2", "p=2.5", "p=-2.5", "p=20.5"]
EPS = 1e-3
THRESHOLD = EPS * (1 / 32) / (1 - 1 / 32)  # τε/(1 − τ), τ = 1/32: below it a point is "near ε"
POINTS = [0.0, 1e-12, 1e-7, 0.9 * THRESHOLD, 1.1 * THRESHOLD, 1e-3, 1e-3 * (1 + 1e-9), 0.5, 0.5, 40.0]


def _g(fn, p):
    return {"log": mp.log, "sqrt": mp.sqrt}.get(fn, lambda t: t ** mp.mpf(p))


def _mp_dd(g, points):
    """g[points] (any multiplicity) at 250 digits: repeated points moved apart by 1e-60 relative, so the
    table's ≤ 3 levels of quotients lose ≤ 180 digits and the move changes it by ~1e-60."""
    with mp.workdps(250):
        pts, seen = [], {}
        for x in points:
            k = seen.get(x, 0)
            seen[x] = k + 1
            pts.append(x * (1 + k * mp.mpf("1e-60")) + k * mp.mpf("1e-300"))
        pts.sort()
        table = [g(x) for x in pts]
        for level in range(1, len(pts)):
            table = [(table[i + 1] - table[i]) / (pts[i + level] - pts[i]) for i in range(len(table) - 1)]
        return table[0]


def _mu(x):
    return mp.mpf(x) + mp.mpf(EPS)


def _eps():
    return torch.tensor([EPS], dtype=D)


@pytest.mark.parametrize("fn, p", FUNCTIONS, ids=IDS)
def test_h_and_its_first_divided_differences_match_mpmath(fn, p):
    g, x = _g(fn, p), torch.tensor(POINTS, dtype=D)
    got_h = rdd.ridge_values(x, fn, p, _eps())
    got = rdd.ridge_divided_differences(x, fn, p, _eps())
    for i, a in enumerate(POINTS):
        ref = _mp_dd(g, [_mu(a), mp.mpf(EPS)])
        assert float(abs(float(got_h[i]) - ref) / abs(ref)) < 1e-14, (a, float(got_h[i]), float(ref))
        for j, b in enumerate(POINTS):
            ref = _mp_dd(g, [_mu(a), _mu(b), mp.mpf(EPS)])
            assert float(abs(float(got[i, j]) - ref) / abs(ref)) < 1e-12, (a, b, float(got[i, j]), float(ref))


@pytest.mark.parametrize("fn, p", FUNCTIONS, ids=IDS)
def test_second_products_match_the_third_divided_differences_in_mpmath(fn, p):
    """N_ab = Σ_c g[μ_a, μ_c, μ_b, ε] X_ac Y_cb for non-symmetric X, Y, each entry to 1e-11 of Σ_c |terms| (measured
    ≤ 1.9e-12: a quotient just past the threshold cancels ≤ about 1/τ = 32 of g[μ_a, μ_c, μ_b] and h[x_a, x_b],
    which are themselves quotients); x² exactly 0 (the quotient alone was ~1e-9 of 1/x there)."""
    g, x = _g(fn, p), torch.tensor(POINTS, dtype=D)
    n = len(POINTS)
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(n, n, dtype=D, generator=gen), torch.randn(n, n, dtype=D, generator=gen)
    got = rdd.ridge_second_products(x, X, Y, fn, p, _eps())
    T = [[[_mp_dd(g, [_mu(a), _mu(c), _mu(b), mp.mpf(EPS)]) for b in POINTS] for c in POINTS] for a in POINTS]
    for a in range(n):
        for b in range(n):
            terms = [T[a][c][b] * mp.mpf(float(X[a, c])) * mp.mpf(float(Y[c, b])) for c in range(n)]
            ref, size = mp.fsum(terms), mp.fsum(abs(t) for t in terms)
            if fn == "power" and p == 2.0:
                assert float(got[a, b]) == 0.0
            else:
                assert float(abs(float(got[a, b]) - ref) / size) < 1e-11, (a, b, float(got[a, b]), float(ref))


def test_names_of_h_do_not_reach_the_public_functions():
    """g's names are unchanged; an h is only named inside the ops (``ridge:<g>``)."""
    assert rdd.ridge_function("log") == "ridge:log"
    lam = torch.tensor([0.5, 2.0], dtype=D)
    assert torch.equal(rdd.values(lam, "log", None), torch.log(lam))
    with_eps = rdd.ridge_spectrum(lam, torch.tensor([EPS], dtype=D))
    assert torch.equal(rdd.values(with_eps, "ridge:log", None), rdd.ridge_values(lam, "log", None, _eps()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn, p", FUNCTIONS + [("power", 1.0), ("power", -7.3)], ids=IDS + ["p=1", "p=-7.3"])
def test_h_where_x_over_eps_is_subnormal_or_underflows_is_g_prime_of_eps(fn, p, dtype):
    """x/ε below the normal range (x = σ² of a σ ~ 1e-162 next to ε = 1; float32 σ ~ 1e-22): h(x) = g'(ε)(1 +
    O(|p| x/ε)) is g'(ε) to rounding. The quotient forms had x/ε with few digits or 0: float64 x = 2^−1074, ε = 1e3
    gave 0/0 = NaN for x^p; float32 x = 2^−149, ε = 1, x^−½ gave −0 for −½ (the end-to-end HVP 16–77 % off)."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([0.0, tiny * 2.0 ** -23 if dtype == torch.float32 else tiny * 2.0 ** -52, tiny / 8, tiny], dtype=dtype)
    for eps in (1.0, 1e3, 4.0):
        got = rdd.ridge_values(x, fn, p, torch.tensor([eps], dtype=dtype))
        slope = _mp_derivative(fn, p, eps)              # g'(ε): x/ε ≤ 2^−126 moves h by less than rounding
        if abs(slope) > torch.finfo(dtype).max:         # float32 x^20.5 at ε = 1e3
            continue
        assert torch.isfinite(got).all(), (eps, got)
        for value in got:
            assert abs(float(value) - slope) <= 4 * torch.finfo(dtype).eps * abs(slope), (eps, float(value), float(slope))


def _mp_derivative(fn, p, at):
    """g'(at) from its formula (log: 1/x, √: 1/(2√x), x^p: p·x^(p−1)), at 50 digits."""
    with mp.workdps(50):
        at = mp.mpf(at)
        return {"log": 1 / at, "sqrt": 1 / (2 * mp.sqrt(at))}.get(fn) or mp.mpf(p) * at ** (mp.mpf(p) - 1)
