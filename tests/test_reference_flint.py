"""The flint engine (``stabkit.reference._flint``): its float ↔ integer helpers, exact against
Fractions; exactly repeated eigenvalues (LAPACK modes, exact ties) resolved and certified from any
start basis, the group certificate honest against mpmath at 100 digits; the derivative bounds the
certificate takes from the loss; and the engine against the independent mpmath engine at moderate d."""

import dataclasses
from fractions import Fraction

import flint
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import reference as R
from stabkit import spectra
from stabkit.losses import make_loss
from stabkit.reference import _flint as F
from stabkit.reference import _flint_gradient, _flint_ints, _flint_refine
from stabkit.reference._common import as_exact_float64
from tests.conftest import build

finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), st.integers(0, 300))
def test_float_to_int_helpers_are_exact(values, s):
    a = np.array(values, dtype=np.float64)
    N, e = _flint_ints._float_exact_to_int(a)
    assert [Fraction(int(n)) / Fraction(2) ** e for n in N] == [Fraction(v) for v in values]
    if any(abs(Fraction(v)) * 2 ** s >= 2 ** 1024 for v in values):
        with pytest.raises(OverflowError):
            _flint_ints._round_to_int(a, s)
        return
    r = _flint_ints._round_to_int(a, s)
    assert [int(v) for v in r] == [round(Fraction(v) * 2 ** s) for v in values]  # half to even


big_ints = st.integers(-(2 ** 1100), 2 ** 1100) | st.integers(-(2 ** 70), 2 ** 70)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _hp_rel(g1, g2):
    with mpmath.workdps(120):
        return float(max(abs(x - y) for x, y in zip(g1, g2)) / max(abs(y) for y in g2))


# ----------------------------------------------------------------------------------------------
# exactly repeated eigenvalues in the float64 sense: LAPACK xLATMS modes 1 and 2


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("name", ["zca", "sqrt"])
def test_lapack_repeated_spectrum_certified(mode, name):
    """d − 1 (mode 1) or d − 1 (mode 2) eigenvalues equal before rounding, split by ~1e-16 after:
    the flint engine resolves the cluster and certifies the gradient rigorously."""
    A = spectra.make("lapack", 32, mode=mode).matrix
    truth = R.ground_truth(A, make_loss(name, 32), engine="flint", cache=False)
    assert truth.engine == "flint"
    assert truth.digits >= 20 and truth.certified


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("name", ["zca", "sqrt"])
def test_lapack_repeated_spectrum_matches_mpmath(mode, name):
    """d = 8: flint's certified result agrees with mpmath at 100 digits to ≥ 20 digits, and its
    claimed digits never exceed the true accuracy."""
    A = spectra.make("lapack", 8, mode=mode).matrix
    loss = make_loss(name, 8)
    g_fl, _, d_fl = R._hp_gradient(A, loss, "flint")
    g_mp, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=100)
    err = _hp_rel(g_fl, g_mp)
    assert d_fl >= 20
    assert err <= 1e-20
    assert err <= 10.0 ** -d_fl


def _kron3():
    return np.kron(np.eye(3), np.array([[2.0, 0.5], [0.5, 3.0]]))  # {(5 ± √2)/2} each 3 times


@pytest.mark.parametrize("case", ["exact-ties", "lapack1-low", "lapack2-low", "lapack1-lower"])
@pytest.mark.parametrize("name", ["zca", "sqrt", "log"])
def test_group_bound_is_honest(case, name):
    """The invariant-subspace (group) certificate never claims more digits than the true error,
    measured against mpmath at 100 digits: exact ties (the group's radius is the enclosure width
    only), and LAPACK spectra at a forced low precision where the ~1e-17 splits are not resolved
    (the group's radius includes the true splitting, bounded by the mean-value term)."""
    if case == "exact-ties":
        A, dps = _kron3(), None
    else:
        A = spectra.make("lapack", 8, mode=1 if "1" in case else 2).matrix
        dps = 8 if case.endswith("-low") else 4
    d = A.shape[0]
    loss = make_loss(name, d, seed=3)
    st = F.eig_states(as_exact_float64(A), dps=dps, cache=False)[0]
    assert np.isfinite(st["eps"]).all() and len(np.unique(st["grp"])) < d  # the group path is used
    g_fl, _, d_fl = R._hp_gradient(A, loss, "flint", _dps=dps)
    g_mp, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=100)
    err = _hp_rel(g_fl, g_mp)
    assert err <= 10.0 ** -d_fl
    assert d_fl >= (40 if case == "exact-ties" else 2)


@pytest.mark.parametrize("name,k", [("projector", 3), ("eigvec", 1)])
def test_weights_that_differ_inside_a_group_are_not_certified(name, k):
    """At a forced dps 3 the enclosures of λ = 1, 1 + 1e-14, 1 + 3e-14 overlap (one group) while the
    weights differ there (projector k = 3: 0, 0, 1; eigvec: random), so D⁰ is not constant on the
    group's blocks; the bound read one entry per block and certified 12.4 and 12.0 digits for
    ∂L/∂A ≈ 1e14 with 0 right. Truth: mpmath.eigsy at 160 digits and the formula written out."""
    from tests.test_reference_mpmath import _true_digits, _weighted_truth

    A = build([1.0, 1 + 1e-14, 1 + 3e-14, 2.0, 3.0], seed=6)
    loss = make_loss(name, 5, seed=2, k=k)
    st = F.eig_states(as_exact_float64(A), dps=3, cache=False)[0]
    assert np.isfinite(st["eps"]).all() and st["grp"][0] == st["grp"][2]  # one group, certified vectors
    hp, _, digits = R._hp_gradient(A, loss, "flint", _dps=3)
    assert digits <= _true_digits(hp, _weighted_truth(A, loss, 160), 160)


@pytest.mark.parametrize("name", ["zca", "eigvec"])
@pytest.mark.parametrize("case", ["weight-2^-950", "matrix-2^620"])
def test_tiny_gradient_is_not_falsely_certified(case, name):
    """A gradient near the float64 underflow (max|∂L/∂A| ~ 1e-286) put the bound's error terms below
    the float64 range, where they vanished: 60 digits certified, ~45 right.  Reference: the mpmath
    engine at 120 digits on the O(1) problem, through exact power-of-two laws (L is linear in the
    weight; zca's ∂L/∂A scales as α^-3/2 and eigvec's as α^-1 when A is scaled by α)."""
    A = build([0.5, 1.3, 2.0, 3.7], seed=4)
    G = make_loss(name, 4, seed=1).weight
    if case.startswith("weight"):
        As, Gs, factor = A, G * 2.0 ** -950, mpmath.mpf(2) ** -950
    else:
        As, Gs, factor = A * 2.0 ** 620, G, mpmath.mpf(2) ** (-930 if name == "zca" else -620)
    g_fl, _, d_fl = R._hp_gradient(As, make_loss(name, 4, seed=1, weight=Gs), "flint")
    g_mp, _, _ = R._hp_gradient(A, make_loss(name, 4, seed=1, weight=G), "mpmath", _dps=120)
    with mpmath.workdps(120):
        ref = [x * factor for x in g_mp]  # exact: a power of two
    err = _hp_rel(g_fl, ref)
    assert err <= 10.0 ** -d_fl
    assert d_fl >= R.MIN_DIGITS  # still certified


@pytest.mark.parametrize("spectrum", [[1.0, 2.0, 2.0, 2.0, 4.0], [0.5, 1.0, 1.0, 1.0, 1.0, 3.0]])
def test_repeated_eigenvalues_certified_from_any_start(spectrum):
    """A triple (quadruple) split only by rounding is resolved and certified whatever basis of the
    cluster the float64 eigh returns: seeded matrices, the start vectors rotated inside the cluster
    and perturbed (so the result does not hang on one LAPACK's rounding)."""
    lam = np.asarray(spectrum)
    cl = np.nonzero(lam == lam[1])[0]
    d = lam.size
    for seed in range(8):
        rng = np.random.default_rng(seed)
        A = as_exact_float64(build(lam, seed=seed))
        k = -int(np.frexp(np.abs(A).max())[1])
        A2 = np.ldexp(A, k)
        lam0, Q0 = np.linalg.eigh(A2)
        Z, _ = np.linalg.qr(rng.standard_normal((cl.size, cl.size)))
        Q0[:, cl] = Q0[:, cl] @ Z
        Q0 += rng.standard_normal(Q0.shape) * 10.0 ** rng.uniform(-15, -10)
        bits = F._choose_bits(lam0, None)
        last, _ = _flint_refine._refine(A2, bits, lam0, Q0)
        st = F._state_from_pass(last, bits, certify=True, k=k)
        loss = make_loss("zca", d, seed=2, k=2)
        g, scale, bound = _flint_gradient._gradient(st, loss, np.asarray(loss.weight, dtype=np.float64), True)
        assert bound is not None, seed
        assert _flint_gradient._digits_from(bound, g, scale) >= 20, seed
        # and the certified gradient is the true one (finite differences, independent of the engine)
        if seed < 2:
            assert rel(_flint_ints._to_float(g, scale), R.finite_difference_grad(A, loss)) <= 1e-12


def test_certificate_takes_the_derivative_bounds_from_the_loss():
    """A spectral loss carries bounds on |f''|, |f'''| (``d2_bound``, ``d3_bound``); the same loss
    without them gets no rigorous bound (the engine then falls back to an agreement estimate)."""
    A = as_exact_float64(build([0.5, 1.3, 2.0, 3.7], seed=4))
    st = F.eig_states(A, cache=False)[0]
    loss = make_loss("zca", 4, seed=1)
    G = np.asarray(loss.weight, dtype=np.float64)
    g, scale, bound = _flint_gradient._gradient(st, loss, G, True)
    assert bound is not None and _flint_gradient._digits_from(bound, g, scale) >= 30
    bare = dataclasses.replace(loss, d2_bound=None, d3_bound=None)
    g2, scale2, bound2 = _flint_gradient._gradient(st, bare, G, True)
    assert bound2 is None
    np.testing.assert_array_equal(g2, g)  # the same numbers, only uncertified
    assert scale2 == scale


def test_flint_matches_mpmath_at_moderate_d():
    """d = 32 with a pair split by 1e-9 (a cluster in the refinement): the certified flint gradient
    agrees with the mpmath engine to the digits both claim, with identical float64 eigenvalues (the
    mpmath engine's time sets d: 9 s here at d = 32, 29 s at d = 48, where the test holds too)."""
    lam = np.logspace(-1, 1, 32)
    lam[20] = lam[19] * (1 + 1e-9)
    A = build(lam, seed=5)
    loss = make_loss("zca", 32, seed=2)
    g_fl, lam_fl, d_fl = R._hp_gradient(A, loss, "flint")
    g_mp, lam_mp, d_mp = R._hp_gradient(A, loss, "mpmath")
    truth = R.ground_truth(A, loss, engine="flint", cache=False)
    assert truth.certified and truth.digits >= 30 and d_mp >= 25
    with mpmath.workdps(120):
        err = float(max(abs(x - y) for x, y in zip(g_fl, g_mp)) / max(abs(y) for y in g_mp))
    assert err <= 10.0 ** -(min(d_fl, d_mp) - 1)
    np.testing.assert_array_equal(lam_fl, lam_mp)


# ----------------------------------------------------------------------------------------------
# the exact products through float64 BLAS (stabkit.reference._flint_mul)

from stabkit.reference import _flint_mul as FM  # noqa: E402


def _flint_product(*mats):
    out = _flint_ints._fm(np.asarray(mats[0], dtype=object))
    for m in mats[1:]:
        out = out * _flint_ints._fm(np.asarray(m, dtype=object))
    return _flint_ints._obj(out)


def _rand_ints(rng, shape, bits):
    return np.array([rng.randrange(-(1 << bits) + 1, 1 << bits) for _ in range(int(np.prod(shape)))],
                    dtype=object).reshape(shape)


@pytest.mark.parametrize("m,k,n,b1,b2", [(3, 5, 4, 10, 10), (7, 1, 3, 200, 5), (20, 33, 17, 300, 90),
                                         (64, 64, 64, 1, 1), (9, 11, 6, 1500, 1400), (4, 700, 3, 64, 64)])
def test_blas_product_is_exact(m, k, n, b1, b2):
    import random

    rng = random.Random(m * 1000 + k)
    P, Q, R = _rand_ints(rng, (m, k), b1), _rand_ints(rng, (k, n), b2), _rand_ints(rng, (n, 5), 77)
    assert (FM.matmul(P, Q) == _flint_product(P, Q)).all()
    assert (FM.matmul(P, Q, R) == _flint_product(P, Q, R)).all()
    X = FM.IntMat(P)
    assert (FM.matmul(X.T, X) == _flint_product(P.T, P)).all()
    assert (FM.matmul(X.T, X, sym=True) == _flint_product(P.T, P)).all()
    if n == k:
        Qs = Q + Q.T
        keep = []
        assert (FM.matmul(X.T, Qs, X, sym=True, keep=keep) == _flint_product(P.T, Qs, P)).all()
        assert (keep[0]() == _flint_product(P.T, Qs)).all()
    assert (FM.matmul(X, X.T) == _flint_product(P, P.T)).all()


def test_blas_product_extremes():
    """Entries at the largest magnitude the inner dimension allows for a prime (k = 3000: every
    dgemm partial sum near its 2^53 limit), int64 inputs at ±(2^63 − 1), zeros, and a zero inner
    dimension."""
    k = 3000
    h = FM._prime_list(k, 1)[0] // 2
    P = np.full((2, k), h, dtype=np.int64)
    assert (FM.matmul(P, P.T) == _flint_product(P, P.T)).all()
    big = np.array([[2 ** 63 - 1, -(2 ** 63) + 1], [-(2 ** 63) + 1, 0]], dtype=np.int64)
    assert (FM.matmul(big, big, big) == _flint_product(big, big, big)).all()
    z = np.zeros((3, 4), dtype=object)
    assert (FM.matmul(z, z.T) == 0).all()
    assert FM.matmul(np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)).shape == (2, 3)
    S = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    assert (FM.matmul(S, S.T, out="int64") == S @ S.T).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 1 << 14))
def test_prime_table_keeps_dgemms_exact(k):
    """Every prime p = 2h + 1 − 2j of the table satisfies k (h + 3)² < 2^53 − 2^27 (residues are
    reduced to |r| ≤ p/2 + 2, and r − qp must stay exact) and p < 2^26."""
    ps = FM._prime_list(k, 8)
    assert all(k * (p // 2 + 3) ** 2 < 2 ** 53 - 2 ** 27 and p < 2 ** 26 for p in ps)
    assert all(FM._is_prime(p) == flint.fmpz(p).is_prime() for p in range(ps[-1], ps[0] + 1, 2))


def test_mod_bound():
    """_mod leaves |r| ≤ p/2 + 2 for integers up to 2^53, including quotients at half-integers."""
    p = float(FM._prime_list(2048, 1)[0])
    r = np.array([2.0 ** 53 - 2 ** 27, -(2.0 ** 53) + 2 ** 27, p * 1e6 + (p - 1) / 2, -(p * 7 + (p + 1) / 2), 0.0,
                  p, 3 * p + 1], dtype=np.float64)
    exact = [int(v) for v in r]
    out = FM._mod(r.copy(), p)
    assert np.all(np.abs(out) <= p / 2 + 2)
    assert all((int(o) - e) % int(p) == 0 for o, e in zip(out, exact))


def test_to_float_matches_exact_division():
    """The vectorized _to_float equals the correctly rounded int/int quotient, also where it
    falls back (subnormal results, beyond the float64 range)."""
    vals = np.array([0, 1, -3, 2 ** 200 + 1, -(2 ** 1100), 2 ** 60 + 3, 7], dtype=object)
    for scale in (0, 5, 300, 1100, -20):
        got = _flint_ints._to_float(vals, scale)
        for v, g in zip(vals, got):
            try:
                want = v / (1 << scale) if scale >= 0 else float(v << -scale)
            except OverflowError:
                want = np.inf if v > 0 else -np.inf
            assert g == want or (np.isinf(g) and np.isinf(want) and np.sign(g) == np.sign(want)), (v, scale)


def _intmat_values(M):
    """The integers an IntMat holds (from its limbs), in its orientation."""
    src = M.src
    L = src.limbs.shape[1]
    vals = [sum(int(v) << (16 * j) for j, v in enumerate(row)) - (int(n) << (16 * L))
            for row, n in zip(src.limbs, src.neg)]
    out = np.array(vals, dtype=object).reshape(src.shape0)
    return out.T if M.transposed else out


def test_engine_is_unchanged_by_the_blas_products(monkeypatch):
    """The whole engine with every product done by flint's fmpz_mat instead (the engine before
    issue #16) gives bit-identical gradients, high-precision entries and digits: a repeated
    eigenvalue (groups), a split pair (clusters) and a spectral and a weighted loss."""
    lam = np.logspace(-1, 1, 40)
    lam[10:13] = lam[10]
    lam[25] = lam[24] * (1 + 1e-10)
    A = build(lam, seed=3)

    def run(loss):
        g, hp, lam64, digits = F.engine(A, loss, cache=False, dps=None)
        return g, [str(v) for v in hp()], lam64, digits

    losses = [make_loss("zca", 40, seed=2), make_loss("projector", 40, seed=2, k=9)]
    fast = [run(loss) for loss in losses]

    def flint_matmul(*factors, out="object", sym=False, keep=None):
        vals = [_intmat_values(f) if isinstance(f, FM.IntMat) else np.asarray(f, dtype=object) for f in factors]
        if keep is not None:
            keep.append(lambda: _flint_product(vals[0], vals[1]))
        return _flint_product(*vals)

    monkeypatch.setattr(FM, "matmul", flint_matmul)
    slow = [run(loss) for loss in losses]
    for (g1, h1, l1, d1), (g2, h2, l2, d2) in zip(fast, slow):
        np.testing.assert_array_equal(g1, g2)
        assert h1 == h2 and d1 == d2 and d1 > 30
        np.testing.assert_array_equal(l1, l2)
