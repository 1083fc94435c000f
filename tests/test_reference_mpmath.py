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
