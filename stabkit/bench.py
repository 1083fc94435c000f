"""Speed of each method's batched torch backward, as a ratio to torch.linalg.eigh's own backward.

Timed in the same process and run, on the same inputs (forward excluded: every method but
``pi-forward`` shares the exact eigh forward), so the ratio is what a model pays for switching.
The methods are interleaved: after one untimed warm-up call of every method, each repeat times
every method once (in a rotated order), and the ratio to ``torch`` is taken within that repeat,
so load from elsewhere that comes and goes hits all methods alike.  The table gives the median
backward time and the min / median / max over the repeats of the per-repeat ratio.
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from . import methods
from .losses import make_loss
from .torch import eigh


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backward_seconds(name: str, A: torch.Tensor, loss) -> float:
    """Seconds of one backward through ``eigh(A, method=name)`` and the loss (forward not timed)."""
    leaf = A.detach().clone().requires_grad_(True)
    lam, U = eigh(leaf, method=name)
    value = loss.value(U, lam).sum()
    _sync(A.device)
    start = time.perf_counter()
    value.backward()
    _sync(A.device)
    return time.perf_counter() - start


def time_interleaved(names: list[str], A: torch.Tensor, loss, repeats: int) -> dict[str, list[float]]:
    """Per method, ``repeats`` backward times taken round-robin (repeat r times every method once,
    starting at method r mod n); one untimed warm-up call of every method first."""
    for name in names:
        backward_seconds(name, A, loss)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(backward_seconds(name, A, loss))
    return times


def bench_methods(dims=(4, 16, 64), batch: int = 64, dtype: str = "float32", device: str = "cpu",
                  repeats: int = 5, names=None, seed: int = 0) -> pd.DataFrame:
    """One row per (d, method): median backward ms and the spread of the per-repeat ratio to ``torch``."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    dev = torch.device(device)
    tdtype = getattr(torch, dtype)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    order = ["torch"] + [n for n in (names or methods.NAMES) if n != "torch"]
    for d in dims:
        X = torch.randn(batch, d, 2 * d, generator=gen, dtype=torch.float64)
        A = (X @ X.transpose(-1, -2) / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)).to(dev, tdtype)
        loss = make_loss("zca", d, seed=seed)
        times = time_interleaved(order, A, loss, repeats)
        base = times["torch"]
        for name in names or methods.NAMES:
            ratios = [t / b for t, b in zip(times[name], base)]
            rows.append({"d": d, "batch": batch, "dtype": dtype, "device": str(dev), "method": name,
                         "backward_ms": 1e3 * statistics.median(times[name]),
                         "ratio_to_torch": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return pd.DataFrame(rows)
