"""Per-step overhead of ``stabkit.monitor.watch`` on a tiny whitening step (one batched eigh per step).

    python benchmarks/monitor_overhead.py      # prints µs/step without and inside watch(), median of 5 blocks

One step: W @ X → covariance (16 × 8 × 8, float32) → torch.linalg.eigh → Σ^{-1/2}-like product →
backward → SGD step, one CPU thread. The monitor's cost is per call (a few reductions over λ, the
call site, two gradient hooks), so it is largest relative to a step this small.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from stabkit import monitor  # noqa: E402


def main(blocks=5, steps=300):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    X = torch.randn(16, 8, 32)
    W = torch.nn.Parameter(torch.eye(8))
    opt = torch.optim.SGD([W], lr=1e-4)

    def step():
        h = W @ X
        lam, U = torch.linalg.eigh(h @ h.transpose(1, 2) / 32 + 1e-3 * torch.eye(8))
        ((U * lam.rsqrt()[:, None]) @ U.transpose(1, 2)).sum().backward()
        opt.step()
        opt.zero_grad()

    def timed():
        for _ in range(20):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps * 1e6

    plain, watched = [], []
    for _ in range(blocks):
        plain.append(timed())
        with monitor.watch():
            watched.append(timed())
    p, w = statistics.median(plain), statistics.median(watched)
    print(f"plain {p:.0f} µs/step, watched {w:.0f} µs/step, overhead {w - p:.0f} µs/step ({100 * (w / p - 1):+.0f} %)")


if __name__ == "__main__":
    main()
