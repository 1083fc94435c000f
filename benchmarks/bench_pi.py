"""``pi`` (SVD-PI) fwd+bwd time against a plain SVD-PI written from the paper, same gradients.

    python benchmarks/bench_pi.py [--shapes 1024x4,256x16,64x64,8x256] [--repeats 5] [--threads 1]

The plain implementation (``plain_svd_pi`` below, from Wang et al., NeurIPS 2019, Alg. 1 and
Sec. 4): exact ``torch.linalg.eigh`` forward (no gradient) giving the start vectors and the kept
pairs (λ_k > ε and Σ_{i≤k} λ_i < (1 − ε) Σλ, largest first), then for every kept stage, largest
first, T = 19 power-iteration steps v ← M v / ‖M v‖ from the exact eigenvector, λ_k = vᵀ M v and the
deflation M ← M − M v vᵀ, all recorded by torch autograd (the matrix-vector product in the faster
row form vᵀMᵀ). ``pi`` is ``stabkit.torch.eigh_kept(A, "pi")``.

Input: a batch of covariances A = X Xᵀ/n + 1e-3·I (X Gaussian d × 2d, seeded). Loss: L = Σ over the
kept pairs of ⟨g_k, u_k⟩ + c_k λ_k with fixed random g, c — both implementations see the same
function. Per repeat, each implementation runs forward + backward on a fresh leaf (order
alternated); the table gives the median times and the median of the per-repeat ratios pi/plain
(< 1 = pi faster), torch.linalg.eigh + autograd for scale, and max relative gradient difference.
One process, ``--threads`` torch threads (default 1: the reproducible setting on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stabkit import torch as sktorch


def paper_kept(lam: torch.Tensor, eps: float) -> torch.Tensor:
    """(..., d) bool, ascending λ: from the largest down, keep while λ_k > ε and γ_k < 1 − ε."""
    desc = lam.flip(-1)
    gamma = desc.cumsum(-1) / lam.sum(-1, keepdim=True)
    ok = (desc > eps) & (gamma < 1 - eps)
    return (ok.to(torch.int64).cumprod(-1) > 0).flip(-1)


def plain_svd_pi(A: torch.Tensor, steps: int = 19, eps: float = 1e-4):
    """(λ, U, kept) with autograd through the power iterations of the kept stages (see module doc)."""
    with torch.no_grad():
        lam0, U0 = torch.linalg.eigh(A)
        kept = paper_kept(lam0, eps)
    d = A.shape[-1]
    n_stages = int(kept.sum(-1).max())
    M = A
    vs, ls = [], []
    for k in range(d - 1, d - 1 - n_stages, -1):
        v = U0[..., :, k]
        for _ in range(steps):
            w = (v[..., None, :] @ M.mT)[..., 0, :]
            v = w / w.norm(dim=-1, keepdim=True)
        Mv = (v[..., None, :] @ M.mT)[..., 0, :]
        vs.append(v)
        ls.append((v * Mv).sum(-1))
        M = M - Mv[..., :, None] * v[..., None, :]
    zeros_v = [torch.zeros_like(A[..., 0])] * (d - n_stages)
    zeros_l = [torch.zeros_like(lam0[..., 0])] * (d - n_stages)
    U = torch.stack(zeros_v + vs[::-1], -1)
    lam = torch.stack(zeros_l + ls[::-1], -1)
    return lam, U, kept


def objective(lam, U, kept, g, c):
    per_pair = (U * g).sum(-2) + lam * c
    return torch.where(kept, per_pair, torch.zeros_like(per_pair)).sum()


def make(batch: int, d: int, dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, d, 2 * d, generator=gen, dtype=torch.float64)
    A = X @ X.mT / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)
    g = torch.randn(batch, d, d, generator=gen, dtype=torch.float64)
    c = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    return A.to(dtype), g.to(dtype), c.to(dtype)


def run_once(kind: str, A, g, c):
    leaf = A.clone().requires_grad_(True)
    start = time.perf_counter()
    if kind == "plain":
        lam, U, kept = plain_svd_pi(leaf)
    elif kind == "pi":
        lam, U, kept = sktorch.eigh_kept(leaf, "pi")
    else:
        lam, U = torch.linalg.eigh(leaf)
        kept = paper_kept(lam.detach(), 1e-4)
    (grad,) = torch.autograd.grad(objective(lam, U, kept, g, c), leaf)
    return time.perf_counter() - start, grad


def bench(batch: int, d: int, dtype, repeats: int):
    A, g, c = make(batch, d, dtype)
    for kind in ("plain", "pi", "eigh"):
        run_once(kind, A, g, c)  # warm-up
    times = {"plain": [], "pi": [], "eigh": []}
    worst = 0.0
    for r in range(repeats):
        kinds = ("plain", "pi", "eigh") if r % 2 == 0 else ("pi", "plain", "eigh")
        grads = {}
        for kind in kinds:
            t, grads[kind] = run_once(kind, A, g, c)
            times[kind].append(t)
        gp, gq = grads["plain"].double(), grads["pi"].double()
        gp = (gp + gp.mT) / 2
        worst = max(worst, float(((gq - gp).flatten(-2).norm(dim=-1) / gp.flatten(-2).norm(dim=-1)).max()))
    ratio = statistics.median(p / q for p, q in zip(times["pi"], times["plain"]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return med, ratio, worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1024x4,256x16,64x64,8x256")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats, median ms of fwd+bwd\n")
    print("| batch × d | dtype | plain SVD-PI (ms) | pi (ms) | eigh+autograd (ms) | pi / plain (median of ratios) "
          "| max rel grad diff |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        batch, d = (int(x) for x in shape.lower().split("x"))
        for name in args.dtypes.split(","):
            med, ratio, worst = bench(batch, d, getattr(torch, name), args.repeats)
            print(f"| {batch} × {d} | {name} | {med['plain']:.2f} | {med['pi']:.2f} | {med['eigh']:.2f} | "
                  f"{ratio:.3f} | {worst:.2g} |", flush=True)


if __name__ == "__main__":
    main()
