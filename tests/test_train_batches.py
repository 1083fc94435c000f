"""stabkit.train.batches: normalisation in torch's default dtype, whatever dtype an earlier call used."""

import torch

from stabkit import data as cifar
from stabkit.train.batches import normalize


def test_normalize_follows_the_default_dtype_after_a_call_in_another():
    x = torch.arange(0, 256, 2, dtype=torch.uint8)[:96].reshape(2, 3, 4, 4)
    mean = torch.tensor(cifar.MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD, dtype=torch.float64).view(1, 3, 1, 1)
    want = (x.double() / 255 - mean) / std  # an independent float64 computation
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        y64 = normalize(x)
    finally:
        torch.set_default_dtype(before)
    y32 = normalize(x)  # the cached constants must not carry float64 into a float32 run
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    assert torch.allclose(y64, want, rtol=1e-15, atol=1e-15)
    assert torch.allclose(y32.double(), want, rtol=1e-6, atol=1e-6)
