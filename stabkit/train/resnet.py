"""ResNet-18 for CIFAR-10 with a ZCA whitening layer after conv1 (Wang et al., TPAMI 2021, Table II).

conv1 3×3 stride 1 → 64 channels → ZCA whitening (replacing conv1's BatchNorm; every other norm
stays BatchNorm) → ReLU → BasicBlocks [2, 2, 2, 2] with 64/128/256/512 channels and strides
1/2/2/2 → 4×4 average pooling → linear 10. ``norm="bn"`` is the plain-BatchNorm baseline.
``width`` scales the channel counts (64·width for conv1): tests use a narrow network.
``zca`` (a :class:`stabkit.train.preset.ZCAConfig`, its backward a Spec) sets the ZCA layer's
conventions, overriding ``method`` (text or a Spec) / ``params`` / ``eps``; ``conv_init="kaiming-fan-out"`` initialises every conv
Kaiming-normal (fan_out, ReLU) as the authors' ``models/resnet.py`` (default: torch's own init).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import methods
from .zca import ZCAWhitening


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def stage_channels(width: float) -> list[int]:
    """Channels of the four stages (64, 128, 256, 512 at width 1), each at least 1."""
    return [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]


class ResNet18(nn.Module):
    def __init__(self, norm: str = "zca", d: int = 16, method=methods.DEFAULT, params: dict | None = None,
                 eps: float = 1e-4, dtype: str = "float32", num_classes: int = 10, width: float = 1.0,
                 blocks=(2, 2, 2, 2), zca=None, conv_init: str = "torch-default"):
        super().__init__()
        channels = stage_channels(width)
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        if norm == "zca":
            self.norm1 = ZCAWhitening(channels[0], d=d, method=method, params=params, eps=eps, dtype=dtype, config=zca)
        elif norm == "bn":
            self.norm1 = nn.BatchNorm2d(channels[0])
        else:
            raise ValueError(f"unknown norm {norm!r}: choose 'zca' or 'bn'")
        layers, cin = [], channels[0]
        for i, (cout, n) in enumerate(zip(channels, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, (1 if i == 0 else 2) if j == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)
        if conv_init == "kaiming-fan-out":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif conv_init != "torch-default":
            raise ValueError(f"unknown conv_init {conv_init!r}: choose torch-default or kaiming-fan-out")

    def forward(self, x):
        # the stem in full precision even under autocast (the fast path): the ZCA layer then whitens
        # the float32 network's conv1 output, not a bf16-rounded one, and hands the trunk float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.relu(self.norm1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1) if out.shape[-1] != 4 else F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))
