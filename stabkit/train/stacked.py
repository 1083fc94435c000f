"""R independent ResNet-18 runs as one network, side by side in its channels (issue 12's throughput).

One training step of a CIFAR ResNet-18 at batch 128 launches many small kernels; on a large GPU
their number rather than their arithmetic may set the pace, and several processes only take turns
on the device (the first H200 window: no gain past 3 processes; the cause is not yet measured).
Stacking R runs gives each kernel R times the work. Every run still sees only its own weights, images and gradients:

- a convolution with ``groups = R`` maps run r's input channels to run r's output channels only;
- BatchNorm's statistics are per channel, and the ZCA layer's groups of d channels lie inside one
  run's block (d divides the run's channel count), so no statistic mixes runs;
- the classifier is one weight matrix per run (:class:`StackedLinear`);
- the loss is the sum of the runs' own losses, so each run's parameters get exactly the gradient
  of their own loss, and SGD (momentum, weight decay) acts elementwise;
- under ``covariance = "full"`` (the authors' C × C product) each run gets its own product
  (``ZCAWhitening.runs``), as its separate layer computes it.

Every stacked parameter holds the runs' blocks one after another along its first dimension, so
``p.reshape(R, -1)[r]`` is run r's parameter, flattened (a copy in channels_last: :func:`run_block`
gives a view to write to, :func:`run_norms` each run's norm). The ZCA layer's eigendecomposition is batched over all runs' groups, so one run's
non-finite weights make it raise for every run: the training loop (:mod:`stabkit.train.stacked_loop`)
then runs that step again run by run and stacks the other runs again without the failed one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .zca import ZCAWhitening

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


class StackedLinear(nn.Module):
    """R linear maps: input (B, R·in) → logits (B, R, out), run r's features through run r's weights."""

    def __init__(self, weights: torch.Tensor, biases: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weights)  # (R, out, in)
        self.bias = nn.Parameter(biases)     # (R, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        runs, _, features = self.weight.shape
        x = x.reshape(x.shape[0], runs, features).transpose(0, 1)  # (R, B, in)
        # bias inside the batched GEMM, as nn.Linear's addmm: under autocast the logits are then in
        # the autocast dtype like a separate run's (einsum + bias came out float32)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2)).transpose(0, 1)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    if c.groups != 1:
        raise ValueError("only ungrouped convolutions can be stacked")
    out = nn.Conv2d(len(convs) * c.in_channels, len(convs) * c.out_channels, c.kernel_size, c.stride, c.padding,
                    bias=c.bias is not None, groups=len(convs)).to(c.weight.device, c.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _stack_batchnorm(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    out = nn.BatchNorm2d(len(bns) * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats)
    out = out.to(b.running_mean.device, b.running_mean.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        out.num_batches_tracked.copy_(b.num_batches_tracked)
    return out


def _stack_zca(layers: list[ZCAWhitening]) -> ZCAWhitening:
    z = layers[0]
    out = ZCAWhitening(len(layers) * z.num_features, d=z.d, momentum=z.momentum, dtype=_DTYPE_NAMES[z.compute_dtype],
                       affine=z.weight is not None, config=z.config).to(z.running_mean.device, z.running_mean.dtype)
    out.forward_calls = z.forward_calls
    out.runs = len(layers) * z.runs  # each run's own covariance product under covariance = "full"
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_whitening"):
            if getattr(z, name) is not None:
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in layers]))
    return out


_LEAVES = (nn.Conv2d, nn.BatchNorm2d, ZCAWhitening, nn.Linear)


def _stack_leaf(modules: list[nn.Module]) -> nn.Module:
    first = modules[0]
    if isinstance(first, nn.Conv2d):
        return _stack_conv(modules)
    if isinstance(first, nn.BatchNorm2d):
        return _stack_batchnorm(modules)
    if isinstance(first, ZCAWhitening):
        return _stack_zca(modules)
    if isinstance(first, nn.Linear):
        return StackedLinear(torch.stack([m.weight.detach() for m in modules]).clone(),
                             torch.stack([m.bias.detach() for m in modules]).clone())
    raise TypeError(f"cannot stack a {type(first).__name__}")


def stack(models: list[nn.Module]) -> nn.Module:
    """One network computing ``models`` (same architecture, own weights) side by side: its input is
    the runs' batches concatenated along the channels (:func:`stacked_input`), its output (B, R, classes)."""
    if not models:
        raise ValueError("nothing to stack")
    out = copy.deepcopy(models[0])

    def replace_in(parent: nn.Module, group: list[nn.Module]) -> None:
        if any(True for _ in parent.parameters(recurse=False)) or any(True for _ in parent.buffers(recurse=False)):
            raise TypeError(f"cannot stack a {type(parent).__name__}: it holds parameters of its own")
        for name, child in list(parent.named_children()):
            kids = [getattr(m, name) for m in group]
            if isinstance(child, _LEAVES):
                setattr(parent, name, _stack_leaf(kids))
            else:
                replace_in(child, kids)

    replace_in(out, models)
    return out


def stacked_input(batches: list[torch.Tensor]) -> torch.Tensor:
    """The runs' image batches (each B, C, H, W) as one (B, R·C, H, W) input."""
    return torch.cat(batches, dim=1)


def run_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy (R,) from logits (B, R, classes) and targets (B, R)."""
    return nn.functional.cross_entropy(logits.permute(0, 2, 1), targets, reduction="none").mean(0)


def run_norms(tensor: torch.Tensor, runs: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Each run's 2-norm of its block of a stacked tensor, (R,): one reduction, no copy in any layout;
    ``dtype``: the dtype it sums in and returns (float64 for gradients: see ``loop._Run._train_step``)."""
    blocks = tensor.unflatten(0, (runs, -1))
    return torch.linalg.vector_norm(blocks, dim=tuple(range(1, blocks.dim())), dtype=dtype)


def run_block(tensor: torch.Tensor, runs: int, run: int) -> torch.Tensor:
    """Run ``run``'s block of a stacked tensor, as a view in any memory layout (to write to)."""
    return tensor.unflatten(0, (runs, -1))[run]
