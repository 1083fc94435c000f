"""Time ``stabkit.reference.ground_truth`` (cache off) per matrix size and engine.

    python benchmarks/bench_reference.py --d 16 64 256 [--engines mpmath flint] [--loss zca]

Prints a Markdown table (d, engine, seconds, digits).  Matrices are Q diag(λ) Qᵀ with a seeded
orthogonal Q and λ log-spaced in [1e-2, 1e2] (SPD, well separated).  The mpmath engine is only run
up to ``--mpmath-max-d`` (default 64): it is O(d³) in pure Python.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stabkit.losses import make_loss  # noqa: E402
from stabkit.reference import ground_truth  # noqa: E402


def matrix(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.logspace(-2, 2, d)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--engines", nargs="+", default=["mpmath", "flint"], choices=["mpmath", "flint"])
    ap.add_argument("--loss", default="zca")
    ap.add_argument("--mpmath-max-d", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    for d in args.d:
        A = matrix(d, args.seed)
        loss = make_loss(args.loss, d, seed=args.seed, k=max(1, d // 4))
        for eng in args.engines:
            if eng == "mpmath" and d > args.mpmath_max_d:
                continue
            t = time.perf_counter()
            tr = ground_truth(A, loss, engine=eng, cache=False)
            sec = time.perf_counter() - t
            rows.append((d, eng, sec, tr.digits))
            print(f"d={d} {eng}: {sec:.2f} s, {tr.digits:.1f} digits", file=sys.stderr, flush=True)
    print(f"| d | engine | seconds | digits |  (loss {args.loss})")
    print("|---:|---|---:|---:|")
    for d, eng, sec, dig in rows:
        print(f"| {d} | {eng} | {sec:.2f} | {dig:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
