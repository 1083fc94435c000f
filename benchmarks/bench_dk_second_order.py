"""Cost of the Daleckii–Krein layers' exact second derivative against torch.linalg.eigh's own.

    python benchmarks/bench_dk_second_order.py [--dims 16,64,256] [--batch 8] [--repeat 5] [--threads 1]

One Hessian-vector product of L(A) = ⟨W, log A⟩² (double backward): through ``eig_dk`` (the
second-order Daleckii–Krein formula, :mod:`stabkit.layers.divided_differences`) and through
``torch.linalg.eigh`` with log applied to λ (torch's own double backward, the baseline), on
two spectra per d:

* ``separated``: A = XᵀX/n + εI, X (2d × d) Gaussian — a Marchenko–Pastur spectrum, no ties;
* ``rank-deficient``: X (d/4 × d), so 3d/4 eigenvalues equal ε up to rounding — a covariance of
  fewer samples than channels, where eigh's derivative meets gaps of order 1e-16.

Times are the minimum of ``--repeat`` runs after a warm-up (forward + first backward + second
backward), float64, in rounds that run both layers once, so that load from elsewhere hits both alike. ``rel_diff`` is ‖hvp_dk − hvp_eigh‖/‖hvp_dk‖: small on a separated spectrum (both
exact), large or NaN where eigh's second derivative breaks down. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from stabkit.layers import matrix_functions as mf


def covariance(d: int, n: int, batch: int, eps: float = 1e-3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    return X.mT @ X / n + eps * torch.eye(d, dtype=torch.float64)


def log_dk(a):
    return mf.eig_dk(a, "log")[0]


def log_eigh(a):
    lam, U = torch.linalg.eigh(a)
    return (U * lam.log()[..., None, :]) @ U.mT


def hvp_once(layer, A, W, H):
    """(seconds, Hessian-vector product) of one run on a fresh leaf tensor."""
    a = A.clone().requires_grad_()
    t0 = time.perf_counter()
    (g,) = torch.autograd.grad(((W * layer(a)).sum((-1, -2)) ** 2).sum(), a, create_graph=True)
    (h,) = torch.autograd.grad((g * H).sum(), a)
    return time.perf_counter() - t0, h


def hvp_interleaved(layers, A, W, H, repeat):
    """[(best seconds, hvp)] per layer: one warm-up round, then ``repeat`` rounds of every layer once."""
    best, out = [float("inf")] * len(layers), [None] * len(layers)
    for r in range(repeat + 1):
        for i, layer in enumerate(layers):
            seconds, out[i] = hvp_once(layer, A, W, H)
            if r:  # round 0 is the warm-up
                best[i] = min(best[i], seconds)
    return list(zip(best, out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="16,64,256")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| d | spectrum | eig_dk ms | eigh ms | ratio | rel_diff |\n|---|---|---|---|---|---|")
    for d in (int(x) for x in args.dims.split(",")):
        g = torch.Generator().manual_seed(1)
        W = torch.randn(d, d, generator=g, dtype=torch.float64)
        H = torch.randn(args.batch, d, d, generator=g, dtype=torch.float64)
        W, H = W + W.T, H + H.mT
        for name, n in (("separated", 2 * d), ("rank-deficient", max(1, d // 4))):
            A = covariance(d, n, args.batch)
            (t_dk, h_dk), (t_eigh, h_eigh) = hvp_interleaved((log_dk, log_eigh), A, W, H, args.repeat)
            rel = ((h_dk - h_eigh).norm() / h_dk.norm()).item()
            print(f"| {d} | {name} | {1e3 * t_dk:.2f} | {1e3 * t_eigh:.2f} | {t_dk / t_eigh:.2f} | {rel:.1e} |")


if __name__ == "__main__":
    main()
