"""stabkit.monitor.stats: gaps are the spectrum's exact values, the bound is what the call's backward
meets in the call's dtype (an SVD's σ² squared in that dtype)."""

import numpy as np
import pytest
import torch

import stabkit.torch as sktorch
from stabkit import monitor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SVD_CALLS = {
    "torch.linalg.svd": lambda X: torch.linalg.svd(X, full_matrices=False).S,
    "stabkit.torch.svd": lambda X: sktorch.svd(X, method="analytic", full_matrices=False).S,
    "stabkit.torch.svdvals": lambda X: sktorch.svdvals(X, method="analytic"),
}


def _svd_row(call, sigmas, dtype):
    with monitor.watch(bound="analytic") as mon:
        S = SVD_CALLS[call](torch.diag(torch.tensor(sigmas, dtype=dtype)))
    (row,) = mon.records.to_dict("records")
    return row, sorted(float(s) for s in S)


@pytest.mark.parametrize("call", list(SVD_CALLS))
def test_a_float32_svd_whose_float32_squares_tie_has_an_infinite_bound_and_its_exact_gap(call):
    """σ ≈ 1e-23 and 1.1e-23: in float32 both σ² round to 0 (below half the least subnormal, 7e-46),
    so the float32 backward's 1/(σ_j² − σ_i²) is ∞; the bound used to be the float64 value, 4.8e46."""
    row, (lo, hi) = _svd_row(call, [1.1e-23, 1e-23], torch.float32)
    squares32 = np.float32(lo) * np.float32(lo), np.float32(hi) * np.float32(hi)
    assert squares32[0] == squares32[1]  # the float32 tie the backward meets
    exact_gap = hi * hi - lo * lo        # exact: a float32 σ squared has 48 bits, and 1e-46 is a normal float64
    assert exact_gap > 0
    assert row["bound"] == np.inf
    assert row["min_gap"] == pytest.approx(exact_gap, rel=1e-12, abs=0)
    assert row["max_K"] == pytest.approx(1 / exact_gap, rel=1e-12, abs=0)
    assert row["lam_min"] == pytest.approx(lo * lo, rel=1e-12, abs=0) and not row["nonfinite"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("call", list(SVD_CALLS))
def test_where_the_dtype_changes_nothing_the_bound_is_the_exact_one_over_the_gap(call, dtype):
    """σ = 3 and 1: σ² = 9 and 1 in either dtype, so bound = max_K = 1/8."""
    row, (lo, hi) = _svd_row(call, [3.0, 1.0], dtype)
    exact = 1 / (hi * hi - lo * lo)
    assert row["bound"] == pytest.approx(exact, rel=1e-6, abs=0) and row["max_K"] == pytest.approx(exact, rel=1e-12, abs=0)
    assert row["bound"] == pytest.approx(0.125, rel=1e-6, abs=0)


def test_a_float32_eigh_keeps_its_float32_bound_beside_its_exact_max_K():
    """λ = 1 and 1 + 2⁻²³ (adjacent float32 numbers): the gap is one float32 ulp either way."""
    with monitor.watch(bound="analytic") as mon:
        lam = torch.linalg.eigvalsh(torch.diag(torch.tensor([1.0, 1.0 + 2.0 ** -23], dtype=torch.float32)))
    (row,) = mon.records.to_dict("records")
    gap = float(lam[1]) - float(lam[0])  # exact: two float32 numbers near 1
    assert row["min_gap"] == gap and row["max_K"] == 1 / gap
    assert row["bound"] == float(np.float32(1) / np.float32(gap))  # the float32 backward's 1/gap


@pytest.mark.parametrize("call", list(SVD_CALLS))
def test_a_float64_svd_past_the_square_range_is_finite_with_its_relative_gap(call):
    """σ = 1e160, 2e160, 4e160: σ² overflows float64 (σ > 1.3e154), which flagged the call non-finite
    and made the relative gap ∞ − ∞ = NaN. The σ are finite; the gaps of σ² over max σ² are 3/16 and
    12/16 (closed form), so min_rel_gap = 0.1875, and the absolute gaps (3e320) are beyond float64."""
    row, _ = _svd_row(call, [4e160, 1e160, 2e160], torch.float64)
    assert not row["nonfinite"]
    assert row["min_rel_gap"] == pytest.approx(3 / 16, rel=1e-14, abs=0)
    assert row["min_gap"] == np.inf


@pytest.mark.parametrize("call", [lambda A: torch.linalg.eigh(A), lambda A: torch.linalg.eigvalsh(A),
                                  lambda A: sktorch.eigh(A, method="taylor"), lambda A: torch.linalg.eigh(A.reshape(2, 2, 3, 3))])
def test_a_batch_row_holds_the_worst_matrix_of_each_statistic(call):
    """Diagonal matrices (exact spectra for every solver), each statistic's worst in another matrix:
    gaps (1, 2), (e, 2 − e), (8.5, 99.5), (1e-3, 9e-3) with e = 2⁻²⁰; relative gaps (to max |λ|) 1/4,
    e/3, 0.085, 0.1: min gap e, min relative gap e/3 (both of matrix 2), λ_min −8 (matrix 3); the analytic
    bound max 1/|λ_i − λ_j| = 1/e. A relative gap is each matrix's own, never the batch's min gap over
    its largest |λ| (e/100)."""
    e = 2.0 ** -20
    diag = [[1.0, 2.0, 4.0], [1.0, 1.0 + e, 3.0], [-8.0, 0.5, 100.0], [0.0, 1e-3, 1e-2]]
    with monitor.watch(bound="analytic") as mon:
        call(torch.diag_embed(torch.tensor(diag, dtype=torch.float64)))
    (row,) = mon.records.to_dict("records")
    assert row["batch"] == 4 and row["n"] == 3
    assert row["min_gap"] == e and row["max_K"] == 1 / e  # exact: a float64 difference of 1 and 1 + 2⁻²⁰
    assert row["min_rel_gap"] == pytest.approx(e / 3, rel=1e-15)
    assert row["lam_min"] == -8.0 and row["bound"] == pytest.approx(1 / e, rel=1e-15)


def test_a_batched_svd_row_holds_the_worst_matrix_of_its_squared_spectrum():
    """σ = (3, 2, 1) and (5, 4, 1): σ² gaps (3, 5) and (15, 9), relative to max σ² (9, 25): 1/3 and 9/25."""
    S = torch.diag_embed(torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 1.0]], dtype=torch.float64))
    with monitor.watch() as mon:
        torch.linalg.svd(S)
    (row,) = mon.records.to_dict("records")
    assert row["min_gap"] == pytest.approx(3.0, rel=1e-15) and row["lam_min"] == pytest.approx(1.0, rel=1e-15)
    assert row["min_rel_gap"] == pytest.approx(1 / 3, rel=1e-15)
