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
from stabkit.reference._common import as_exact_float64
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
        last, _ = F._refine(A2, bits, lam0, Q0)
        st = F._state_from_pass(last, bits, certify=True, k=k)
        loss = make_loss("zca", d, seed=2, k=2)
        g, scale, bound = F._gradient(st, loss, np.asarray(loss.weight, dtype=np.float64), True)
        assert bound is not None, seed
        assert F._digits_from(bound, g, scale) >= 20, seed
        # and the certified gradient is the true one (finite differences, independent of the engine)
        if seed < 2:
            assert rel(F._to_float(g, scale), R.finite_difference_grad(A, loss)) <= 1e-12


def test_certificate_takes_the_derivative_bounds_from_the_loss():
    """A spectral loss carries bounds on |f''|, |f'''| (``d2_bound``, ``d3_bound``); the same loss
    without them gets no rigorous bound (the engine then falls back to an agreement estimate)."""
    A = as_exact_float64(build([0.5, 1.3, 2.0, 3.7], seed=4))
    st = F.eig_states(A, cache=False)[0]
    loss = make_loss("zca", 4, seed=1)
    G = np.asarray(loss.weight, dtype=np.float64)
    g, scale, bound = F._gradient(st, loss, G, True)
    assert bound is not None and F._digits_from(bound, g, scale) >= 30
    bare = dataclasses.replace(loss, d2_bound=None, d3_bound=None)
    g2, scale2, bound2 = F._gradient(st, bare, G, True)
    assert bound2 is None
    np.testing.assert_array_equal(g2, g)  # the same numbers, only uncertified
    assert scale2 == scale


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
    with mpmath.workdps(120):
        err = float(max(abs(x - y) for x, y in zip(g_fl, g_mp)) / max(abs(y) for y in g_mp))
    assert err <= 10.0 ** -(min(d_fl, d_mp) - 1)
    np.testing.assert_array_equal(lam_fl, lam_mp)
