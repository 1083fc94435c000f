"""Where a training step's time goes, today's loop against the fast path: torch.profiler over steps
of the real loop (``stabkit.train.loop``, with the monitor, on device-resident random CIFAR-shaped
data, as ``bench_train_step.py --fast-path``), after warm-up steps. Prints Markdown:

* per path: host ms per step (wall clock, synchronised at both ends), GPU-busy ms per step (the
  kernels' and copies' durations summed; one stream, so they do not overlap), the busy fraction,
  kernels and host synchronisations (``cuda*Synchronize`` calls) per step;
* per path, the ``--top`` operators by self device time (self CPU time on a CPU).

``--stacked R`` (default 6; 0: none) adds the fast path with R runs stacked in one network
(``bench_train_step.stacked_steps``: the stacked training loop, ``stabkit.train.stacked_loop``): one of
its steps trains all R runs.

Why: in the first H200 window (benchmarks/results/2026-12-04-h200-27291dc) the steps/s summed over
3, 6 or 12 processes stayed at today's 46–48 and the fast path's 97–98, as if each step held the GPU
≈ 21 ms / ≈ 10 ms. This measures whether it does, and which kernels hold it, in one short device command.

    python benchmarks/profile_train_step.py --device cuda [--config paper:analytic:16] [--steps 30] [--out DIR]

``--out DIR`` also writes DIR/profile_train_step.md; ``--trace`` a Chrome trace per path there.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench_train_step import _bench_data, interleaved_steps, stacked_steps  # noqa: E402  (this folder is on sys.path when run as a script)
from stabkit import monitor  # noqa: E402
from stabkit.train.loop import pick_device  # noqa: E402


def profile_path(cfg: dict, steps: int, warmup: int, top: int = 15, trace: Path | None = None,
                 stacked: int = 0) -> tuple[dict, str]:
    """(summary per step, table of the ``top`` operators) of ``steps`` steps of one run of ``cfg``, or
    of ``stacked`` runs stacked in one network (a step then trains all of them)."""
    device = cfg["device"]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # a stacked step watches its runs itself (a SplitMonitor); one run needs the process's watch
    with (contextlib.nullcontext() if stacked else monitor.watch()) as mon:
        data = _bench_data(device)
        step = stacked_steps(cfg, stacked, data) if stacked else interleaved_steps(cfg, 1, data, mon)
        for _ in range(warmup):
            step()
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            wall_s = time.perf_counter() - t0
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    syncs = sum(1 for e in events if e.device_type == DeviceType.CPU and "Synchronize" in e.name)
    summary = {"host_ms": wall_s / steps * 1e3, "gpu_busy_ms": busy_us / steps / 1e3,
               "busy_frac": busy_us / 1e6 / wall_s if wall_s > 0 else float("nan"),
               "kernels": len(kernels) / steps, "syncs": syncs / steps}
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return summary, prof.key_averages().table(sort_by=sort, row_limit=top)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--config", default="paper:analytic:16", help="PRESET:METHOD:D (float32 ZCA)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="profiled steps per path")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None)
    ap.add_argument("--trace", action="store_true", help="also write a Chrome trace per path into --out")
    ap.add_argument("--stacked", type=int, default=6, help="also profile R runs stacked in one network (0: not)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    preset, method, d = args.config.split(":")
    base = {"preset": preset, "method": method, "d": int(d), "dtype": "float32", "width": args.width,
            "batch_size": args.batch, "device": device, "eval_every": 0, "epochs": 10_000, "max_steps": 10**6}
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    lines = [f"profile of {args.steps} steps after {args.warmup} warm-up steps, {args.config} (float32 ZCA), width "
             f"{args.width:g}, batch {args.batch}, on {device} ({name}), torch {torch.__version__}", "",
             "| path | runs per step | host ms / step | GPU-busy ms / step | busy fraction | kernels / step | host syncs / step |",
             "|---|---|---|---|---|---|---|"]
    tables = []
    paths = [("today", base, 0), ("fast", dict(base, fast=True), 0)]
    if args.stacked:
        paths.append((f"fast, stacked {args.stacked}", dict(base, fast=True), args.stacked))
    for label, cfg, stacked in paths:
        trace = out / f"trace_{label.replace(', ', '_').replace(' ', '')}.json" if out is not None and args.trace else None
        s, table = profile_path(cfg, args.steps, args.warmup, args.top, trace, stacked)
        lines.append(f"| {label} | {stacked or 1} | {s['host_ms']:.2f} | {s['gpu_busy_ms']:.2f} | {s['busy_frac']:.2f} | "
                     f"{s['kernels']:.0f} | {s['syncs']:.1f} |")
        tables.append(f"\n### {label}: top {args.top} operators\n\n```\n{table}\n```")
        print(f"  {label}: {s['host_ms']:.2f} ms/step", file=sys.stderr, flush=True)
    text = "\n".join(lines + tables) + "\n"
    print(text)
    if out is not None:
        (out / "profile_train_step.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
