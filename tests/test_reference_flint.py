"""The flint engine's float ↔ integer helpers, exact against Fractions, and the engine against the
independent mpmath engine at moderate d."""

from fractions import Fraction

import flint
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit.reference import _flint as F
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
