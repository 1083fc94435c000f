"""Time ``stabkit.reference.ground_truth`` (cache off) per matrix size and engine: seconds, digits, peak memory.

    python benchmarks/bench_reference.py --d 64 256 512 [--engines mpmath flint] [--loss zca]
        [--repeats 3] [--baseline 772c7a7]

Every (d, engine, repeat) runs in a fresh subprocess, so its peak resident memory
(``resource.getrusage(...).ru_maxrss``, imports included) is that computation's own; the runs are
interleaved (repeat by repeat, engine by engine) so that load from elsewhere hits all of them alike,
and the table gives the median seconds.  ``--baseline REV`` adds the engine "flint-baseline": the
whole ``stabkit`` package of git revision REV (exported once into a temporary folder, so an older
engine runs with the reference code it was written for), timed in the same run through the same
``ground_truth(..., engine="flint", cache=False)`` call, with the ratio baseline/flint per d; both
engines are imported before the clock starts.  The header line
gives the load average before and after the run and the BLAS thread setting (the flint engine's
products run on BLAS: ``OPENBLAS_NUM_THREADS`` changes its speed, and under heavy load one thread
can beat two).  Matrices are Q diag(λ) Qᵀ with a seeded orthogonal Q
and λ log-spaced in [1e-2, 1e2] (SPD, well separated).  The mpmath engine is only run up to
``--mpmath-max-d`` (default 64): it is O(d³) in pure Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _engine_module(root: Path) -> str:
    """The flint engine's module in the tree at ``root`` (it moved with issue #14's house plan)."""
    return "stabkit.reference._flint" if (root / "stabkit" / "reference" / "_flint.py").is_file() else "stabkit._flint_eig"


def export_revision(rev: str, into: Path) -> Path:
    """``stabkit/`` of git revision ``rev`` under ``into`` (git archive); ValueError if git cannot."""
    run = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "stabkit"], capture_output=True)
    if run.returncode != 0:
        raise ValueError(f"--baseline {rev}: {run.stderr.decode().strip() or 'git archive failed'}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=run.stdout, check=True)
    return into


def matrix(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.logspace(-2, 2, d)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def _child(d: int, engine: str, loss_name: str, seed: int, baseline: str | None) -> dict:
    """One timed ground truth in this (fresh) process."""
    import resource

    root = Path(baseline) if baseline else REPO
    sys.path.insert(0, str(root))
    if engine.startswith("flint"):
        importlib.import_module(_engine_module(root))  # imported before the clock, in both trees
    from stabkit.losses import make_loss
    from stabkit.reference import ground_truth

    A = matrix(d, seed)
    loss = make_loss(loss_name, d, seed=seed, k=max(1, d // 4))
    rss0_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, c = time.perf_counter(), time.process_time()
    tr = ground_truth(A, loss, engine="flint" if engine.startswith("flint") else engine, cache=False)
    sec, cpu = time.perf_counter() - t, time.process_time() - c
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": sec, "cpu_s": cpu, "digits": tr.digits, "peak_mb": peak_kb / 1024, "import_mb": rss0_kb / 1024}


def _run_child(d, engine, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(d), engine, "--loss", args.loss,
           "--seed", str(args.seed)]
    if engine == "flint-baseline":
        cmd += ["--baseline", str(args.baseline_root)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"d={d} {engine} failed:\n{run.stderr.strip()}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--engines", nargs="+", default=["mpmath", "flint"], choices=["mpmath", "flint"])
    ap.add_argument("--loss", default="zca")
    ap.add_argument("--mpmath-max-d", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per (d, engine); the median is reported")
    ap.add_argument("--baseline", help="a git revision whose flint engine is timed as 'flint-baseline' in the same run")
    ap.add_argument("--child", nargs=2, metavar=("D", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(int(args.child[0]), args.child[1], args.loss, args.seed, args.baseline)))
        return 0
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    engines = list(args.engines)
    if args.baseline:
        tmp = tempfile.TemporaryDirectory(prefix="stabkit-baseline-")
        try:
            args.baseline_root = export_revision(args.baseline, Path(tmp.name))
        except ValueError as exc:
            ap.error(str(exc))
        engines.append("flint-baseline")
    runs: dict[tuple[int, str], list[dict]] = {}
    load0 = os.getloadavg()
    for rep in range(args.repeats):
        for d in args.d:
            for eng in engines:
                if eng == "mpmath" and d > args.mpmath_max_d:
                    continue
                r = _run_child(d, eng, args)
                runs.setdefault((d, eng), []).append(r)
                print(f"[{rep + 1}/{args.repeats}] d={d} {eng}: {r['seconds']:.2f} s ({r['cpu_s']:.2f} s CPU), "
                      f"{r['digits']:.1f} digits, "
                      f"peak {r['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    threads = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    print(f"loss {args.loss}, seed {args.seed}, median of {args.repeats} run(s), each in its own process; "
          f"CPU = process CPU time (all threads); "
          f"peak = max resident set size incl. imports; {os.cpu_count()} CPUs, load average (1 min) "
          f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end; BLAS threads: "
          f"{threads or 'library default'}")
    ratio = bool(args.baseline)
    print("| d | engine | seconds | CPU s | digits | peak MB |" + (" baseline / flint (wall, CPU) |" if ratio else ""))
    print("|---:|---|---:|---:|---:|---:|" + ("---:|" if ratio else ""))
    for (d, eng), rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        dig = min(r["digits"] for r in rs)
        peak = max(r["peak_mb"] for r in rs)
        extra = ""
        if ratio and eng == "flint-baseline" and (d, "flint") in runs:
            new = runs[(d, "flint")]
            extra = (f" {sec / statistics.median(r['seconds'] for r in new):.2f}×, "
                     f"{cpu / statistics.median(r['cpu_s'] for r in new):.2f}× |")
        elif ratio:
            extra = " |"
        print(f"| {d} | {eng} | {sec:.3g} | {cpu:.3g} | {dig:.1f} | {peak:.0f} |" + extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
