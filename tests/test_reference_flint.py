"""The flint engine's float ↔ integer helpers, exact against Fractions, and the engine against the
independent mpmath engine at moderate d."""

from fractions import Fraction

import flint
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import _flint_eig as F
from stabkit import reference as R
from stabkit.losses import make_loss
from tests.conftest import build

finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), st.integers(0, 300))
def test_float_to_int_helpers_are_exact(values, s):
    a = np.array(values, dtype=np.float64)
    N, e = F._float_exact_to_int(a)
    assert [Fraction(int(n)) / Fraction(2) ** e for n in N] == [Fraction(v) for v in values]
    if any(abs(Fraction(v)) * 2 ** s >= 2 ** 1024 for v in values):
        with pytest.raises(OverflowError):
            F._round_to_int(a, s)
        return
    r = F._round_to_int(a, s)
    assert [int(v) for v in r] == [round(Fraction(v) * 2 ** s) for v in values]  # half to even


big_ints = st.integers(-(2 ** 1100), 2 ** 1100) | st.integers(-(2 ** 70), 2 ** 70)


def test_flint_matches_mpmath_at_moderate_d():
    """d = 48 with a pair split by 1e-9 (a cluster in the refinement): the certified flint gradient
    agrees with the mpmath engine to the digits both claim, with identical float64 eigenvalues."""
    lam = np.logspace(-1, 1, 48)
    lam[20] = lam[19] * (1 + 1e-9)
    A = build(lam, seed=5)
    loss = make_loss("zca", 48, seed=2)
    g_fl, lam_fl, d_fl = R._hp_gradient(A, loss, "flint")
    g_mp, lam_mp, d_mp = R._hp_gradient(A, loss, "mpmath")
    truth = R.ground_truth(A, loss, engine="flint", cache=False)
    assert truth.certified and truth.digits >= 30 and d_mp >= 25
    import mpmath

    with mpmath.workdps(120):
        err = float(max(abs(x - y) for x, y in zip(g_fl, g_mp)) / max(abs(y) for y in g_mp))
    assert err <= 10.0 ** -(min(d_fl, d_mp) - 1)
    np.testing.assert_array_equal(lam_fl, lam_mp)


# ----------------------------------------------------------------------------------------------
# the exact products through float64 BLAS (stabkit._flint_mul)

from stabkit import _flint_mul as FM  # noqa: E402


def _flint_product(*mats):
    out = F._fm(np.asarray(mats[0], dtype=object))
    for m in mats[1:]:
        out = out * F._fm(np.asarray(m, dtype=object))
    return F._obj(out)


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
        got = F._to_float(vals, scale)
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
        g, hp, lam64, digits = F.engine(A, loss, cache=False, dps=None, cache_dir=None, key="k",
                                        atomic_write=None)
        return g, [str(v) for v in hp()], lam64, digits

    losses = [make_loss("zca", 40, seed=2), make_loss("projector", 40, seed=2, k=9)]
    fast = [run(loss) for loss in losses]

    def flint_matmul(*factors, out="object", sym=False, keep=None):
        vals = [_intmat_values(f) if isinstance(f, FM.IntMat) else np.asarray(f, dtype=object) for f in factors]
        if keep is not None:
            keep.append(lambda: _flint_product(vals[0], vals[1]))
        return _flint_product(*vals)

    monkeypatch.setattr(F, "matmul", flint_matmul)
    slow = [run(loss) for loss in losses]
    for (g1, h1, l1, d1), (g2, h2, l2, d2) in zip(fast, slow):
        np.testing.assert_array_equal(g1, g2)
        assert h1 == h2 and d1 == d2 and d1 > 30
        np.testing.assert_array_equal(l1, l2)
