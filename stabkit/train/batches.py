"""CIFAR-10 on the device for training: the uint8 images put there once per process
(``device_data``, cached), the augmentation as tensor ops (random crop with 4-pixel zero padding +
horizontal flip), the per-channel normalisation and the test-set evaluation."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as cifar


@functools.lru_cache(maxsize=2)
def device_data(path, device: str):
    """CIFAR-10 train/test as uint8 (N, 3, 32, 32) + int64 labels on ``device``, in a fixed
    seeded random order (so a ``limit_images`` prefix is a random subset). Cached per process."""
    out = {}
    for split in ("train", "test"):
        images, labels = cifar.load_cifar10(path, split)
        order = np.random.default_rng(0).permutation(len(images))
        out[split] = (torch.from_numpy(images[order]).permute(0, 3, 1, 2).contiguous().to(device),
                      torch.from_numpy(labels[order]).to(device))
    return out


def normalize(x_uint8: torch.Tensor, std=cifar.STD) -> torch.Tensor:
    dtype = torch.get_default_dtype()  # float32, unless a test sets float64
    mean, std = _channel_constants(tuple(cifar.MEAN), tuple(std), x_uint8.device, dtype)
    return (x_uint8.to(dtype) / 255 - mean) / std


@functools.lru_cache(maxsize=8)
def _channel_constants(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std as (1, 3, 1, 1) tensors of ``dtype`` on ``device``, made once: a
    host-to-device copy per step would synchronise the GPU every step (the fast path reads back only
    every N steps)."""
    return tuple(torch.tensor(v, dtype=dtype, device=device).view(1, 3, 1, 1) for v in (mean, std))


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip of a uint8 batch (B, C, H, W), on its device."""
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=x.device)
    flip = torch.rand(B, generator=gen, device=x.device) < 0.5
    cols = torch.arange(W, device=x.device)
    cols = torch.where(flip[:, None], W - 1 - cols, cols) + ox[:, None]  # (B, W): flip folded into the gather
    rows = torch.arange(H, device=x.device) + oy[:, None]  # (B, H)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def wrong_predictions(model, images, labels, batch: int = 1000, std=cifar.STD, channels_last: bool = False) -> torch.Tensor:
    """Number of misclassified images (a device scalar: no synchronisation), the model in eval mode."""
    model.eval()
    wrong = torch.zeros((), device=images.device)
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch], std)
        logits = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        wrong += (logits.argmax(1) != labels[i:i + batch]).sum()
    model.train()
    return wrong


def evaluate(model, images, labels, batch: int = 1000, std=cifar.STD) -> float:
    """Test error of ``model`` on ``images``."""
    return float(wrong_predictions(model, images, labels, batch, std)) / max(1, len(images))

