"""Speed of each method's batched torch backward, as a ratio to torch.linalg.eigh's own backward.

Timed in the same process and run, on the same inputs (forward excluded: every method but
``pi-forward`` shares the exact eigh forward), so the ratio is what a model pays for switching.
The methods are interleaved: after one untimed warm-up call of every method, each repeat times
every method once (in a rotated order), and the ratio to the native method (``Method.native``:
torch's own backward) is taken within that repeat,
so load from elsewhere that comes and goes hits all methods alike.  The table gives the median
backward time and the min / median / max over the repeats of the per-repeat ratio.
"""

from __future__ import annotations

import itertools
import statistics
import time

import pandas as pd
import torch

from . import methods
from .losses import make_loss
from .methods import Spec
from .torch import eigh
from .validation import check_dtype_name


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline() -> Spec:
    """The native method (torch.linalg.eigh's own backward): the denominator of every ratio."""
    return methods.spec(next(name for name in methods.NAMES if methods.get(name).native))


def backward_seconds(spec: Spec, A: torch.Tensor, loss) -> float:
    """Seconds of one backward through ``eigh(A, method=spec)`` and the loss (forward not timed)."""
    leaf = A.detach().clone().requires_grad_(True)
    lam, U = eigh(leaf, method=spec)
    value = loss.value(U, lam).sum()
    _sync(A.device)
    start = time.perf_counter()
    value.backward()
    _sync(A.device)
    return time.perf_counter() - start


def time_interleaved(specs: list[Spec], A: torch.Tensor, loss, repeats: int, tick=None) -> dict[Spec, list[float]]:
    """Per method, ``repeats`` backward times taken round-robin (repeat r times every method once,
    starting at method r mod n); one untimed warm-up call of every method first. ``tick()``, if
    given, is called after every backward call (warm-up or timed)."""
    tick = tick or (lambda: None)
    for spec in specs:
        backward_seconds(spec, A, loss)
        tick()
    times: dict[Spec, list[float]] = {spec: [] for spec in specs}
    for r in range(repeats):
        k = r % len(specs)
        for spec in specs[k:] + specs[:k]:
            times[spec].append(backward_seconds(spec, A, loss))
            tick()
    return times


def check_bench_args(dims, batch, dtype, device, repeats, names=None) -> None:
    """ValueError (one line) for arguments ``bench_methods`` cannot run: sizes < 2 or so large that
    the batch would not fit in memory, batch < 1, repeats < 1, a dtype other than float32/float64,
    a device torch does not know or cannot see, an unknown method or invalid method spec; and a size
    or a method given twice (its rows would repeat in the table)."""
    check_dtype_name(dtype)
    if not dims or min(dims) < 2:
        raise ValueError(f"matrix sizes must be at least 2, got {list(dims)}")
    twice = [d for i, d in enumerate(dims) if d in list(dims)[:i]]
    if twice:
        raise ValueError(f"matrix size {twice[0]} is given twice")
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
    given: dict = {}
    for name in names or ():
        spec = methods.spec(name)
        if spec in given:
            raise ValueError(f"method {spec} is given twice (as {given[spec]!r} and {name!r})")
        given[spec] = name


def bench_methods(dims=(4, 16, 64), batch: int = 64, dtype: str = "float32", device: str = "cpu",
                  repeats: int = 5, names=None, seed: int = 0, progress=None) -> pd.DataFrame:
    """One row per (d, method): median backward ms and the spread of the per-repeat ratio to the
    native method's. ``names``: methods (names, spec texts or Specs; default all), made Specs once here.
    ``progress(d, done, total)``, if given, is called after every backward call (``total`` over all sizes)."""
    check_bench_args(dims, batch, dtype, device, repeats, names)
    chosen = [methods.spec(name) for name in (names or methods.NAMES)]
    base_spec = baseline()
    dev = torch.device(device)
    tdtype = getattr(torch, dtype)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    order = [base_spec] + [spec for spec in chosen if spec != base_spec]
    total, calls = len(dims) * (repeats + 1) * len(order), itertools.count(1)
    for d in dims:
        X = torch.randn(batch, d, 2 * d, generator=gen, dtype=torch.float64)
        A = (X @ X.transpose(-1, -2) / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)).to(dev, tdtype)
        loss = make_loss("zca", d, seed=seed)
        tick = None if progress is None else (lambda d=d: progress(d, next(calls), total))
        times = time_interleaved(order, A, loss, repeats, tick)
        base = times[base_spec]
        for spec in chosen:
            ratios = [t / b for t, b in zip(times[spec], base)]
            rows.append({"d": d, "batch": batch, "dtype": dtype, "device": str(dev), "method": str(spec),
                         "backward_ms": 1e3 * statistics.median(times[spec]),
                         "ratio_to_torch": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return pd.DataFrame(rows)
