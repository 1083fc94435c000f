"""LESS: the principal vector from any start or an error, never another eigenvector or a
half-converged one; input contract; first derivatives only."""

import math

import numpy as np
import pytest
import torch

from stabkit import layers
from stabkit.errors import EigensolverError, InputError
from tests._helpers import bad_matrices, nonsymmetric, second_derivative
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# λ = 3 (vector (1, −1, 0)/√2), 1 ((1, 1, 0)/√2), −10 (e₃): the all-ones vector is orthogonal to
# the principal vector, and e₃ (the largest column) is an eigenvector
ORTHOGONAL_TO_ONES = torch.tensor([[2.0, -1.0, 0.0], [-1.0, 2.0, 0.0], [0.0, 0.0, -10.0]], dtype=torch.float64)


def test_principal_vector_when_start_heuristics_sit_on_another_eigenvector():
    y, lam = layers.less(ORTHOGONAL_TO_ONES)
    assert abs(float(lam) - 3.0) < 1e-13
    torch.testing.assert_close(y, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2), rtol=0, atol=1e-12)


def test_start_on_a_non_principal_eigenvector_is_an_error():
    with pytest.raises(EigensolverError, match="not the principal"):
        layers.less(ORTHOGONAL_TO_ONES, y0=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_tie_not_converged_is_an_error(dtype):
    # relative top gap 1e-4: descent needs far more than max_iter steps; it must say so
    A = torch.as_tensor(build([0.1, 0.575, 1.05, 2.0, 2.0002], seed=5), dtype=dtype)
    with pytest.raises(EigensolverError, match="not converged after 5000 iterations: relative residual"):
        layers.less(A)


def test_less_at_the_rounding_floor_is_converged():
    """As for IED: a tol below float64's resolution ends at the rounding floor, which is convergence."""
    A = torch.as_tensor(build([0.1, 0.5, 1.0, 2.0, 3.0], seed=1))
    y, lam = layers.less(A, tol=1e-30, max_iter=300)
    assert abs(float(lam) - 3.0) < 1e-13
    assert abs(abs(float(y @ torch.linalg.eigh(A)[1][:, -1])) - 1) < 1e-14


def test_well_separated_two_by_two_matches_closed_form():
    # λ = (0.00036, 5.597): the step-size rule before exact line search oscillated here for 5000 steps
    a, b, c = 5.3484, 1.1522, 0.2486
    lam = (a + c) / 2 + math.hypot((a - c) / 2, b)
    y, l = layers.less(torch.tensor([[a, b], [b, c]], dtype=torch.float64), max_iter=50)
    v = np.array([b, lam - a]) / math.hypot(b, lam - a)
    assert abs(float(l) - lam) < 1e-13 * lam
    assert abs(abs(float(y.numpy() @ v)) - 1) < 1e-14


def test_zero_matrix_gives_a_unit_vector_and_zero():
    y, lam = layers.less(torch.zeros(3, 3, dtype=torch.float64))
    assert float(lam) == 0.0 and abs(float(torch.linalg.vector_norm(y)) - 1) < 1e-15


@pytest.mark.parametrize("label, A, match", bad_matrices(3, n=4) + [("non-symmetric", nonsymmetric(), "not symmetric")],
                         ids=[c[0] for c in bad_matrices(3, n=4)] + ["non-symmetric"])
def test_bad_input_raises_input_error(label, A, match):
    with pytest.raises(InputError, match=match):
        layers.less(A)


def test_bad_max_iter_raises_input_error():
    with pytest.raises(InputError, match="max_iter"):
        layers.less(ORTHOGONAL_TO_ONES, max_iter=0)


@pytest.mark.parametrize("y0, match", [
    ([1.0, 0.0, 0.0], "y0 must be a torch.Tensor or None, got list"),
    (torch.ones(4, dtype=torch.float64), r"y0 must have shape \(d,\) or \(\.\.\., d\) broadcasting to A's \(3,\), got \(4,\)"),
    (torch.ones(2, 3, dtype=torch.float64), r"y0 must have shape .* broadcasting to A's \(3,\), got \(2, 3\)"),
    (torch.ones((), dtype=torch.float64), r"y0 must have shape .*, got \(\)"),
    (torch.ones(3, dtype=torch.complex128), "y0 must be a real tensor, got dtype torch.complex128"),
    (torch.ones(3, dtype=torch.float64, device="meta"), "y0 is on device meta, A on cpu"),
    (torch.zeros(3, dtype=torch.float64), "y0 must be finite and non-zero"),
    (torch.tensor([float("nan"), 1.0, 0.0], dtype=torch.float64), "y0 must be finite and non-zero"),
], ids=["list", "wrong-d", "wrong-batch", "scalar", "complex", "other-device", "zero", "nan"])
def test_bad_start_vector_raises_input_error(y0, match):
    """y0 is checked before iterating (a list, a wrong shape or another device gave torch's traceback;
    a zero or NaN start a misleading 'not the principal one (λ = nan)')."""
    with pytest.raises(InputError, match="less: " + match):
        layers.less(ORTHOGONAL_TO_ONES, y0=y0)


def test_start_vector_of_another_dtype_or_broadcast_over_the_batch_is_accepted():
    A = torch.stack([ORTHOGONAL_TO_ONES, 2 * ORTHOGONAL_TO_ONES])
    y0 = torch.tensor([1.0, -0.9, 0.0], dtype=torch.float32)  # converted to A's float64
    y, lam = layers.less(A, y0=y0)
    torch.testing.assert_close(lam, torch.tensor([3.0, 6.0], dtype=torch.float64), rtol=0, atol=1e-12)
    y32, lam32 = layers.less(ORTHOGONAL_TO_ONES.float(), y0=y0.double())
    assert y32.dtype == torch.float32 and abs(float(lam32) - 3.0) < 1e-5


@pytest.mark.parametrize("seed", [1.5, -1, True, "x", 2 ** 64])
def test_bad_seed_raises_input_error(seed):
    with pytest.raises(InputError, match=r"less: seed must be an integer in \[0, 2\*\*64\)"):
        layers.less(ORTHOGONAL_TO_ONES, seed=seed)


def test_seed_range_ends_are_accepted():
    for seed in (0, 2 ** 64 - 1, np.int64(7)):
        assert abs(float(layers.less(ORTHOGONAL_TO_ONES, seed=seed)[1]) - 3.0) < 1e-13


@pytest.mark.parametrize("tol", [0.0, -1e-3, 1.0, float("nan"), True])
def test_bad_tol_raises_input_error(tol):
    """A tol outside (0, 1) is refused before iterating, as ied refuses it (less passed it through)."""
    with pytest.raises(InputError, match=r"less: tol must be a number in \(0, 1\)"):
        layers.less(ORTHOGONAL_TO_ONES, tol=tol)


def test_second_derivative_is_refused():
    A = torch.as_tensor(build([0.3, 1.0, 2.0, 4.0], seed=2))
    with pytest.raises(RuntimeError, match="differentiate twice"):
        second_derivative(lambda a: layers.less(a)[0], A)


def test_max_iter_and_zca_sizes_share_one_positive_integer_rule():
    """ZCAWhitening's d/num_features re-wrote check_iterations's rule (numpy integers taken there, refused
    here): one helper, a Python or numpy integer ≥ 1, the same words."""
    from stabkit.train.zca import ZCAWhitening

    assert abs(float(layers.less(ORTHOGONAL_TO_ONES, max_iter=np.int64(5000))[1]) - 3.0) < 1e-13
    assert ZCAWhitening(np.int64(4), d=np.int64(2)).groups == 2
    for call, name in ((lambda: layers.less(ORTHOGONAL_TO_ONES, max_iter=2.0), "less: max_iter"),
                       (lambda: ZCAWhitening(4, d=2.0), "ZCAWhitening: d")):
        with pytest.raises(InputError, match=f"{name} must be a positive integer, got 2.0"):
            call()


# near tie (relative top gap 0.02): at a loose tol the returned vector still carries its start's
# error, of order tol / gap, so a start that moves with the batch moves the answer visibly
NEAR_TIE = torch.as_tensor(build([0.1, 0.5, 1.0, 1.96, 2.0], seed=3))
OTHERS = [torch.as_tensor(build(lam, seed=s)) for lam, s in
          (([0.3, 0.7, 1.2, 2.5, 4.0], 4), ([-3.0, 0.7, 1.2, 2.5, 4.0], 7), ([-6.0, -2.0, 0.0, 1.0, 5.0], 9))]


@pytest.mark.parametrize("tol", [None, 1e-6], ids=["default-tol", "tol-1e-6"])
def test_result_does_not_depend_on_the_batch_position_or_the_other_matrices(tol):
    """The nudge was drawn for the whole batch, so NEAR_TIE's start changed with its place: at tol
    1e-6 its vector in [B, A] was 1.2e-6 from the one in [A, B] or alone. Now one nudge per seed is
    shared by the batch. Allowed difference 1e-12: batched and unbatched products may round apart
    (≈ 1e-15 seen); a start that differs leaves ≈ 1e-6 here. The global RNG is not touched."""
    rng_before = torch.random.get_rng_state()
    alone = layers.less(NEAR_TIE, tol=tol)
    B, C, D = OTHERS
    placed = [(torch.stack([NEAR_TIE, B]), 0), (torch.stack([B, NEAR_TIE]), 1), (torch.stack([C, D, B, NEAR_TIE]), 3)]
    for batch, i in placed:
        y, lam = layers.less(batch, tol=tol)
        assert float((y[i] - alone[0]).abs().max()) < 1e-12
        assert abs(float(lam[i] - alone[1])) < 1e-12
    assert torch.equal(rng_before, torch.random.get_rng_state())


def test_batched_results_match_an_independent_float64_eigendecomposition():
    """PSD and indefinite matrices in one batch, in both orders: each principal pair agrees with
    numpy.linalg.eigh's (float64) to 1e-12 (eigenvalues relative to the largest |λ|)."""
    mats = [NEAR_TIE] + OTHERS
    for order in (mats, mats[::-1]):
        y, lam = layers.less(torch.stack(order))
        for M, yi, li in zip(order, y, lam):
            w, U = np.linalg.eigh(M.numpy())
            assert abs(float(li) - w[-1]) < 1e-12 * np.abs(w).max()
            assert abs(abs(float(yi.numpy() @ U[:, -1])) - 1) < 1e-12


@pytest.mark.parametrize("scale", [1e-200, 1e200, 1e-30], ids=["1e-200", "1e200", "1e-30-float32"])
def test_start_vector_of_extreme_magnitude_is_its_direction(scale):
    """Only the direction of y0 matters: a finite non-zero y0 whose 2-norm under- or overflows the dtype
    (1e-200·v in float64: ‖·‖ = 0; 1e200·v: ∞; 1e-30·v in float32) was refused as "zero" or
    "not finite". Its result is the principal pair of A = diag(1, 3, 2): e₂ and 3."""
    dtype = torch.float32 if scale == 1e-30 else torch.float64
    A = torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=dtype))
    y, lam = layers.less(A, y0=scale * torch.tensor([1.0, 1.0, 1.0], dtype=dtype))
    # stopped at ‖(I − yyᵀ)Ay‖ ≤ 8 eps ‖A‖_F: sin∠(y, e₂) ≤ that over the gap 3 − 2 = 1 (Davis–Kahan)
    bound = 8 * torch.finfo(dtype).eps * math.sqrt(14)
    torch.testing.assert_close(y, torch.tensor([0.0, 1.0, 0.0], dtype=dtype), rtol=0, atol=2 * bound)
    assert abs(float(lam) - 3.0) <= 4 * torch.finfo(dtype).eps * 3
