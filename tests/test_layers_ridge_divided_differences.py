"""h(x) = g[x + ε, ε] and its divided differences (g's with ε added) against mpmath at high precision,
over points that take every branch: x = 0, x ≪ ε (the series about ε), either side of the series'
threshold x = τε/(1 − τ), ties, near-ties, x ≫ ε."""

import mpmath as mp
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

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


# Property test against an independent reference: the recursion on sorted points with g^(k)/k! at exact ties
# (no nudging), in as many digits as the closest pair's relative gap costs over three levels.
PROPERTY_FUNCTIONS = [("log", None), ("sqrt", None)] + [("power", p) for p in
                                                         (-2.0, -1.0, -0.5, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 20.5, -7.3)]
RATIOS = [0.0, 1e-12, 1e-4, 1.0, 1e4, 1e12, "switch", "tiny"]      # x/ε; "switch": τ/(1 − τ), the series' edge
GAPS = [0.0, 1e-16, 1e-12, 1e-8, 1e-4]                               # relative gaps of (near-)ties


def _taylor_coefficient(fn, p, z, k):
    """g^(k)(z)/k!."""
    if fn == "log":
        return mp.log(z) if k == 0 else (-1) ** (k + 1) * z ** (-k) / k
    q = mp.mpf(1) / 2 if fn == "sqrt" else mp.mpf(p)
    return mp.binomial(q, k) * z ** (q - k)


def _exact_dd(fn, p, points):
    """g[points] for exact (mpf) points, any multiplicity."""
    pts = sorted(points)
    with mp.workprec(4000):
        gaps = [abs(b - a) / b for a, b in zip(pts, pts[1:]) if b != a]
    digits = 50 + 3 * int(max([0] + [-mp.log10(gap) for gap in gaps]))
    with mp.workdps(digits):
        def table(i, j):
            if pts[i] == pts[j]:
                return _taylor_coefficient(fn, p, pts[i], j - i)
            return (table(i + 1, j) - table(i, j - 1)) / (pts[j] - pts[i])
        return table(0, len(pts) - 1)


@st.composite
def _ridge_case(draw):
    """(fn, p, dtype, x (2 × 3), ε (2 × 1)): two batch rows with their own ε, points anywhere from 0 to 1e12·ε."""
    fn, p = draw(st.sampled_from(PROPERTY_FUNCTIONS))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    span = 6 if dtype == torch.float32 else 30
    rows, epss = [], []
    for _ in range(2):
        eps = float(torch.tensor(10.0 ** draw(st.integers(-span, span)), dtype=dtype))
        tau = rdd._near_tau(fn, p)
        row = []
        for _ in range(3):
            ratio = draw(st.sampled_from(RATIOS))
            if ratio == "tiny":
                x = torch.finfo(dtype).tiny * draw(st.sampled_from([2.0 ** -20, 1.0]))
            else:
                x = eps * (tau / (1 - tau) * draw(st.sampled_from([1 - 1e-6, 1.0, 1 + 1e-6])) if ratio == "switch" else ratio)
            if row and draw(st.booleans()):                  # a (near-)tie of an earlier point
                x = row[-1] * (1 + draw(st.sampled_from(GAPS)))
            row.append(x)
        rows.append(row)
        epss.append([eps])
    return fn, p, dtype, torch.tensor(rows, dtype=dtype), torch.tensor(epss, dtype=dtype)


def _normal(value, dtype, margin=1e6):
    return torch.finfo(dtype).tiny * margin < abs(value) < torch.finfo(dtype).max / margin


@given(_ridge_case())
@settings(max_examples=40, deadline=None)
def test_ridge_kernels_match_exact_divided_differences(case):
    """h, h[x_i, x_j] and N_ab = Σ_c h[x_a, x_c, x_b] X_ac Y_cb (relative to Σ_c |terms|) against exact divided
    differences of g with ε, on x = 0, ≪ ε, at the series' edge, ≫ ε, ties and near-ties, per-row ε. Measured worst
    (float64 | float32, ulps): h 19 | 45, h[·,·] 555 | 490 (quotients just past the edge cancel ≤ ~2/τ), N 6.2e4 |
    6.4e4 (that quotient again, divided by a gap ~τμ: ~1/(τ²|q − 2|)); the bounds leave ≥ 6× and float32's pow,
    which rounds p (|p ln μ|·u)."""
    fn, p, dtype, x, eps = case
    for e, top in zip(eps[:, 0], x.amax(-1)):   # g^(k)/k!, k ≤ 3, at ε and the largest μ normal numbers: the layer
        for at in (float(e), float(e) + float(top)):   # scales so (range_scale, ridge_scale); near under- or overflow
            for k in range(1, 4):                      # a kernel loses digits to it that no product needs
                size = abs(_taylor_coefficient(fn, p, mp.mpf(at), k))
                assume(size == 0 or _normal(size, dtype, 1e20))
    u = torch.finfo(dtype).eps
    pow_error = 0.0 if dtype == torch.float64 or fn != "power" else abs(p) * 2 * float(torch.log(x + eps).abs().max() + 1)
    X = torch.linspace(-1, 1, 9, dtype=dtype).reshape(3, 3).expand(2, 3, 3)
    Y = torch.tensor([[0.5, -2.0, 1.0], [1.5, 0.25, -1.0], [-0.75, 1.0, 2.0]], dtype=dtype).expand(2, 3, 3)
    h = rdd.ridge_values(x, fn, p, eps)
    h2 = rdd.ridge_divided_differences(x, fn, p, eps)
    N = rdd.ridge_second_products(x, X, Y, fn, p, eps)
    cancel = 1 if fn != "power" or p == 2 else 1 + 1 / abs(p - 2)
    for r in range(2):
        e = mp.mpf(float(eps[r, 0]))
        with mp.workprec(4000):                          # μ exact
            mu = [mp.mpf(float(v)) + e for v in x[r]]
        H = {}
        for i in range(3):
            H[i] = _exact_dd(fn, p, [mu[i], e])
            if _normal(H[i], dtype):
                assert abs(float(h[r, i]) - H[i]) <= (16 + 2 * abs(p or 0) + pow_error) * u * abs(H[i]), (r, i)
            for j in range(3):
                ref = _exact_dd(fn, p, [mu[i], mu[j], e])
                if _normal(ref, dtype):
                    assert abs(float(h2[r, i, j]) - ref) <= (2000 + 100 * abs(p or 0) + 64 * pow_error) * u * abs(ref)
                elif fn == "power" and p == 1.0:                # h ≡ 1: 0, but a quotient (1 − 1 ± u)/x_hi
                    assert abs(float(h2[r, i, j])) <= 16 * u / max(float(x[r, i]), float(x[r, j]), 1e-300)
        for a in range(3):
            for b in range(3):
                terms = [_exact_dd(fn, p, [mu[a], mu[c], mu[b], e]) * mp.mpf(float(X[r, a, c])) * mp.mpf(float(Y[r, c, b]))
                         for c in range(3)]
                size = mp.fsum(abs(t) for t in terms)
                if fn == "power" and p in (1.0, 2.0):
                    assert float(N[r, a, b]) == 0.0
                elif _normal(size, dtype):
                    bound = (4e5 * cancel + 1e4 * pow_error) * u * size
                    assert abs(float(N[r, a, b]) - mp.fsum(terms)) <= bound, (r, a, b, float(N[r, a, b]))
