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
        torch.testing.assert_close(p.detach().reshape(RUNS, -1), own, rtol=1e-9, atol=1e-12, msg=name)
    for name, b in net.named_buffers():  # BatchNorm's and the ZCA layer's running statistics
        if b.is_floating_point():
            own = torch.stack([dict(m.named_buffers())[name].flatten() for m in models])
            torch.testing.assert_close(b.reshape(RUNS, -1), own, rtol=1e-9, atol=1e-12, msg=name)
    net.eval()
    for m in models:
        m.eval()
    with torch.no_grad():  # eval mode: the running statistics, per run
        torch.testing.assert_close(net(stacked.stacked_input(xs)), torch.stack([m(x) for m, x in zip(models, xs)], 1),
                                   rtol=1e-9, atol=1e-12)


def test_one_runs_nan_weights_fail_the_whole_stack_s_eigendecomposition():
    """The ZCA layer's eigendecomposition is batched over every run's groups, so one run's non-finite
    covariance makes it raise for all (the training loop then runs that step run by run:
    tests/test_train_stacked_loop.py)."""
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


def test_each_stacked_run_gets_its_own_full_covariance_product():
    """``covariance = "full"`` with R runs stacked: R products over each run's own channels, whose
    diagonal blocks are those of each run's layer alone (and no product over R·C channels)."""
    from stabkit.train.zca import block_covariance

    g = torch.Generator().manual_seed(0)
    runs, groups, d = 3, 4, 4
    xg = torch.randn(runs * groups, d, 50, generator=g, dtype=torch.float64)
    mean, xc, cov = block_covariance(xg, 1e-4, runs)
    for r in range(runs):
        own = slice(r * groups, (r + 1) * groups)
        m, c, v = block_covariance(xg[own], 1e-4)
        x = xg[own].reshape(groups * d, 50)  # the blocks, computed here from their definition
        want = ((x - x.mean(1, keepdim=True)) @ (x - x.mean(1, keepdim=True)).T / 50).reshape(groups, d, groups, d)
        want = torch.stack([want[k, :, k, :] for k in range(groups)]) + 1e-4 * torch.eye(d, dtype=torch.float64)
        torch.testing.assert_close(v, want, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(cov[own], v, rtol=1e-13, atol=1e-16)
        assert torch.equal(mean[own], m) and torch.equal(xc[own], c)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_run_norms_are_each_runs_block_norm(layout):
    g = torch.Generator().manual_seed(1)
    blocks = [torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) for _ in range(RUNS)]
    stacked_weight = torch.cat(blocks).contiguous(memory_format=layout)
    want = torch.stack([b.flatten().norm() for b in blocks])
    torch.testing.assert_close(stacked.run_norms(stacked_weight, RUNS), want, rtol=1e-14, atol=0)
    linear = torch.stack([b.reshape(4, 27) for b in blocks])  # (R, out, in), as StackedLinear's weight
    torch.testing.assert_close(stacked.run_norms(linear, RUNS), want, rtol=1e-14, atol=0)


def test_stacked_logits_are_the_separate_linears_logits_under_autocast():
    """Under bf16 autocast a separate run's nn.Linear gives bf16 logits with its bias inside the GEMM;
    the stacked head gives the same dtype and values within bf16 rounding (an einsum plus a float32
    bias gave float32 logits)."""
    g = torch.Generator().manual_seed(2)
    heads = [torch.nn.Linear(16, 10) for _ in range(RUNS)]
    for h in heads:
        torch.nn.init.normal_(h.weight, generator=g)
        torch.nn.init.normal_(h.bias, generator=g)
    head = stacked.StackedLinear(torch.stack([h.weight.detach() for h in heads]), torch.stack([h.bias.detach() for h in heads]))
    x = torch.randn(8, RUNS * 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(head(x), torch.stack([h(x[:, 16 * r:16 * (r + 1)]) for r, h in enumerate(heads)], 1),
                                   rtol=1e-6, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = torch.stack([h(x[:, 16 * r:16 * (r + 1)]) for r, h in enumerate(heads)], 1)
            got = head(x)
    assert got.dtype == want.dtype == torch.bfloat16
    # the same GEMM in bf16: at most one rounding apart (bf16 keeps 8 significant bits), on any CPU's kernels
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=2 ** -7)
