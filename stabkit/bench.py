"""Speed of each method's batched torch backward, as a ratio to torch.linalg.eigh's own backward.

Timed in the same process and run, on the same inputs (forward excluded: every method but
``pi-forward`` shares the exact eigh forward), so the ratio is what a model pays for switching.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from . import methods
from .losses import make_loss
from .torch import eigh


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backward(name: str, A: torch.Tensor, loss, repeats: int) -> float:
    """Median seconds of one backward through ``eigh(A, method=name)`` and the loss."""
    times = []
    for _ in range(repeats + 1):
        leaf = A.detach().clone().requires_grad_(True)
        lam, U = eigh(leaf, method=name)
        value = loss.value(U, lam).sum()
        _sync(A.device)
        start = time.perf_counter()
        value.backward()
        _sync(A.device)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])  # first run warms caches / kernels
    return times[len(times) // 2]


def bench_methods(dims=(4, 16, 64), batch: int = 64, dtype: str = "float32", device: str = "cpu",
                  repeats: int = 5, names=None, seed: int = 0) -> pd.DataFrame:
    """One row per (d, method): backward seconds and the ratio to the ``torch`` method."""
    dev = torch.device(device)
    tdtype = getattr(torch, dtype)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for d in dims:
        X = torch.randn(batch, d, 2 * d, generator=gen, dtype=torch.float64)
        A = (X @ X.transpose(-1, -2) / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)).to(dev, tdtype)
        loss = make_loss("zca", d, seed=seed)
        baseline = time_backward("torch", A, loss, repeats)
        for name in names or methods.NAMES:
            seconds = baseline if name == "torch" else time_backward(name, A, loss, repeats)
            rows.append({"d": d, "batch": batch, "dtype": dtype, "device": str(dev), "method": name,
                         "backward_ms": 1e3 * seconds, "ratio_to_torch": seconds / baseline})
    return pd.DataFrame(rows)
