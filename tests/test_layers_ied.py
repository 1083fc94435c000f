"""IED: the power solver reports non-convergence instead of returning a non-eigenvector; input
contract (the eigh solver included); first derivatives only."""

import pytest
import torch

from stabkit import layers
from stabkit.errors import EigensolverError, InputError
from tests._helpers import bad_matrices, nonsymmetric, second_derivative
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("lam", [[0.1, 0.5, 1.0, 2.0, 2.002], [-3.0, 1.0, 2.0, 3.0]], ids=["near-tie", "plus-minus-3"])
def test_power_solver_not_converged_is_an_error(lam):
    # |λ_2/λ_1| = 0.999 (1000 steps reach a residual ~1e-4) and λ = ±3 (no convergence at all:
    # the iterate turns inside span(u₋₃, u₃) and its Rayleigh quotient is no eigenvalue)
    A = torch.as_tensor(build(lam, seed=1))
    with pytest.raises(EigensolverError, match=r"not converged after 1000 iterations: relative residual"):
        layers.ied(A, solver="power")


def test_power_solver_converged_matches_eigh():
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0, 3.0], seed=1))
    Y, lam = layers.ied(A, solver="power")
    U = torch.linalg.eigh(A)[1][:, -1]
    assert abs(float(lam[0]) - 3.0) < 1e-13
    assert abs(abs(float(Y[:, 0] @ U)) - 1) < 1e-14


def test_power_solver_at_the_rounding_floor_is_converged():
    """tol far below what float64 can resolve: the iteration runs to max_iter and stops at the
    rounding floor d·eps; that is convergence, not an error (it was reported as one)."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0, 3.0], seed=1))
    Y, lam = layers.ied(A, solver="power", tol=1e-30, max_iter=200)
    assert abs(float(lam[0]) - 3.0) < 1e-13
    assert abs(abs(float(Y[:, 0] @ torch.linalg.eigh(A)[1][:, -1])) - 1) < 1e-14


@pytest.mark.parametrize("solver", ["eigh", "power"])
@pytest.mark.parametrize("label, A, match", bad_matrices(3, n=4) + [("non-symmetric", nonsymmetric(), "not symmetric")],
                         ids=[c[0] for c in bad_matrices(3, n=4)] + ["non-symmetric"])
def test_bad_input_raises_input_error(label, A, match, solver):
    with pytest.raises(InputError, match=match):
        layers.ied(A, solver=solver)


def test_second_derivative_is_refused():
    A = torch.as_tensor(build([0.3, 1.0, 2.0, 4.0], seed=2))
    with pytest.raises(RuntimeError, match="differentiate twice"):
        second_derivative(lambda a: layers.ied(a, k=2)[0], A)
