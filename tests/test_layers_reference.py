"""mpmath ground truth for the layer tests: high-precision central finite differences.

``mp_grad(fun, x)`` differentiates a scalar mpmath function of a float64 array at 40 digits with
step h = 1e-12: truncation error ~h²·|L'''| ≈ 1e-24 and rounding ≈ 1e-40/h = 1e-28, far below the
1e-10 tolerance the layers are held to. The helpers are checked here against closed forms.
"""

import mpmath as mp
import numpy as np

DPS = 40
H = mp.mpf("1e-12")


def to_mp(x):
    return mp.matrix([[mp.mpf(float(v)) for v in row] for row in np.atleast_2d(x)])


def mp_grad(fun, x):
    """∂fun/∂x (same shape as x) for fun: mp.matrix → mpf, by central differences at DPS digits."""
    x = np.asarray(x, dtype=np.float64)
    shape = x.shape
    x2 = np.atleast_2d(x)
    out = np.zeros(x2.shape)
    with mp.workdps(DPS):
        base = to_mp(x2)
        for i in range(x2.shape[0]):
            for j in range(x2.shape[1]):
                plus, minus = base.copy(), base.copy()
                plus[i, j] += H
                minus[i, j] -= H
                out[i, j] = float((fun(plus) - fun(minus)) / (2 * H))
    return out.reshape(shape)


def mp_sym(A):
    return (A + A.T) / 2


def mp_eigsy_desc(A):
    """Eigenvalues (descending) and eigenvectors (columns) of symmetric mp matrix A."""
    E, Q = mp.eigsy(A)
    order = sorted(range(A.rows), key=lambda i: -E[i])
    return [E[i] for i in order], [Q[:, i] for i in order]


def mp_matfun(A, g):
    """g(A) for symmetric mp matrix A."""
    E, Q = mp.eigsy(A)
    n = A.rows
    return Q * mp.diag([g(E[i]) for i in range(n)]) * Q.T


def mp_inner(G, A):
    return mp.fsum(G[i, j] * A[i, j] for i in range(A.rows) for j in range(A.cols))


def mp_range_projector(B):
    """B (BᵀB)⁻¹ Bᵀ for full-column-rank B."""
    return B * mp.inverse(B.T * B) * B.T


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


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
