"""The flint engine's integer representation (fmpz end to end, bulk float conversion) and its
parallel products: exact against Fractions, and the engine against the independent mpmath engine."""

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


@settings(max_examples=80, deadline=None)
@given(st.lists(big_ints, min_size=1, max_size=10), st.integers(-60, 2300), st.booleans())
def test_to_float_is_correctly_rounded(ints, scale, as_fmpz):
    """Python ints and flint.fmpz alike; overflow of float(N) and subnormal results included."""
    N = np.empty(len(ints), dtype=object)
    N[:] = [flint.fmpz(v) for v in ints] if as_fmpz else ints
    try:
        expect = [float(Fraction(v, 2 ** scale) if scale >= 0 else Fraction(v * 2 ** -scale)) for v in ints]
    except OverflowError:
        with pytest.raises(OverflowError):
            F._to_float(N, scale)
        return
    got = F._to_float(N, scale)
    assert got.tolist() == expect


def test_fmpz_round_trip_and_pass_product_order():
    rng = np.random.default_rng(0)
    X = np.array([[int(v) << 90 for v in row] for row in rng.integers(-2 ** 40, 2 ** 40, (5, 4))], dtype=object)
    M = F._fm(X)
    back = F._obj(M)
    assert all(isinstance(v, flint.fmpz) for v in back.ravel())
    assert [[int(v) for v in row] for row in back] == X.tolist()
    # _Pass.times: X_sorted · E from the unsorted product, against the plain object product
    A = build([3.0, 1.0, 2.0, 0.5], seed=1)
    Aint, a = F._float_exact_to_int(A)
    Q = np.linalg.eigh(A)[1][:, ::-1]  # descending: the pass must reorder its columns
    p = F._Pass(F._fm(Aint), a, F._round_to_int(Q, 60), 60)
    assert p.order is not None
    E = np.array([[int(v) for v in row] for row in rng.integers(-2 ** 50, 2 ** 50, (4, 4))], dtype=object)
    assert (p.times(E) == p.X.dot(E)).all()


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


def test_flint_threads_do_not_change_results(monkeypatch):
    A = build(np.linspace(0.5, 3.0, 20), seed=9)
    loss = make_loss("log", 20, seed=3)
    before = flint.ctx.threads
    out = []
    for n in ("1", "2"):
        monkeypatch.setenv("STABKIT_FLINT_THREADS", n)
        out.append(R.ground_truth(A, loss, engine="flint", cache=False))
        assert flint.ctx.threads == before  # restored after the engine
    assert np.array_equal(out[0].grad, out[1].grad) and out[0].digits == out[1].digits
    monkeypatch.setenv("STABKIT_FLINT_THREADS", "two")
    with pytest.raises(ValueError, match="STABKIT_FLINT_THREADS"):
        R.ground_truth(A, loss, engine="flint", cache=False)
