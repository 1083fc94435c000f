"""The mpmath helpers of tests/_helpers.py against closed forms."""

import mpmath as mp
import numpy as np

from tests._helpers import DPS, mp_grad, mp_matfun, mp_range_projector, mp_sym, rel, to_mp  # noqa: F401


def test_mp_grad_matches_closed_form_of_log_det():
    # ∂ log det(X) / ∂X = X^-T
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    g = mp_grad(lambda M: mp.log(mp.det(M)), X)
    assert rel(g, np.linalg.inv(X).T) < 1e-13


def test_mp_matfun_and_projector_closed_forms():
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = (Q * np.array([0.5, 1.0, 2.0, 3.0])) @ Q.T
    with mp.workdps(DPS):
        L = mp_matfun(to_mp(mp_sym(A)), mp.log)
        expected = (Q * np.log([0.5, 1.0, 2.0, 3.0])) @ Q.T
        assert rel(np.array(L.tolist(), dtype=float), expected) < 1e-14
        B = rng.standard_normal((5, 2))
        P = np.array(mp_range_projector(to_mp(B)).tolist(), dtype=float)
        assert rel(P, B @ np.linalg.pinv(B)) < 1e-13
        assert np.allclose(P @ P, P, atol=1e-14)
