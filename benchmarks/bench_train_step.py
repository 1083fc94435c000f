"""Time per training step of ResNet-18 with the ZCA layer (each method × d) vs the BatchNorm baseline,
and the overhead of ``stabkit.monitor.watch``, all in one process; prints a Markdown table.

    python benchmarks/bench_train_step.py                  # CPU defaults: width 0.5, batch 16, d ≤ 32
    python benchmarks/bench_train_step.py --device cuda    # GPU defaults: full ResNet-18, batch 128, d ≤ 64
    python benchmarks/bench_train_step.py --device cuda --concurrency 1 2 4 8   # + throughput of K processes

``--concurrency``: K processes (spawned, each with its own model and CUDA context, as the study's
``--jobs K`` workers) train at once for ``--seconds`` after a common barrier; the table gives the
summed steps per second and its ratio to one process, for the BatchNorm baseline and for
``--concurrency-config`` (default ``pi-forward:64``, the most launch-bound configuration).

``--fast-path``: today's training loop and the fast one (``fast=True``: bf16 autocast trunk, ZCA layer
in its own dtype, channels_last, device-side checks read back every 100 steps), side by side in one
run: the real loop (``stabkit.train.loop``: device augmentation, checks, monitor) on device-resident
random CIFAR-shaped data, ``--fast-config`` (default the survival study's ``paper`` preset, SVD =
``analytic`` d = 16, float32); rows for one process, ``--concurrency`` K processes of either path,
``--interleave`` K runs interleaved step by step in one process (fast path), ``--stacked R`` R runs
stacked side by side in one network (fast path, the stacked training loop ``stabkit.train.stacked_loop``:
grouped convolutions, one kernel and one eigendecomposition call for all R runs, each run's own data,
checks and monitor records), and ``--compile MODE``
(fast path + torch.compile of the trunk; compile time excluded, reported apart). Each row: summed
steps/s over all runs and its ratio to today's path in one process. ``--skip-methods`` skips the
per-method table; ``--json PATH`` writes the rows (the GPU session script sizes its runs from it).

    python benchmarks/bench_train_step.py --device cuda --skip-methods --fast-path --concurrency 1 6 --interleave 6 --compile reduce-overhead --json bench.json

One step = forward + cross-entropy + backward + SGD step on a fixed random batch (train mode);
median over ``--repeats`` timed steps after ``--warmup`` untimed ones; CUDA is synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from stabkit import monitor  # noqa: E402
from stabkit.train import loop  # noqa: E402
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
    ap.add_argument("--fast-path", action="store_true", help="also time today's loop against the fast path, side by side")
    ap.add_argument("--fast-config", default="paper:analytic:16", help="PRESET:METHOD:D of the fast-path table")
    ap.add_argument("--interleave", type=int, nargs="+", default=[], help="fast path: K runs interleaved in one process")
    ap.add_argument("--stacked", type=int, nargs="+", default=[], help="fast path: R runs stacked in one network")
    ap.add_argument("--compile", default=None, help="fast path + torch.compile(trunk, mode=MODE): default or reduce-overhead")
    ap.add_argument("--skip-methods", action="store_true", help="skip the per-method table")
    ap.add_argument("--json", default=None, help="write the fast-path rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    batch = args.batch or (128 if gpu else 16)
    width = args.width or (1.0 if gpu else 0.5)
    channels = int(round(64 * width))
    dims = args.dims or [d for d in (4, 8, 16, 32, 64) if d <= channels and channels % d == 0]
    failed = args.fast_path and fast_path_table(args, device, batch, width)
    if args.skip_methods:
        return int(failed)
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
        print("| processes | configuration | steps / s (all processes) | × one process |")
        print("|---|---|---|---|")
        for label, kw in (("BatchNorm baseline", {"norm": "bn"}), (f"ZCA {method} d={d}", {"norm": "zca", "method": method, "d": int(d)})):
            single = None
            for k in sorted({1, *args.concurrency}):  # one process first, always: the column's baseline, this run
                rate = concurrent_rate(k, dict(kw, width=width, dtype=args.dtype), device, batch, args.seconds)
                single = single or rate
                print(f"| {k} | {label} | {rate:.1f} | {rate / single:.2f} |")
    return int(failed)


def today_rate(rows: list[dict]) -> float | None:
    """steps/s of today's path, one run in one process, in these rows (the "× today" baseline), or None
    where that row failed: the first row is then another path, no baseline."""
    return next((r["steps_per_s"] for r in rows if (r["path"], r["runs"], r["processes"]) == ("today", 1, 1)), None)


def fast_path_table(args, device: str, batch: int, width: float) -> bool:
    """Prints the fast-path table (and writes --json after each row); True if a row failed."""
    preset, method, d = args.fast_config.split(":")
    base = {"preset": preset, "method": method, "d": int(d), "dtype": args.dtype, "width": width, "batch_size": batch,
            "device": device, "eval_every": 0, "epochs": 10_000, "max_steps": 10**6}
    plain, fast = dict(base), dict(base, fast=True)
    trials = [("today", 1, 1, plain), ("fast", 1, 1, fast)]
    for k in args.concurrency or []:
        if k > 1:
            trials += [("today", k, k, plain), ("fast", k, k, fast)]
    for k in args.interleave:
        trials.append(("fast, interleaved", k, 1, fast))
    for k in args.stacked:
        trials.append(("fast, stacked", k, 1, fast))
    if args.compile:  # last: its compilation may take most of a time-boxed bench
        trials.append((f"fast + compile {args.compile}", 1, 1, dict(fast, compile=args.compile)))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    rows, failed = [], []
    try:
        for label, runs, procs, cfg in trials:
            try:
                if label == "fast, stacked":
                    rate, warm_s = stacked_rate(cfg, runs, args.seconds)
                elif procs == 1:
                    rate, warm_s = loop_rate(cfg, runs, args.seconds)
                else:
                    rate, warm_s = concurrent_loop_rate(procs, cfg, args.seconds)
            except Exception as exc:  # e.g. a compile mode this GPU's toolchain lacks: the other rows still count
                failed.append(f"{label}, {runs} run(s) in {procs} process(es): {type(exc).__name__}: {exc}")
                print(f"  FAILED {failed[-1]}", file=sys.stderr, flush=True)
                continue
            rows.append({"path": label, "runs": runs, "processes": procs, "steps_per_s": rate, "warmup_s": warm_s,
                         "config": {k: v for k, v in cfg.items() if k not in ("epochs", "max_steps")}})
            print(f"  {label}, {runs} run(s) in {procs} process(es): {rate:.1f} steps/s", file=sys.stderr, flush=True)
            if args.json:  # after every row: a bench cut by its time box still leaves what it measured
                Path(args.json).write_text(json.dumps({"device": device, "gpu": name, "torch": torch.__version__, "rows": rows}, indent=1))
    except KeyboardInterrupt:
        print(f"  interrupted: {len(rows)} of {len(trials)} rows measured", file=sys.stderr)
    if not rows:
        return bool(failed)
    today = today_rate(rows)
    print(f"training loop, {args.fast_config} ({args.dtype} ZCA), width {width:g}, batch {batch}, on {device} ({name}), "
          f"torch {torch.__version__}; {args.seconds:g} s per row after warm-up; today = fast=False, check_every 10")
    print()
    print("| path | runs | processes | steps / s (all runs) | × today, 1 process | warm-up s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['steps_per_s'] / today:.2f}" if today else "—"
        print(f"| {r['path']} | {r['runs']} | {r['processes']} | {r['steps_per_s']:.1f} | {ratio} | {r['warmup_s']:.1f} |")
    print()
    if not today:
        print("no ratios: today's one-process row was not measured in this run")
    for f in failed:
        print(f"failed row: {f}")
    return bool(failed)


def _bench_data(device: str, n: int = 2560):
    g = torch.Generator().manual_seed(0)
    split = lambda m: (torch.randint(0, 256, (m, 3, 32, 32), generator=g, dtype=torch.uint8).to(device),  # noqa: E731
                       torch.randint(0, 10, (m,), generator=g).to(device))
    return {"train": split(n), "test": split(256)}


def interleaved_steps(cfg: dict, runs: int, data, mon):
    """A function that trains one step of each of ``runs`` runs of ``cfg`` in turn, each logging into
    its own records through ``mon`` (the process's ``monitor.watch``); a run that stops (e.g. at a NaN
    loss on random data) is replaced by one with a fresh seed."""
    seeds = iter(range(10**6))
    active = [loop._Run(dict(cfg, seed=next(seeds)), data) for _ in range(runs)]

    def one_round():
        for i, run in enumerate(active):
            if not run.active:
                active[i] = run = loop._Run(dict(cfg, seed=next(seeds)), data)
            loop._activate(mon, run.mon)
            run.step()
            if len(run.mon._rows) > 256:
                del run.mon._rows[:-1]  # keep the bench's memory flat
    return one_round


def loop_rate(cfg: dict, runs: int, seconds: float, barrier=None) -> tuple[float, float]:
    """Summed steps/s of ``runs`` training loops interleaved in this process (:func:`interleaved_steps`),
    and the warm-up seconds (first steps, compilation)."""
    with monitor.watch() as mon:
        return _timed(interleaved_steps(cfg, runs, _bench_data(cfg["device"]), mon), runs, seconds, cfg["device"], barrier)


def _timed(one_round, runs: int, seconds: float, device: str, barrier=None) -> tuple[float, float]:
    """Steps/s of ``one_round`` (``runs`` steps each) over ``seconds`` after 5 warm-up rounds, and the warm-up seconds."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(5):
        one_round()
    sync()
    warm_s = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        one_round()
        done += runs
    sync()
    return done / (time.perf_counter() - t0), warm_s


def stacked_steps(cfg: dict, runs: int, data):
    """A function that trains one step of ``runs`` runs of ``cfg`` stacked into one network: the
    training loop's own stacked step (:mod:`stabkit.train.stacked_loop`: the runs' own batches,
    losses, gradient norms, checks and monitor records). When runs stop (e.g. at a NaN loss on random
    data), the stack is rebuilt with fresh seeds."""
    from stabkit.train import stacked_loop

    seeds, state = iter(range(10**6)), {}

    def build():
        state["group"] = stacked_loop._Stack([loop._Run(dict(cfg, seed=next(seeds)), data) for _ in range(runs)])

    def one_step():
        group = state["group"]
        if len(group.runs) < runs:
            build()
            group = state["group"]
        group.step()
        for run in group.runs:
            if len(run.mon._rows) > 256:
                del run.mon._rows[:-1]  # keep the bench's memory flat

    build()
    return one_step


def stacked_rate(cfg: dict, runs: int, seconds: float) -> tuple[float, float]:
    """Summed steps/s of ``runs`` runs stacked in one network (:func:`stacked_steps`) and the warm-up seconds."""
    return _timed(stacked_steps(cfg, runs, _bench_data(cfg["device"])), runs, seconds, cfg["device"])


def concurrent_loop_rate(processes: int, cfg: dict, seconds: float) -> tuple[float, float]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_loop_worker, args=(cfg, seconds, barrier, results)) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        # every worker answers once (a rate or its error); a worker that died without answering is waited for no longer than this
        out = [results.get(timeout=seconds + 600) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    errors = [o for o in out if isinstance(o, str)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {processes} workers failed; first: {errors[0]}")
    return sum(r for r, _ in out), max(w for _, w in out)


def _loop_worker(cfg, seconds, barrier, results):
    torch.set_num_threads(1)
    try:
        results.put(loop_rate(cfg, 1, seconds, barrier))
    except Exception as exc:
        barrier.abort()  # the others stop waiting for this one (BrokenBarrierError) and answer too
        results.put(f"{type(exc).__name__}: {exc}")


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
    sys.exit(main())
