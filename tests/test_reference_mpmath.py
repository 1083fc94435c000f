"""The mpmath engine (``stabkit.reference._mpmath``): its eigendecomposition and the cap on its
agreement estimate."""

import mpmath
import numpy as np

from stabkit import reference as R
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
