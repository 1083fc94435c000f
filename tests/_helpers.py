"""Shared test helpers: mpmath ground truth for the layer tests by high-precision central finite
differences (checked against closed forms in tests/test_mp_helpers.py).

``mp_grad(fun, x)`` differentiates a scalar mpmath function of a float64 array at 40 digits with
step h = 1e-12: truncation error ~h²·|L'''| ≈ 1e-24 and rounding ≈ 1e-40/h = 1e-28, far below the
1e-10 tolerance the layers are held to.
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


def bad_matrices(d=3, n=None):
    """(label, input, message pattern) of the inputs every layer must refuse with an InputError:
    NaN, Inf, a 1-D tensor, an integer dtype, and (``n`` given, n ≠ d) a non-square (d, n) one."""
    import torch

    nan, inf = torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    nan[0, 1] = nan[1, 0] = float("nan")
    inf[1, 1] = float("inf")
    cases = [("nan", nan, "non-finite"), ("inf", inf, "non-finite"),
             ("1-d", torch.ones(d, dtype=torch.float64), "shape"),
             ("int", torch.eye(d, dtype=torch.int64), "dtype")]
    if n is not None:
        cases.append(("non-square", torch.ones(d, n, dtype=torch.float64), "shape"))
    return cases


def nonsymmetric(d=3):
    """A float64 (d, d) matrix whose asymmetry is far above √eps·max|A|."""
    import torch

    A = torch.eye(d, dtype=torch.float64)
    A[0, 1] = 0.5
    return A


def second_derivative(fn, A, seed=0):
    """Differentiate the gradient of ⟨B, fn(A)²⟩ once more (a Hessian-vector product, random B and v;
    the loss is nonlinear so that its cotangent depends on A)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    a = A.clone().requires_grad_()
    out = fn(a)
    B = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (g,) = torch.autograd.grad((B * out * out).sum(), a, create_graph=True)
    (g * torch.randn(a.shape, generator=gen, dtype=a.dtype)).sum().backward()
    return a.grad
