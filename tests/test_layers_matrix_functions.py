"""Matrix-function layers (Props. 3–4, DeepO2P, SVD-DK): the divided difference at a zero
eigenvalue, the input contract, first derivatives only."""

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices, nonsymmetric, second_derivative
from tests.conftest import build

D = torch.float64
GEN = lambda s: torch.Generator().manual_seed(s)  # noqa: E731


def test_svd_dk_power_at_singular_FtF_is_closed_form():
    # C = (FᵀF)^1 with ε = 0 and rank(FᵀF) = 2 < 4: d⟨G, FᵀF⟩/dF = F (G + Gᵀ)
    F, G = torch.randn(2, 4, dtype=D, generator=GEN(0)), torch.randn(4, 4, dtype=D, generator=GEN(1))
    f = F.clone().requires_grad_()
    (g,) = torch.autograd.grad((G * layers.svd_dk_matrix_function(f, "power", eps=0.0, p=1.0)).sum(), f)
    torch.testing.assert_close(g, F @ (G + G.T), rtol=1e-12, atol=1e-12)


def test_svd_dk_power_two_at_singular_FtF_matches_plain_products():
    # p = 2 on a tall rank-deficient F: the zero eigenvalue's divided difference is M^(p−1)
    F = torch.randn(6, 4, dtype=D, generator=GEN(2))
    F[:, 3] = 0
    G = torch.randn(4, 4, dtype=D, generator=GEN(3))
    f = F.clone().requires_grad_()
    (g,) = torch.autograd.grad((G * layers.svd_dk_matrix_function(f, "power", eps=0.0, p=2.0)).sum(), f)
    f2 = F.clone().requires_grad_()
    A = f2.T @ f2
    (ref,) = torch.autograd.grad((G * (A @ A)).sum(), f2)         # (FᵀF)² by plain products
    torch.testing.assert_close(g, ref, rtol=1e-11, atol=1e-11)


FUNCTIONS = {
    "svd_matrix_function": lambda F: layers.svd_matrix_function(F, "log", eps=1e-2),
    "svd_dk_matrix_function": lambda F: layers.svd_dk_matrix_function(F, "log", eps=1e-2),
    "o2p": lambda F: layers.o2p(F),
    "eig_matrix_function": lambda A: layers.eig_matrix_function(A, "log", eps=1e-2),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("label, X, match", bad_matrices(3), ids=[c[0] for c in bad_matrices(3)])
def test_bad_input_raises_input_error(name, label, X, match):
    with pytest.raises(InputError, match=match):
        FUNCTIONS[name](X)


def test_eig_matrix_function_refuses_non_symmetric_and_non_square():
    with pytest.raises(InputError, match="not symmetric"):
        layers.eig_matrix_function(nonsymmetric(), "log", eps=1e-2)
    with pytest.raises(InputError, match="shape"):
        layers.eig_matrix_function(torch.ones(3, 4, dtype=D), "log", eps=1e-2)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf")])
def test_o2p_refuses_bad_eps(eps):
    with pytest.raises(InputError, match="eps must be"):
        layers.o2p(torch.randn(6, 4, dtype=D, generator=GEN(0)), eps=eps)


@pytest.mark.parametrize("fn", [layers.svd_matrix_function, layers.svd_dk_matrix_function])
def test_log_of_wide_F_without_ridge_is_refused(fn):
    with pytest.raises(InputError, match="wide F"):
        fn(torch.randn(2, 4, dtype=D, generator=GEN(0)), "log")


def test_svd_dk_second_derivative_is_refused():
    F = torch.as_tensor(build([0.3, 1.0, 2.0, 4.0], seed=2))
    with pytest.raises(RuntimeError, match="differentiate twice"):
        second_derivative(lambda f: layers.svd_dk_matrix_function(f, "log", eps=0.1), F)
