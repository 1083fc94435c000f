"""stabkit.train.stacked: R runs stacked into one network train exactly as R separate networks
(checked in float64 against the separate runs, step by step, for both presets)."""

import pytest
import torch
import torch.nn.functional as F

from stabkit.errors import EigensolverError
from stabkit.train import loop, stacked
from stabkit.train.resnet import ResNet18

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUNS = 3


def _models(preset, method="analytic"):
    cfg = loop.resolve_config({"preset": preset, "method": method, "d": 4, "width": 0.125, "dtype": "float64",
                               "device": "cpu"})
    models = []
    for seed in range(RUNS):
        torch.manual_seed(seed)
        models.append(ResNet18(d=4, method=cfg["method"], dtype="float64", width=0.125, zca=cfg.get("zca"),
                               conv_init=cfg["preset"].conv_init).double())
    return cfg, models


def _sgd(params, cfg):
    return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


@pytest.mark.parametrize("method", ["analytic", "pi-forward", "pi"])  # the power iterations keep or drop pairs per matrix
@pytest.mark.parametrize("preset", ["stabkit", "paper"])
def test_stacked_runs_train_exactly_as_separate_runs(preset, method):
    cfg, models = _models(preset, method)
    net = stacked.stack(models)  # a copy: the separate models train on below
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(RUNS)]
    ys = [torch.randint(0, 10, (8,), generator=g) for _ in range(RUNS)]
    opts = [_sgd(m.parameters(), cfg) for m in models]
    opt = _sgd(net.parameters(), cfg)
    for _ in range(3):  # momentum and weight decay act from the second step
        separate = []
        for model, o, x, y in zip(models, opts, xs, ys):
            o.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            o.step()
            separate.append(loss.detach())
        opt.zero_grad()
        losses = stacked.run_losses(net(stacked.stacked_input(xs)), torch.stack(ys, 1))
        losses.sum().backward()
        opt.step()
        torch.testing.assert_close(losses.detach(), torch.stack(separate), rtol=1e-12, atol=0)
    for name, p in net.named_parameters():
        own = torch.stack([dict(m.named_parameters())[name].detach().flatten() for m in models])
        torch.testing.assert_close(stacked.run_slices(p.detach(), RUNS), own, rtol=1e-9, atol=1e-12, msg=name)
    for name, b in net.named_buffers():  # BatchNorm's and the ZCA layer's running statistics
        if b.is_floating_point():
            own = torch.stack([dict(m.named_buffers())[name].flatten() for m in models])
            torch.testing.assert_close(stacked.run_slices(b, RUNS), own, rtol=1e-9, atol=1e-12, msg=name)
    net.eval()
    for m in models:
        m.eval()
    with torch.no_grad():  # eval mode: the running statistics, per run
        torch.testing.assert_close(net(stacked.stacked_input(xs)), torch.stack([m(x) for m, x in zip(models, xs)], 1),
                                   rtol=1e-9, atol=1e-12)


def test_one_runs_nan_weights_fail_the_whole_stack_s_eigendecomposition():
    """The limit of stacking today: the ZCA layer's eigendecomposition is batched over every run's
    groups, so one run's non-finite covariance makes it raise for all (a training loop would first
    have to mask that run's groups)."""
    _, models = _models("stabkit")
    net = stacked.stack(models)
    with torch.no_grad():
        stacked.run_block(net.conv1.weight, RUNS, 1).fill_(float("nan"))
    x = stacked.stacked_input([torch.randn(8, 3, 32, 32, dtype=torch.float64) for _ in range(RUNS)])
    with pytest.raises(EigensolverError):
        net(x)


def test_only_known_layers_are_stacked():
    class WithOwnParameter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="parameters of its own"):
        stacked.stack([WithOwnParameter(), WithOwnParameter()])
    with pytest.raises(ValueError, match="ungrouped"):
        stacked.stack([torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2)) for _ in range(2)])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_retired_run_stays_zero_and_the_others_train_as_separate_runs(layout):
    """Run 1's weights go NaN (its eigendecomposition would fail the stack); once retired, the stack
    trains on and runs 0 and 2 match their separate networks step by step — also in the fast path's
    channels_last layout, where a flattened run slice is a copy and writing must go through a view."""
    cfg, models = _models("stabkit")
    net = stacked.stack(models).to(memory_format=layout)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(RUNS)]
    ys = [torch.randint(0, 10, (8,), generator=g) for _ in range(RUNS)]
    opts = [_sgd(m.parameters(), cfg) for m in models]
    opt = _sgd(net.parameters(), cfg)
    for step in range(3):
        if step == 1:  # after a step with momentum: its buffers must be cleared too
            with torch.no_grad():
                stacked.run_block(net.conv1.weight, RUNS, 1).fill_(float("nan"))
            assert not torch.isfinite(net.conv1.weight).all()
            stacked.retire(net, 1, RUNS, opt)
        separate = []
        for r in (0, 2):
            opts[r].zero_grad()
            loss = F.cross_entropy(models[r](xs[r]), ys[r])
            loss.backward()
            opts[r].step()
            separate.append(loss.detach())
        opt.zero_grad()
        losses = stacked.run_losses(net(stacked.stacked_input(xs).contiguous(memory_format=layout)), torch.stack(ys, 1))
        losses.sum().backward()
        opt.step()
        torch.testing.assert_close(losses.detach()[[0, 2]], torch.stack(separate), rtol=1e-11, atol=0)
    for name, p in net.named_parameters():
        rows = stacked.run_slices(p.detach(), RUNS)
        assert not rows[1].any(), name  # retired: zero, and kept zero by the masked gradient
        for r in (0, 2):
            torch.testing.assert_close(rows[r], dict(models[r].named_parameters())[name].detach().flatten(),
                                       rtol=1e-9, atol=1e-12, msg=name)
