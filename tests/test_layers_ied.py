"""IED: the power solver reports non-convergence instead of returning a non-eigenvector; input
contract (the eigh solver included); first derivatives only."""

import numpy as np
import pytest
import torch

from stabkit import layers
from stabkit.errors import EigensolverError, InputError
from stabkit.layers.ied import default_max_iter
from tests._helpers import bad_matrices, nonsymmetric, second_derivative
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("lam", [[0.1, 0.5, 1.0, 2.0, 2.0002], [-3.0, 1.0, 2.0, 3.0]], ids=["near-tie", "plus-minus-3"])
def test_power_solver_not_converged_is_an_error(lam):
    # relative gap 1e-4 < MIN_GAP (the default budget leaves an error ~ (1 − 1e-4)^33948 ≈ 0.03) and
    # λ = ±3 (no convergence at all: the iterate turns inside span(u₋₃, u₃) and its Rayleigh
    # quotient is no eigenvalue)
    A = torch.as_tensor(build(lam, seed=1))
    with pytest.raises(EigensolverError, match=r"not converged after 33948 iterations: relative residual"):
        layers.ied(A, solver="power")


def test_default_budget_is_the_power_iteration_step_count_at_the_minimal_gap():
    """(1 − g)^t ≤ tol at g = 1e-3 first holds at t = ⌈log tol / log(1 − g)⌉: 33948 steps at
    float64's default tol 8·2⁻⁵², 13857 at float32's 8·2⁻²³."""
    for tol, steps in ((8 * 2.0 ** -52, 33948), (8 * 2.0 ** -23, 13857)):
        assert default_max_iter(tol) == steps
        assert (1 - 1e-3) ** steps <= tol < (1 - 1e-3) ** (steps - 1)


@pytest.mark.parametrize("dtype, seed, gap", [(torch.float64, 12, 0.0208), (torch.float32, 103, 0.0070)],
                         ids=["float64", "float32"])
def test_power_solver_converges_on_wishart_covariances(dtype, seed, gap):
    """C = XᵀX/64, X 64 × 32 standard normal: draws with a top gap 1 − λ₂/λ₁ of 0.021 (float64) and
    0.007 (float32) — about one draw in ten has a gap below 0.034 — raised EigensolverError with
    the old fixed budget of 1000 steps. Checked against torch.linalg.eigh in float64: the
    residual at the rounding floor d·eps·‖C‖_F, the vector within Davis–Kahan's sin θ ≤ ‖r‖/(λ₁ − λ₂)
    (×2 for the rounding of r), the eigenvalue within a few eps."""
    X = torch.randn(64, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    C = X.T @ X / 64
    Y, lam = layers.ied(C, solver="power")
    Cd = C.double()
    mu, U = torch.linalg.eigh(Cd)
    assert abs(float(1 - mu[-2] / mu[-1]) - gap) < 1e-4
    y, u = Y[:, 0].double(), U[:, -1]
    eps = torch.finfo(dtype).eps
    r = float(torch.linalg.vector_norm(Cd @ y - (y @ Cd @ y) * y))
    assert r <= 32 * eps * float(torch.linalg.matrix_norm(Cd))
    assert float(torch.linalg.vector_norm(y - (y @ u) * u)) <= 2 * r / float(mu[-1] - mu[-2])
    assert abs(float(lam[0]) - float(mu[-1])) <= 8 * eps * float(mu[-1])


def test_explicit_max_iter_is_honoured_and_validated():
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0, 2.0002], seed=1))
    with pytest.raises(EigensolverError, match=r"not converged after 50 iterations") as info:
        layers.ied(A, solver="power", max_iter=50)
    # the hint names the default budget as the default, not as this call's budget
    assert f"the default at this tol, {default_max_iter(8 * 2.0 ** -52)} steps" in str(info.value)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_iter must be a positive integer"):
            layers.ied(A, solver="power", max_iter=bad)
    for bad in (0.0, -1e-3, 1.0, float("nan"), True):
        with pytest.raises(InputError, match=r"tol must be a number in \(0, 1\)"):
            layers.ied(A, solver="power", tol=bad)


@pytest.mark.parametrize("solver", ["eigh", "power"])
def test_bad_k_and_seed_raise_input_error(solver):
    """k must be an integer in [1, d] and seed one in [0, 2**64) (1.5 or seed='x' gave torch's errors)."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0], seed=1))
    for k in (1.5, 0, 5, True, "2"):
        with pytest.raises(InputError, match=r"ied: k must be an integer with 1 ≤ k ≤ d = 4, got k="):
            layers.ied(A, k=k, solver=solver)
    for seed in ("x", 1.5, -1, False, 2 ** 70):
        with pytest.raises(InputError, match=r"ied: seed must be an integer in \[0, 2\*\*64\)"):
            layers.ied(A, seed=seed, solver=solver)
    assert layers.ied(A, k=4, seed=2 ** 64 - 1, solver=solver)[0].shape == (4, 4)
    # a numpy integer is an integer, as the projector's rank and the other layers' counts accept
    assert torch.equal(layers.ied(A, k=np.int64(2), solver=solver)[0], layers.ied(A, k=2, solver=solver)[0])


def test_exact_positive_tie_converges_to_an_eigenvector_of_the_tied_space():
    """λ₁ = λ₂ = 3 (docstring): the forward is no error — the iterate is an eigenvector for 3 in
    span(u₁, u₂), which one depending on the seed."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 3.0, 3.0], seed=1))
    Y0, lam0 = layers.ied(A, solver="power", seed=0)
    Y1, _ = layers.ied(A, solver="power", seed=1)
    for Y in (Y0, Y1):
        assert float(torch.linalg.vector_norm(A @ Y[:, 0] - 3.0 * Y[:, 0])) < 1e-13
    assert abs(float(lam0[0]) - 3.0) < 1e-13
    assert abs(float(Y0[:, 0] @ Y1[:, 0])) < 1 - 1e-3


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


def test_power_solver_at_the_floor_returns_its_best_iterate(monkeypatch):
    """At the rounding floor the residual jitters; an exhausted budget whose last iterate jitters
    above the floor is still converged: the best iterate seen is returned. The jitter is made here
    (the last QR's Q turned by 1e-12), so the test does not rest on one LAPACK's rounding."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0, 3.0], seed=1))
    max_iter, calls, qr = 200, [], torch.linalg.qr

    def jittered_qr(M):
        calls.append(M)
        Q, R = qr(M)
        if len(calls) == 1 + max_iter:  # the first call orthonormalises the start
            Q, R = qr(Q + 1e-12 * torch.ones_like(Q))
        return Q, R

    monkeypatch.setattr(torch.linalg, "qr", jittered_qr)
    Y, lam = layers.ied(A, solver="power", tol=1e-30, max_iter=max_iter)
    assert len(calls) == 1 + max_iter
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


@pytest.mark.parametrize("solver", ["lobpcg", None, "Power"])
def test_unknown_solver_raises_input_error(solver):
    """An unknown solver was a bare ValueError from inside the autograd forward, not the InputError
    (naming ied and the argument) that every other bad argument gets."""
    with pytest.raises(InputError, match=r"ied: solver must be 'eigh' or 'power', got "):
        layers.ied(torch.eye(3, dtype=torch.float64), solver=solver)


def test_power_solver_takes_the_largest_magnitudes_in_descending_magnitude():
    """As ied's docstring says: for indefinite A the power solver's k are the eigenvalues of largest
    |λ|, ordered by |λ| (eigh's are the largest λ, descending). Checked against numpy's eigh."""
    lam = [-5.0, -0.5, 1.0, 3.0]
    A = build(lam, seed=2)
    w, U = np.linalg.eigh(A)
    Y, mu = layers.ied(torch.as_tensor(A), k=2, solver="power")
    np.testing.assert_allclose(mu.numpy(), [-5.0, 3.0], rtol=0, atol=1e-12)
    for j, i in enumerate((0, 3)):  # columns of U for λ = −5 and 3
        assert abs(abs(float(Y[:, j].numpy() @ U[:, i])) - 1) < 1e-13
    np.testing.assert_allclose(layers.ied(torch.as_tensor(A), k=2)[1].numpy(), [3.0, 1.0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("tol", [None, 1e-6], ids=["default-tol", "tol-1e-6"])
def test_power_solver_result_does_not_depend_on_the_batch_position(tol):
    """The power solver's start was drawn for the whole batch: at tol 1e-6 the top-2 vectors of a near
    tie (relative gap 0.02) moved by 1.2e-6 between [A] alone and [B, A]. One d × k start per seed is
    now shared by the batch. Allowed difference 1e-12 (batched products may round apart from
    unbatched ones; a different start leaves ≈ 1e-6). Accuracy: numpy.linalg.eigh in float64."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 1.96, 2.0], seed=3))
    others = [torch.as_tensor(build(lam, seed=s)) for lam, s in (([0.3, 0.7, 1.2, 2.5, 4.0], 4), ([-1.0, 0.7, 1.2, 2.5, 4.0], 7))]
    rng_before = torch.random.get_rng_state()
    Y1, lam1 = layers.ied(A, k=2, solver="power", tol=tol)
    for batch, i in ((torch.stack([A, others[0]]), 0), (torch.stack([others[0], A]), 1), (torch.stack(others + [A]), 2)):
        Y, lam = layers.ied(batch, k=2, solver="power", tol=tol)
        assert float((Y[i] - Y1).abs().max()) < 1e-12 and float((lam[i] - lam1).abs().max()) < 1e-12
        for M, Yj, lamj in zip(batch, Y, lam):
            w, U = np.linalg.eigh(M.numpy())
            order = np.argsort(-np.abs(w))[:2]
            assert np.abs(lamj.numpy() - w[order]).max() < (1e-12 if tol is None else 1e-6) * np.abs(w).max()
            overlap = np.abs(np.sum(Yj.numpy() * U[:, order], axis=0))
            assert np.abs(overlap - 1).max() < (1e-12 if tol is None else 1e-9)
    assert torch.equal(rng_before, torch.random.get_rng_state())
