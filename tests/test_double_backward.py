"""Second derivatives through stabkit.torch (issue 13): right for every method, never a silent wrong number.

What "right" means: the double backward of the op is the exact derivative of the method's rule
A, (∂L/∂λ, ∂L/∂U) ↦ ∂L/∂A (gradgradcheck on the op, every method). Through a loss nonlinear in U
the cotangent ∂L/∂U itself depends on A, and autograd routes that dependence through the op's
(method's) first-order rule again — so for an approximate rule (taylor, clip when it clips, pi)
the HVP carries the method's approximation error, of the order of its first-order error; for
exact rules it is the exact HVP. Tested: gradgradcheck per method (eigh and SVD), the HVP of a
composite loss against a central difference of the first-order gradient written here, and
forward-over-reverse (torch.func.hessian) against reverse-over-reverse.
"""

import numpy as np
import pytest
import torch

import stabkit.torch as sk
from stabkit.errors import UnsupportedDerivativeError
from stabkit import methods

from .conftest import build

F64 = torch.float64
PARAMS = {"pi": {"steps": 6}, "pi-legacy": {"steps": 6}, "pi-forward": {"steps": 40}}  # pi-forward: enough steps to converge on 1…5


def sym(X):
    return (X + X.mT) / 2


def matrix(d=5, seed=0):
    return torch.tensor(build(np.arange(1.0, d + 1), seed=seed), dtype=F64)


def eig_loss(lam, U):
    d = U.shape[-1]
    W = torch.arange(1.0, d * d + 1, dtype=F64).reshape(d, d).cos()
    return (U * U * W).sum() + (lam.pow(2) * torch.arange(1.0, d + 1, dtype=F64)).sum()


def first_order(method, A, **params):
    """∂L/∂A by the method's first-order backward only (no graph kept)."""
    leaf = A.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(eig_loss(*sk.eigh(sym(leaf), method=method, **params)), leaf)
    return g


@pytest.mark.parametrize("method", methods.NAMES)
def test_gradgradcheck_eigh(method):
    A = matrix(4, seed=1).requires_grad_(True)
    p = {"steps": 6} if method == "pi-forward" else PARAMS.get(method, {})  # exact for any step count

    assert torch.autograd.gradgradcheck(lambda a: tuple(sk.eigh(sym(a), method=method, **p)), (A,))


@pytest.mark.parametrize("method", sk.SVD_METHODS)
@pytest.mark.parametrize("shape,full", [((5, 3), False), ((3, 5), False), ((4, 4), True), ((5, 3), True)])
def test_gradgradcheck_svd(method, shape, full):
    rng = np.random.default_rng(4)
    m, n = shape
    k = min(m, n)
    U0, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V0, _ = np.linalg.qr(rng.standard_normal((n, k)))
    X = torch.tensor((U0 * np.linspace(3.0, 1.0, k)) @ V0.T, dtype=F64, requires_grad=True)

    def f(x):
        U, S, Vh = sk.svd(x, full, method=method)
        return S, U[..., :, :k], Vh[..., :k, :]  # beyond k: an arbitrary basis, no gradient (as in torch)

    assert torch.autograd.gradgradcheck(f, (X,))


@pytest.mark.parametrize("method", methods.NAMES)
def test_hvp_equals_central_difference_of_the_gradient(method):
    """The issue's case: HVPs on a well-separated 5×5 were NaN (analytic, clip, pade) or off by
    4.6–13.5 (taylor, pi, pi-forward). H·V by double backward vs (g(A + hV) − g(A − hV)) / 2h of the
    method's own gradient g: equal to FD accuracy for exact rules, and within 10× the method's
    first-order relative error for approximate ones (see the module docstring)."""
    A = matrix(5, seed=2)
    V = sym(torch.tensor(np.random.default_rng(3).standard_normal((5, 5)), dtype=F64))
    p = PARAMS.get(method, {})
    leaf = A.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(eig_loss(*sk.eigh(sym(leaf), method=method, **p)), leaf, create_graph=True)
    (hv,) = torch.autograd.grad(g, leaf, V)
    h = 1e-5
    fd = (first_order(method, A + h * V, **p) - first_order(method, A - h * V, **p)) / (2 * h)
    exact = first_order("torch", A)
    first_err = ((first_order(method, A, **p) - exact).norm() / exact.norm()).item()
    assert torch.isfinite(hv).all()
    assert (hv - fd).norm() <= max(1e-8, 10 * first_err) * fd.norm()
    torch.testing.assert_close(g.detach(), first_order(method, A, **p), rtol=0, atol=1e-13)  # same first order


@pytest.mark.parametrize("method", ["analytic", "taylor", "clip", "pade", "pi"])
def test_func_hessian_matches_double_backward(method):
    """Forward-over-reverse (torch.func.hessian, the op's jvp) = reverse-over-reverse; power
    iteration has no jvp and says so."""
    A = matrix(4, seed=5)
    p = {"tau": 0.5} if method == "clip" else PARAMS.get(method, {})  # τ = 0.5: clipping active
    f = lambda a: eig_loss(*sk.eigh(sym(a), method=method, **p))  # noqa: E731
    if method == "pi":
        with pytest.raises(RuntimeError, match="forward-mode AD .* implemented only for rules given by a kernel"):
            torch.func.hessian(f)(A)
        H = torch.func.jacrev(torch.func.jacrev(f))(A)
    else:
        H = torch.func.hessian(f)(A)
    V = torch.tensor(np.random.default_rng(6).standard_normal((4, 4)), dtype=F64)
    leaf = A.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(leaf), leaf, create_graph=True)
    (hv,) = torch.autograd.grad(g, leaf, V)
    # autograd's double backward contracts the cotangent V with g's index (Vᵀ·H): for an approximate
    # rule H is not symmetric, so the contraction matters
    torch.testing.assert_close(torch.einsum("ijkl,ij->kl", H, V), hv, rtol=1e-10, atol=1e-12)


def test_bounded_kernel_does_not_bound_the_second_derivative():
    """Documented: near a tie the second derivative of taylor's gradient grows although its first
    derivative stays bounded (the eigenvectors it is evaluated at rotate fast)."""
    def hv_norm(gap, method):
        A = torch.tensor(build([1.0, 2.0, 2.0 + gap, 4.0], seed=8), dtype=F64)
        leaf = A.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(eig_loss(*sk.eigh(sym(leaf), method=method)), leaf, create_graph=True)
        V = sym(torch.tensor(np.random.default_rng(9).standard_normal((4, 4)), dtype=F64))
        (hv,) = torch.autograd.grad(g, leaf, V)
        return g.norm().item(), hv.norm().item()

    g_wide, h_wide = hv_norm(1e-1, "taylor")
    g_near, h_near = hv_norm(1e-4, "taylor")
    assert g_near < 10 * g_wide        # first order bounded
    assert h_near > 100 * h_wide       # second order not


@pytest.mark.parametrize("op", ["eigh", "svd"])
def test_forward_over_forward_is_refused(op):
    """jacfwd(jacfwd(·)) through the ops' custom jvp: torch.func treated the saved factors as
    constants there, so the Hessian came out silently wrong; it now raises, and torch.func.hessian
    (forward over reverse) still agrees with reverse over reverse."""
    X = torch.tensor(np.random.default_rng(5).standard_normal((5, 4)), dtype=F64)
    if op == "eigh":
        A = X.T @ X
        f = lambda a: eig_loss(*sk.eigh(sym(a), method="analytic"))  # noqa: E731
    else:
        A = X
        f = lambda a: (sk.svd(a, method="analytic")[1] ** 3).sum()  # noqa: E731
    with pytest.raises(UnsupportedDerivativeError, match="tangent cannot be differentiated"):
        torch.func.jacfwd(torch.func.jacfwd(f))(A)
    torch.testing.assert_close(torch.func.hessian(f)(A), torch.func.jacrev(torch.func.jacrev(f))(A),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["analytic", "taylor", "clip", "torch"])
def test_second_derivative_at_an_exact_tie_is_nan_as_documented(method):
    """The documented limit: at X = I (all eigenvalues tied) the Hessian-vector product of Σ log λ — a loss
    of λ alone, whose first derivative X⁻¹ = I is finite and exact — is NaN for every method, bounded
    kernels included, as torch's own eigh double backward is; a separated spectrum gives −X⁻¹ V X⁻¹."""
    for X, finite in ((torch.eye(3, dtype=F64), False), (torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64)), True)):
        X = X.clone().requires_grad_()
        (g,) = torch.autograd.grad(torch.log(sk.eigvalsh(X, method=method)).sum(), X, create_graph=True)
        torch.testing.assert_close(g.detach(), torch.linalg.inv(X.detach()), rtol=0, atol=1e-14)
        V = torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.0, 0.25], [0.0, 0.25, 2.0]], dtype=F64)
        (hv,) = torch.autograd.grad((g * V).sum(), X)
        if finite:
            Xi = torch.linalg.inv(X.detach())
            torch.testing.assert_close(hv, -Xi @ V @ Xi, rtol=0, atol=1e-12)
        else:
            assert torch.isnan(hv).any()
