"""First-call time of plain ``torch.compile`` (default backend) on a function using stabkit.torch.

    python benchmarks/compile_first_call.py [--method analytic] [--d 8] [--batch 16] [--fullgraph] [--threads 1]

Prints the first call (trace + compile + run, forward and backward) and the median of 20 later
calls, compiled and eager. Issue 15 saw 26.9 s for the first call; there is no target.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import stabkit.torch as sk


def loss(A, method):
    lam, U = sk.eigh(A, method=method, check=False)
    return (U[..., -1] ** 4).sum() + lam.log().sum()


def step(fn, A):
    leaf = A.clone().requires_grad_(True)
    fn(leaf).backward()
    return leaf.grad


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="analytic")
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fullgraph", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: no oversubscription)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X = torch.randn(args.batch, args.d, 2 * args.d, generator=torch.Generator().manual_seed(0))
    A = X @ X.mT / (2 * args.d) + 1e-3 * torch.eye(args.d)
    eager = lambda a: loss(a, args.method)  # noqa: E731
    compiled = torch.compile(eager, fullgraph=args.fullgraph)
    t0 = time.perf_counter()
    g_first = step(compiled, A)
    first_s = time.perf_counter() - t0
    later = []
    for _ in range(20):
        t0 = time.perf_counter()
        step(compiled, A)
        later.append(time.perf_counter() - t0)
    eager_s = []
    for _ in range(20):
        t0 = time.perf_counter()
        g_eager = step(eager, A)
        eager_s.append(time.perf_counter() - t0)
    rel_diff = ((g_first - g_eager).norm() / g_eager.norm()).item()
    print(f"torch {torch.__version__}, method={args.method}, d={args.d}, batch={args.batch}, fullgraph={args.fullgraph}")
    print(f"first compiled call {first_s:.2f} s; later compiled {statistics.median(later) * 1e3:.2f} ms; "
          f"eager {statistics.median(eager_s) * 1e3:.2f} ms; grad rel diff compiled/eager {rel_diff:.1e}")


if __name__ == "__main__":
    main()
