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


def check_bench_args(dims, batch, dtype, device, repeats, names=None) -> None:
    """ValueError (one line) for arguments ``bench_methods`` cannot run: sizes < 2 or so large that
    the batch would not fit in memory, batch < 1, repeats < 1, a dtype other than float32/float64,
    a device torch does not know or cannot see, an unknown method."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"unsupported dtype {dtype!r}: use float32 or float64")
    if not dims or min(dims) < 2:
        raise ValueError(f"matrix sizes must be at least 2, got {list(dims)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    # inputs (batch·d·2d float64) plus a few batch·d² work arrays per method
    need_gib = batch * max(dims) ** 2 * 8 * 8 / 2**30
    if need_gib > 16:
        raise ValueError(f"batch {batch} of {max(dims)}×{max(dims)} matrices needs ~{need_gib:.0f} GiB: use a smaller --d or --batch")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use cpu or cuda[:N] ({exc})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu or cuda[:N]")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for, but torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: torch sees only {torch.cuda.device_count()} CUDA device(s)")
    for name in names or ():
        methods.get(name)


def bench_methods(dims=(4, 16, 64), batch: int = 64, dtype: str = "float32", device: str = "cpu",
                  repeats: int = 5, names=None, seed: int = 0) -> pd.DataFrame:
    """One row per (d, method): backward seconds and the ratio to the ``torch`` method."""
    check_bench_args(dims, batch, dtype, device, repeats, names)
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
