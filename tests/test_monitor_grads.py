"""stabkit.monitor.grads: a call's gradient norms are finite wherever the gradient is, per run."""

import math

import pytest
import torch

from stabkit import monitor
from stabkit.monitor import grads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = (3.0, 4.0, 12.0)  # ‖(3, 4, 12)‖ = 13


def _diag(values, dtype=torch.float64):
    return torch.diag(torch.tensor(values, dtype=dtype))


@pytest.mark.parametrize("scale", [1e160, 1e-160, 1e-170, 1.0])
def test_float64_gradient_norms_far_outside_the_range_of_squares(scale):
    """∂L/∂λ = scale·(3, 4, 12) and ∂L/∂U = scale·D: a sum of squares in float64 overflowed to ∞ at 1e160
    (a false non-finite event), lost digits at 1e-160 (relative error 5.6e-6) and gave 0 at 1e-170."""
    D = torch.tensor([[1.0, -2.0, 0.5], [0.0, 7.0, -1.0], [2.0, 0.0, 3.0]], dtype=torch.float64)
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam, U = torch.linalg.eigh(_diag([1.0, 2.0, 4.0]) + W)
        ((lam * torch.tensor(WEIGHTS, dtype=torch.float64)).sum() * scale + (U * D).sum() * scale).backward()
    (row,) = mon.records.to_dict("records")
    expected = math.hypot(*(w * scale for w in WEIGHTS), *(float(d) * scale for d in D.flatten()))
    assert row["grad_norm"] == pytest.approx(expected, rel=1e-14, abs=0)
    assert math.isfinite(row["grad_in_norm"]) and row["grad_in_norm"] > 0 and not row["nonfinite"]


@pytest.mark.parametrize("scale", [1e160, 1e-160, 1e-170])
def test_the_gradient_reaching_A_has_its_norm_far_outside_the_range_of_squares(scale):
    """eigvalsh: ∂L/∂A = U diag(w) Uᵀ, whose Frobenius norm is ‖w‖ (U orthogonal, to rounding)."""
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0]) + W)
        (lam * torch.tensor(WEIGHTS, dtype=torch.float64) * scale).sum().backward()
    (row,) = mon.records.to_dict("records")
    expected = math.hypot(*(w * scale for w in WEIGHTS))
    assert row["grad_norm"] == pytest.approx(expected, rel=1e-14, abs=0)
    assert row["grad_in_norm"] == pytest.approx(expected, rel=1e-12, abs=0)
    assert row["grad_in_norm"] == pytest.approx(math.sqrt(float((W.grad / scale).square().sum())) * scale, rel=1e-14, abs=0)


def test_split_runs_get_their_own_norms_far_outside_the_range_of_squares():
    """Two stacked runs, run 0's gradient at 1e160, run 1's at 1e-170: each its own finite norm."""
    runs = [monitor.Monitor(), monitor.Monitor()]
    W = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([[1e160], [1e-170]], dtype=torch.float64)
    with monitor.watching(monitor.SplitMonitor(runs)):
        lam = torch.linalg.eigvalsh(torch.stack([_diag([1.0, 2.0, 4.0])] * 2) + W)
        (lam * torch.tensor(WEIGHTS, dtype=torch.float64) * scales).sum().backward()
    for mon, scale in zip(runs, (1e160, 1e-170)):
        (row,) = mon.records.to_dict("records")
        assert row["grad_norm"] == pytest.approx(math.hypot(*(w * scale for w in WEIGHTS)), rel=1e-14, abs=0)
        assert not row["nonfinite"]


def test_a_non_finite_gradient_is_still_infinite_and_flagged():
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0]) + W)
        (lam * torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)).sum().backward()
    (row,) = mon.records.to_dict("records")
    assert row["grad_norm"] == math.inf and row["grad_in_norm"] == math.inf and row["nonfinite"]


def test_float32_gradients_keep_their_norm():
    W = torch.zeros(3, 3, requires_grad=True)
    with monitor.watch() as mon:
        lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0], torch.float32) + W)
        (lam * torch.tensor(WEIGHTS) * 2.0 ** 100).sum().backward()  # 2¹⁰⁰·w: exact in float32
    (row,) = mon.records.to_dict("records")
    assert row["grad_norm"] == pytest.approx(13 * 2.0 ** 100, rel=1e-14, abs=0)


@pytest.mark.parametrize("factors", [(1.0, 1.0), (1.0, 2.0), (2.0, 1.0)])
def test_each_backward_through_a_retained_graph_is_measured_on_its_own(factors):
    """L_k = f_k·Σ wᵢλᵢ, backpropagated one after another through one retained graph: ‖∂L_k/∂λ‖ = 13·f_k
    and ‖∂L_k/∂A‖ = 13·f_k. The row holds the larger, 13·max f_k; grad_norm used to be their hypot
    (13√2 for two equal backwards) and grad_in_norm the last one's."""
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0]) + W)
        weighted = (lam * torch.tensor(WEIGHTS, dtype=torch.float64)).sum()
        (weighted * factors[0]).backward(retain_graph=True)
        (weighted * factors[1]).backward()
    (row,) = mon.records.to_dict("records")
    assert row["grad_norm"] == pytest.approx(13 * max(factors), rel=1e-14, abs=0)
    assert row["grad_in_norm"] == pytest.approx(13 * max(factors), rel=1e-12, abs=0)
    assert float(W.grad.norm()) == pytest.approx(13 * sum(factors), rel=1e-12, abs=0)  # W's own gradient does add up


def test_a_non_finite_earlier_backward_stays_in_the_row():
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0]) + W)
        (lam * torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)).sum().backward(retain_graph=True)
        lam.sum().backward()
    (row,) = mon.records.to_dict("records")
    assert row["grad_norm"] == math.inf and row["grad_in_norm"] == math.inf and row["nonfinite"]


def test_split_runs_measure_each_backward_on_its_own():
    """Run 0's gradient 1·w then 3·w, run 1's 2·w then 1·w: rows 13·3 and 13·2."""
    runs = [monitor.Monitor(), monitor.Monitor()]
    W = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    with monitor.watching(monitor.SplitMonitor(runs)):
        lam = torch.linalg.eigvalsh(torch.stack([_diag([1.0, 2.0, 4.0])] * 2) + W)
        weighted = lam * torch.tensor(WEIGHTS, dtype=torch.float64)
        (weighted * torch.tensor([[1.0], [2.0]], dtype=torch.float64)).sum().backward(retain_graph=True)
        (weighted * torch.tensor([[3.0], [1.0]], dtype=torch.float64)).sum().backward()
    assert [mon.records["grad_norm"].item() for mon in runs] == [pytest.approx(39.0, rel=1e-14, abs=0),
                                                                  pytest.approx(26.0, rel=1e-14, abs=0)]


def test_a_watched_call_and_its_backwards_read_nothing_back_to_the_host():
    """No flush, no records read: the statistics, the bound and the gradient norms stay device
    scalars (on CUDA each read-back would wait for the device)."""
    from tests._host_reads import count_host_reads

    W = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    runs = [monitor.Monitor(bound="analytic"), monitor.Monitor(bound="analytic")]
    with monitor.watch(bound="analytic") as mon, monitor.watching(monitor.SplitMonitor(runs)):
        with count_host_reads() as seen:
            lam, U = torch.linalg.eigh(torch.stack([_diag([1.0, 2.0, 4.0])] * 2) + W)
            S = torch.linalg.svd(W + 1.0, full_matrices=False).S
            loss = lam.sum() + U.abs().sum() + S.sum()
            loss.backward(retain_graph=True)
            loss.backward()
    assert not [site for site in seen if "monitor/" in site[1]]
    assert len(mon.records) == 2 and all(len(r.records) == 2 for r in runs)


def _runs_under_vmap(in_dims, weights):
    """Two stacked runs (run 0's matrices with gap e + 1, run 1's 10(e + 1)), vmapped over a third
    dimension of E = 3 at ``in_dims``, autograd outside the vmap; L = Σ w_r·λ over each run r."""
    E = 3
    per_run = [[_diag([0.0, (e + 1) * g]) for e in range(E)] for g in (1.0, 10.0)]
    X = torch.stack([torch.stack(ms) for ms in per_run])            # (R, E, 2, 2)
    X = (X if in_dims == 1 else X.movedim(1, 0)).contiguous().requires_grad_(True)
    runs = [monitor.Monitor(), monitor.Monitor()]
    with monitor.watching(monitor.SplitMonitor(runs)):
        lam = torch.func.vmap(torch.linalg.eigvalsh, in_dims=in_dims, out_dims=1)(X * 1.0)  # (R, E, 2)
        (lam * torch.tensor(weights, dtype=torch.float64)[:, None, :]).sum().backward()
    return [mon.records.to_dict("records")[0] for mon in runs]


@pytest.mark.parametrize("in_dims", [0, 1])
def test_split_runs_under_vmap_over_another_dimension_get_their_own_matrices_and_gradients(in_dims):
    """vmap puts its batch dimension first (or where in_dims says) under the run dimension: the rows took
    R equal parts of that layout, so run 1 was given run 0's matrix of gap 3 (and mixed gradients)."""
    weights = [(3.0, 4.0), (5.0, 12.0)]
    rows = _runs_under_vmap(in_dims, weights)
    for row, gap, w in zip(rows, (1.0, 10.0), weights):
        assert row["min_gap"] == pytest.approx(gap, rel=1e-12, abs=0) and row["batch"] == 3
        assert row["grad_norm"] == pytest.approx(math.sqrt(3) * math.hypot(*w), rel=1e-14, abs=0)
        assert row["grad_in_norm"] == pytest.approx(math.sqrt(3) * math.hypot(*w), rel=1e-12, abs=0)


def test_run_norms_shapes_are_as_documented():
    """One run: a 0-d norm (a float64 gradient's scaled norm was (1, 1, 1), its max kept as a 3-d
    tensor); R runs: one norm per run. Values against numpy's norm of each part."""
    import numpy as np

    g = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) * 1e160
    one = grads.run_norms(g, 1)
    assert one.shape == () and float(one) == pytest.approx(np.linalg.norm(g.numpy().ravel() / 1e160) * 1e160, rel=1e-15)
    per_run = grads.run_norms(g, 2)
    assert per_run.shape == (2,)
    for r in range(2):
        assert float(per_run[r]) == pytest.approx(np.linalg.norm(g[r].numpy().ravel() / 1e160) * 1e160, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("call", ["eigh", "svd"])
def test_a_complex_call_backpropagates_and_gets_torchs_gradient_norms(dtype, call):
    """A complex Hermitian eigh or complex svd inside watch: the backward raised 'linalg.vector_norm: dtype
    should be complex for complex inputs' out of the monitor's gradient hook, breaking the user's training.
    The norms are those of the gradients torch hands to the outputs and to A (retain_grad, in complex128)."""
    X = torch.randn(4, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    X = X.to(dtype).requires_grad_(True)
    A = X + X.mH
    A.retain_grad()
    with monitor.watch() as mon:
        if call == "eigh":
            lam, U = torch.linalg.eigh(A)
        else:
            U, lam, _ = torch.linalg.svd(A)
        lam.retain_grad()
        U.retain_grad()
        ((lam * torch.arange(1.0, 5.0)).sum() + (U.abs() * torch.arange(16.0).reshape(4, 4)).sum()).backward()
    (row,) = mon.records.to_dict("records")
    out_norm = math.hypot(float(lam.grad.double().norm()), float(U.grad.to(torch.complex128).abs().pow(2).sum().sqrt()))
    in_norm = float(A.grad.to(torch.complex128).abs().pow(2).sum().sqrt())
    rel = 1e-12 if dtype == torch.complex128 else 1e-5
    assert row["grad_norm"] == pytest.approx(out_norm, rel=rel)
    assert row["grad_in_norm"] == pytest.approx(in_norm, rel=rel)
    assert not row["nonfinite"] and X.grad is not None and torch.isfinite(X.grad).all()


def test_a_failure_in_the_gradient_hook_is_warned_and_the_backward_goes_on(monkeypatch):
    """The norms are measured in tensor hooks that run inside the user's backward: a failure there
    (the complex-gradient one was real) raised out of loss.backward(), where the forward's bookkeeping
    is only ever warned about. The gradient is torch's, unchanged; the norm is left unmeasured."""
    from stabkit.monitor import hooks

    monkeypatch.setattr(hooks, "_warned_internal", False)

    def broken(*args, **kwargs):
        raise RuntimeError("norm bug")

    monkeypatch.setattr(grads, "run_norms", broken)
    W = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="could not be logged.*norm bug"):
        with monitor.watch() as mon:
            lam = torch.linalg.eigvalsh(_diag([1.0, 2.0, 4.0]) + W)
            (lam * torch.tensor(WEIGHTS, dtype=torch.float64)).sum().backward()
    # ∂(Σ wᵢλᵢ)/∂W = diag(w) for a diagonal matrix with distinct eigenvalues
    torch.testing.assert_close(W.grad, _diag(list(WEIGHTS)))
    (row,) = mon.records.to_dict("records")
    assert math.isnan(row["grad_norm"]) and math.isnan(row["grad_in_norm"])
