"""The mpmath engine (``stabkit.reference._mpmath``): its eigendecomposition and the cap on its
agreement estimate."""

import mpmath
import numpy as np
import pytest

from stabkit import reference as R
from stabkit.errors import InputError
from stabkit.losses import make_loss
from tests.conftest import build


def test_eigh_exact():
    A = build([1.0, 2.0, 5.0], seed=4)
    lam, U = R.eigh_exact(A, 40)
    with mpmath.workdps(40):
        M = mpmath.matrix(A.tolist())
        assert mpmath.mnorm(M * U - U * mpmath.diag(lam), 1) < mpmath.mpf(10) ** -35
        assert list(lam) == sorted(lam)


def test_mpmath_forced_precision_cannot_certify_a_shared_error():
    """Both forced precisions (30, 50) treat the 1e-61 coupling as negligible and agree on the wrong
    gradient; the digit estimate is capped by the condition and does not certify it."""
    A = np.array([[1.0, 1e-61], [1e-61, 1e-120]])
    truth = R.ground_truth(A, make_loss("log", 2, seed=0), engine="mpmath", cache=False, _dps=30)
    assert not truth.certified and truth.digits == 0


@pytest.mark.parametrize("dps", [0, -1, 2.5, float("nan"), "30", None])
def test_a_precision_that_is_no_digit_count_is_refused(dps):
    """eigh_exact(A, 0) returned eigenvalues 1, 1.5, 3 for a matrix whose are 0.92, 1.24, 2.34 (mpmath's
    minimum precision), without a word; NaN gave a bare ValueError from int()."""
    A = np.array([[2.0, 0.5, 0.1], [0.5, 1.5, 0.2], [0.1, 0.2, 1.0]])
    with pytest.raises(InputError, match="decimal digits"):
        R.eigh_exact(A, dps)
    with pytest.raises(InputError, match="decimal digits"):
        R.finite_difference_grad(A, make_loss("zca", 3), dps=dps)


def test_divided_differences_near_a_tie_and_apart():
    """Daleckii–Krein's f[a, b] for f = log at 30 digits, against (log b − log a)/(b − a) at 80: b − a =
    1e-20 takes the midpoint branch, f'((a + b)/2) (off by f'''h²/24 ≈ 1e-42; f'(a) by 2.5e-21),
    b − a = 1e-10 and ½ the direct quotient, the first with 10 extra digits against its cancellation;
    the diagonal is f'(λ) = 1/λ."""
    from stabkit.reference._mpmath import _divided_differences_mp

    loss = make_loss("log", 2)
    for gap in ("1e-20", "1e-10", "0.5"):
        with mpmath.workdps(30):
            a, b = mpmath.mpf(2), 2 + mpmath.mpf(gap)
            D = _divided_differences_mp([a, b], loss, 30)
        with mpmath.workdps(80):
            want = (mpmath.log(b) - mpmath.log(a)) / (b - a)
            assert abs(D[0][1] - want) < mpmath.mpf("1e-28") * want and D[1][0] == D[0][1]
            assert abs(D[1][1] - 1 / b) < mpmath.mpf("1e-29")


def test_gap_digits_count_the_relative_gap_whatever_the_scale():
    """P's gap digits: ⌈−log10(min gap / max|λ|)⌉ = ⌈−log10(1e-6/3)⌉ = 7 for λ = (1, 1 + 1e-6, 3)·c, for
    c = 1e-8, 1 and 1e8 alike (an absolute gap would give 0 at c = 1e8 and 15 at c = 1e-8)."""
    from stabkit.reference._common import gap_digits

    for c in (1e-8, 1.0, 1e8):
        assert gap_digits(np.diag([1.0, 1.0 + 1e-6, 3.0]) * c) == 7
