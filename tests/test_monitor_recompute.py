"""stabkit.monitor.recompute: a call that torch.utils.checkpoint reruns in the backward is one row, with
the gradient norms of the step, in either checkpoint variant."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from stabkit import monitor
from stabkit.train.zca import ZCAWhitening

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # ∂L/∂λ
C = torch.tensor([3.0, 1.0, -1.0], dtype=torch.float64)  # ∂L/∂U[:, 0]
A0 = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))  # gaps 1, 2: an exact spectrum


def _loss(A, scale=1.0):
    lam, U = torch.linalg.eigh(A * 1.0)  # A * 1.0: not a leaf, so ∂L/∂A is measured too
    return scale * ((lam * W).sum() + (U[:, 0] * C).sum())


def _steps(reentrant, steps=3, scale=1.0):
    with monitor.watch() as mon:
        for _ in range(steps):
            A = A0.clone().requires_grad_(True)
            checkpoint(_loss, A, scale, use_reentrant=reentrant).backward()
            mon.step()
    return mon.records


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_call_is_one_row_per_step_with_its_gradient_norms(reentrant):
    """The rerun in the backward was a second row: 6 calls for 3 steps, the reentrant forward's row
    without a gradient and the rerun's with it; the non-reentrant rerun's row was an error
    (``_StopRecomputationError``, checkpoint's early stop raised through the call), non-finite."""
    df = _steps(reentrant)
    assert df["step"].tolist() == [0, 1, 2]
    assert df["error"].tolist() == [""] * 3 and not df["nonfinite"].any()
    assert df["min_gap"].tolist() == [1.0] * 3 and df["lam_min"].tolist() == [1.0] * 3
    # ‖(∂L/∂λ, ∂L/∂U)‖ = √(‖w‖² + ‖c‖²): ∂L/∂U is c in column 0, whatever the sign eigh gives U
    expected = math.sqrt(float((W ** 2).sum() + (C ** 2).sum()))
    assert df["grad_norm"].tolist() == pytest.approx([expected] * 3, rel=1e-12)
    A = A0.clone().requires_grad_(True)
    _loss(A).backward()  # unwatched, not checkpointed: ∂L/∂(A·1) = ∂L/∂A by autograd alone
    assert df["grad_in_norm"].tolist() == pytest.approx([float(A.grad.norm())] * 3, rel=1e-12)


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_non_finite_gradient_through_a_checkpoint_is_counted_once_per_call(reentrant):
    summary = monitor.summarize(_steps(reentrant, steps=2, scale=math.inf))
    assert (summary["calls"], summary["nonfinite_events"]) == (2, 2)


def test_a_checkpointed_zca_layer_under_a_swap_is_one_row_and_its_gradient_is_the_swapped_one():
    """The rerun is swapped as its forward was, so checkpointing changes neither row count nor gradient."""
    x0 = torch.randn(8, 4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = ZCAWhitening(4, d=4, dtype="float64")

    def grad(checkpointed):
        x = x0.clone().requires_grad_(True)
        with monitor.watch(swap_backward="taylor:K=1") as mon:
            y = checkpoint(layer, x, use_reentrant=False) if checkpointed else layer(x)
            (y[:, 0] ** 3).sum().backward()
        return x.grad, mon.records

    (plain, plain_rows), (ckpt, ckpt_rows) = grad(False), grad(True)
    torch.testing.assert_close(ckpt, plain, rtol=1e-12, atol=0)
    assert len(ckpt_rows) == len(plain_rows) == 1
    assert ckpt_rows["grad_norm"].iloc[0] == pytest.approx(plain_rows["grad_norm"].iloc[0], rel=1e-12)


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_rerun_in_another_thread_runs_as_its_watched_forward_did(reentrant):
    """CUDA's autograd runs the backward, and so checkpoint's rerun, in a thread of its own (here a
    Python thread stands for it). The rerun was not watched there, so not swapped: use_reentrant=False
    raised CheckpointError (other tensors saved than in the swapped forward), True gave torch's
    analytic gradient in place of taylor:K=1's; and the reentrant row measured no gradient."""
    import threading

    import stabkit.torch as sktorch
    from stabkit import methods

    A0 = torch.tensor([[2.0, 0.3, 0.1], [0.3, 2.0 + 1e-3, 0.2], [0.1, 0.2, 5.0]], dtype=torch.float64)
    spec = methods.spec("taylor:K=1")

    def loss(A, eigh):
        lam, U = eigh(A * 1.0)
        return (lam * W).sum() + ((U[:, 0] * C).sum()) ** 2

    def grad(eigh):  # unwatched, not checkpointed
        A = A0.clone().requires_grad_(True)
        loss(A, eigh).backward()
        return A.grad

    expected = grad(lambda M: sktorch.eigh(M, method=spec))  # the swapped rule, applied directly
    assert (grad(torch.linalg.eigh) - expected).abs().max() > 1e-3  # the analytic rule's is another gradient
    A = A0.clone().requires_grad_(True)
    errors = []
    with monitor.watch(swap_backward=spec) as mon:
        out = checkpoint(loss, A, torch.linalg.eigh, use_reentrant=reentrant)
        worker = threading.Thread(target=lambda: _record_errors(out.backward, errors))
        worker.start()
        worker.join()
    assert errors == []
    torch.testing.assert_close(A.grad, expected, rtol=1e-12, atol=0)
    df = mon.records
    assert len(df) == 1 and df["backward"].iloc[0] == str(spec) and math.isfinite(df["grad_norm"].iloc[0])


def _record_errors(fn, errors):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 — raised in the thread, asserted in the test
        errors.append(repr(exc))
