"""Forward and backward time of LESS and IED against eigh + backward for the principal eigenvector.

    python benchmarks/bench_layers.py [--sizes 16,32,...,1024] [--repeat 5] [--dtype float64]

Input: symmetric A = X Xᵀ/d + 6 u uᵀ (X Gaussian d×d, u a unit vector) — a Marchenko–Pastur bulk on
[0, 4] plus an outlier near 7, so the principal eigenvector is well separated (λ₂/λ₁ is printed per
row) — a covariance with a dominant direction. Loss L = (wᵀy)² + yᵀBy on the principal vector y.
``--threads`` (default 1) fixes torch's thread count: single-threaded timings are the reproducible
ones on a shared machine.
Timed, best (minimum) of ``--repeat`` runs after one warm-up, each with a fresh leaf tensor — the
minimum is the least noisy estimate on a shared machine —, in rounds that run every layer once, so
that load from elsewhere hits all of them alike:

* ``eigh``: ``stabkit.torch.eigh`` (full LAPACK eigendecomposition) + analytic backward (Prop. 2);
* ``ied``: IED with the power/subspace-iteration forward + one-Cholesky implicit backward;
* ``ied-eigh``: IED with the eigh forward + the implicit backward;
* ``less``: LESS (Riemannian descent with line search) + the implicit backward.

Prints a Markdown table (ms) with ratios to eigh (> 1 = slower than eigh).
"""

from __future__ import annotations

import argparse
import time

import torch

from stabkit import layers
from stabkit import torch as sktorch


def make_input(d: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, d, generator=g, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm()
    A = X @ X.T / d + 6.0 * torch.outer(u, u)
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return A.to(dtype), B.to(dtype), w.to(dtype)


def principal(name, a):
    if name == "eigh":
        _, U = sktorch.eigh(a, method="analytic")
        return U[..., -1]
    if name == "ied":
        return layers.ied(a, solver="power")[0][..., 0]
    if name == "ied-eigh":
        return layers.ied(a, solver="eigh")[0][..., 0]
    if name == "less":
        return layers.less(a)[0]
    raise ValueError(name)


def time_once(name, A, B, w):
    """(forward s, backward s, ∂L/∂A) of one run on a fresh leaf tensor."""
    a = A.clone().requires_grad_(True)
    t0 = time.perf_counter()
    y = principal(name, a)
    loss = (w @ y) ** 2 + y @ (B @ y)
    t1 = time.perf_counter()
    loss.backward()
    return t1 - t0, time.perf_counter() - t1, a.grad


def time_interleaved(names, A, B, w, repeat):
    """{name: (best forward ms, best backward ms, ∂L/∂A)}: one warm-up round, then ``repeat`` rounds,
    each running every layer once."""
    fwd, bwd, grad = ({n: [] for n in names} for _ in range(3))
    for r in range(repeat + 1):
        for n in names:
            f, b, grad[n] = time_once(n, A, B, w)
            if r:  # round 0 is the warm-up
                fwd[n].append(f)
                bwd[n].append(b)
    return {n: (min(fwd[n]) * 1e3, min(bwd[n]) * 1e3, grad[n]) for n in names}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32,64,128,256,512,1024")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    names = ("eigh", "ied", "ied-eigh", "less")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, best of {args.repeat}, ms\n")
    head = ["d", "λ₂/λ₁"] + [f"{n} fwd" for n in names] + [f"{n} bwd" for n in names] + \
        [f"{n}/eigh total" for n in names[1:]] + ["max rel. grad diff vs eigh"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for d in (int(s) for s in args.sizes.split(",")):
        A, B, w = make_input(d, dtype)
        res = time_interleaved(names, A, B, w, args.repeat)
        tot = {n: res[n][0] + res[n][1] for n in names}
        ref = res["eigh"][2]
        diff = max(float((res[n][2] - ref).norm() / ref.norm()) for n in names[1:])
        lam = torch.linalg.eigvalsh(A.double())
        row = [str(d), f"{float(lam[-2] / lam[-1]):.2f}"] + [f"{res[n][0]:.3g}" for n in names] + [f"{res[n][1]:.3g}" for n in names] + \
            [f"{tot[n] / tot['eigh']:.2f}" for n in names[1:]] + [f"{diff:.1e}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
