"""Time per training step of ResNet-18 with the ZCA layer (each method × d) vs the BatchNorm baseline,
and the overhead of ``stabkit.monitor.watch``, all in one process; prints a Markdown table.

    python benchmarks/bench_train_step.py                  # CPU defaults: width 0.5, batch 16, d ≤ 32
    python benchmarks/bench_train_step.py --device cuda    # GPU defaults: full ResNet-18, batch 128, d ≤ 64
    python benchmarks/bench_train_step.py --device cuda --concurrency 1 2 4 8   # + throughput of K processes

``--concurrency``: K processes (spawned, each with its own model and CUDA context, as the study's
``--jobs K`` workers) train at once for ``--seconds`` after a common barrier; the table gives the
summed steps per second and its ratio to one process, for the BatchNorm baseline and for
``--concurrency-config`` (default ``pi-forward:64``, the most launch-bound configuration).

One step = forward + cross-entropy + backward + SGD step on a fixed random batch (train mode);
median over ``--repeats`` timed steps after ``--warmup`` untimed ones; CUDA is synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from stabkit import monitor  # noqa: E402
from stabkit.train.loop import pick_device  # noqa: E402
from stabkit.train.resnet import ResNet18  # noqa: E402

METHODS = ["analytic", "pi-forward", "pi", "taylor", "clip"]


class Stepper:
    """One model + optimizer; ``step()`` times one training step (optionally inside monitor.watch)."""

    def __init__(self, model, x, y, device, watch=False):
        self.model, self.x, self.y, self.device, self.watch = model, x, y, device, watch
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.times = []

    def step(self, record=True):
        ctx = monitor.watch() if self.watch else contextlib.nullcontext()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx:
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
        if record:
            self.times.append(time.perf_counter() - t0)

    @property
    def ms(self):
        return statistics.median(self.times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--width", type=float)
    ap.add_argument("--dims", type=int, nargs="+")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 avoids oversubscription on a busy CPU)")
    ap.add_argument("--concurrency", type=int, nargs="+", help="also measure the throughput of K concurrent processes")
    ap.add_argument("--concurrency-config", default="pi-forward:64", help="METHOD:D of the ZCA run in the concurrency table")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency trial")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    batch = args.batch or (128 if gpu else 16)
    width = args.width or (1.0 if gpu else 0.5)
    channels = int(round(64 * width))
    dims = args.dims or [d for d in (4, 8, 16, 32, 64) if d <= channels and channels % d == 0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def build(**kw):
        torch.manual_seed(0)
        return ResNet18(width=width, dtype=args.dtype, **kw).to(device)

    configs = [("BatchNorm baseline", "—", Stepper(build(norm="bn"), x, y, device))]
    for method in args.methods:
        for d in dims:
            configs.append((f"ZCA {method}", str(d), Stepper(build(norm="zca", d=d, method=method), x, y, device)))
    d_mon = 16 if 16 in dims else dims[-1]
    configs.append(("ZCA taylor, no monitor (again)", str(d_mon), Stepper(build(norm="zca", d=d_mon, method="taylor"), x, y, device)))
    configs.append(("ZCA taylor, inside monitor.watch", str(d_mon), Stepper(build(norm="zca", d=d_mon, method="taylor"), x, y, device, watch=True)))
    # interleaved rounds: every configuration is timed once per round, so machine-load drift hits all alike
    for r in range(args.warmup + args.repeats):
        for _, _, stepper in configs:
            stepper.step(record=r >= args.warmup)
    bn_ms = configs[0][2].ms
    rows = [(label, d, st.ms, st.ms / bn_ms) for label, d, st in configs]
    plain, watched = configs[-2][2].ms, configs[-1][2].ms
    name = torch.cuda.get_device_name() if gpu else (platform.processor() or platform.machine())
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}; ResNet-18 width {width:g} "
          f"({channels} ch at conv1), batch {batch}, ZCA dtype {args.dtype}; median of {args.repeats} interleaved steps after {args.warmup} warm-up rounds")
    print()
    print("| configuration | d | ms / step | × BatchNorm |")
    print("|---|---|---|---|")
    for label, d, ms, ratio in rows:
        print(f"| {label} | {d} | {ms:.1f} | {ratio:.2f} |")
    print()
    print(f"monitor overhead (taylor, d={d_mon}): {100 * (watched / plain - 1):+.1f} % per step")
    if args.concurrency:
        method, _, d = args.concurrency_config.partition(":")
        print()
        print(f"| processes | configuration | steps / s (all processes) | × one process |")
        print("|---|---|---|---|")
        for label, kw in (("BatchNorm baseline", {"norm": "bn"}), (f"ZCA {method} d={d}", {"norm": "zca", "method": method, "d": int(d)})):
            single = None
            for k in args.concurrency:
                rate = concurrent_rate(k, dict(kw, width=width, dtype=args.dtype), device, batch, args.seconds)
                single = single or rate
                print(f"| {k} | {label} | {rate:.1f} | {rate / single:.2f} |")


def concurrent_rate(processes: int, model_kw: dict, device: str, batch: int, seconds: float) -> float:
    """Summed training steps per second of ``processes`` spawned workers running together."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_rate_worker, args=(model_kw, device, batch, seconds, barrier, results)) for _ in range(processes)]
    for w in workers:
        w.start()
    counts = [results.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(counts) / seconds


def _rate_worker(model_kw, device, batch, seconds, barrier, results):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stepper = Stepper(ResNet18(**model_kw).to(device), torch.randn(batch, 3, 32, 32).to(device),
                      torch.randint(0, 10, (batch,)).to(device), device)
    for _ in range(3):
        stepper.step(record=False)
    barrier.wait()
    end, steps = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        stepper.step(record=False)
        steps += 1
    results.put(steps)


if __name__ == "__main__":
    main()
