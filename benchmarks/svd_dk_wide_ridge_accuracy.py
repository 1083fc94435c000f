"""SVD-DK (``svd_dk``) for a wide F (n < d) with ε > 0: the gradient obtained on the differentiated
backward path (create_graph=True, torch.func.grad) and the second derivative (double backward,
torch.func forward-over-reverse), each against a 50-digit mpmath reference.

Reference: f(F) = ⟨G, C⟩ + ½⟨W, C⟩², C = g(FᵀF + εI). Its gradient is 2 F L(sym(G + ⟨W, C⟩ W)), L the
Fréchet derivative of g at FᵀF + εI by the Daleckii–Krein divided differences from mpmath's
eigendecomposition of FᵀF + εI (F read exactly from its float values); its Hessian-vector product
along V is the central difference of that exact gradient (h = 1e-20 at 50 digits).

Run: python benchmarks/svd_dk_wide_ridge_accuracy.py  (prints one line per case: max-norm relative
errors of the differentiated-path gradient, the plain gradient, and the Hessian-vector products)."""

from __future__ import annotations

import sys

import mpmath as mp
import torch

from stabkit.layers import matrix_functions as mf

DPS = 50
FUNCTIONS = [("log", None), ("sqrt", None), ("power", -0.5), ("power", 0.3), ("power", 2.0), ("power", 20.5)]


def _mp_g(fn, p):
    if fn == "log":
        return mp.log, lambda x: 1 / x
    if fn == "sqrt":
        return mp.sqrt, lambda x: 1 / (2 * mp.sqrt(x))
    pp = mp.mpf(p)
    return (lambda x: x ** pp), (lambda x: pp * x ** (pp - 1))


def mp_gradient(F, G, W, eps, fn, p):
    """∂f/∂F at 50 digits (f as in the module docstring); F, G, W mp matrices, eps an mpf."""
    g, dg = _mp_g(fn, p)
    n, d = F.rows, F.cols
    A = F.T * F + eps * mp.eye(d)
    lam, Q = mp.eigsy(A)
    C = Q * mp.diag([g(x) for x in lam]) * Q.T
    s = mp.fsum(W[i, j] * C[i, j] for i in range(d) for j in range(d))
    S = G + s * W
    S = (S + S.T) / 2
    St = Q.T * S * Q
    D = mp.matrix(d, d)
    for i in range(d):
        for j in range(d):
            a, b = lam[i], lam[j]
            close = abs(a - b) <= mp.mpf(10) ** (-DPS // 2) * max(abs(a), abs(b))
            D[i, j] = dg((a + b) / 2) if close else (g(a) - g(b)) / (a - b)
    L = Q * mp.matrix([[D[i, j] * St[i, j] for j in range(d)] for i in range(d)]) * Q.T
    return 2 * F * L


def _to_mp(X):
    return mp.matrix(X.double().tolist())


def _to_torch(X):
    return torch.tensor([[float(X[i, j]) for j in range(X.cols)] for i in range(X.rows)], dtype=torch.float64)


def references(F, G, W, V, eps, fn, p):
    """(gradient, Hessian-vector product along V) at 50 digits, as float64."""
    with mp.workdps(DPS):
        F0, G0, W0, V0 = (_to_mp(x) for x in (F, G, W, V))
        e = mp.mpf(eps)
        grad = mp_gradient(F0, G0, W0, e, fn, p)
        h = mp.mpf("1e-20")
        up = mp_gradient(F0 + h * V0, G0, W0, e, fn, p)
        down = mp_gradient(F0 - h * V0, G0, W0, e, fn, p)
        return _to_torch(grad), _to_torch((up - down) / (2 * h))


def loss_of(G, W, fn, eps, p):
    def loss(f):
        C = mf.svd_dk(f, fn, eps, p)[0]
        return (G * C).sum() + 0.5 * (W * C).sum() ** 2
    return loss


def measured(F, G, W, V, eps, fn, p):
    """The layer's gradients and Hessian-vector products (float64 results of F's dtype's computation)."""
    loss = loss_of(G.to(F.dtype), W.to(F.dtype), fn, eps, p)
    x = F.clone().requires_grad_()
    (plain,) = torch.autograd.grad(loss(x), x)
    x = F.clone().requires_grad_()
    (graph,) = torch.autograd.grad(loss(x), x, create_graph=True)
    (hvp,) = torch.autograd.grad((graph * V.to(F.dtype)).sum(), x)
    func = torch.func.grad(loss)(F)
    _, fwd_hvp = torch.func.jvp(torch.func.grad(loss), (F,), (V.to(F.dtype),))
    return {"plain": plain, "create_graph": graph.detach(), "func.grad": func, "hvp (double bwd)": hvp,
            "hvp (fwd-over-rev)": fwd_hvp}


def rel(x, ref):
    return float((x.double() - ref).abs().max() / ref.abs().max())


def _structured(sigma, d, seed):
    """A len(sigma) × d F with the given singular values (ties, a zero, a spread), rotated."""
    gen = torch.Generator().manual_seed(seed)
    n = len(sigma)
    U = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))[0]
    Q = torch.linalg.qr(torch.randn(d, n, dtype=torch.float64, generator=gen))[0]
    return U @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ Q.T


STRUCTURED = {"tie+tiny": [2.0, 2.0, 1e-3], "rank-deficient": [1.0, 0.5, 0.0], "spread": [30.0, 0.3, 1e-4]}


def cases():
    for dtype in (torch.float32, torch.float64):
        for name, sigma in STRUCTURED.items():
            gen = torch.Generator().manual_seed(7)
            d = 5
            F = _structured(sigma, d, 8)
            G = torch.randn(d, d, dtype=torch.float64, generator=gen)
            W = torch.randn(d, d, dtype=torch.float64, generator=gen) / d
            V = torch.randn(*F.shape, dtype=torch.float64, generator=gen)
            yield dtype, name, tuple(F.shape), F.to(dtype), G, W, V
        for k in (-6, 0, 5):
            for seed, shape in ((0, (3, 5)), (1, (2, 6))):
                gen = torch.Generator().manual_seed(seed)
                F = torch.randn(*shape, dtype=torch.float64, generator=gen) * 2.0 ** k
                d = shape[1]
                G = torch.randn(d, d, dtype=torch.float64, generator=gen)
                W = torch.randn(d, d, dtype=torch.float64, generator=gen) / d
                V = torch.randn(*shape, dtype=torch.float64, generator=gen)
                yield dtype, k, shape, F.to(dtype), G, W, V


def main(argv):
    epss = (1e-3, 1e-1)
    print(f"{'dtype':8} {'k or σ':>14} {'shape':7} {'eps':6} {'g':8} | grad: create_graph  func.grad  plain | "
          "hvp: double-bwd  fwd-over-rev")
    worst = {}
    for dtype, k, shape, F, G, W, V in cases():
        for eps in epss:
            for fn, p in FUNCTIONS:
                if dtype == torch.float32 and p == 20.5:
                    continue  # (σ² + ε)^20.5 and its derivatives leave float32's range for these σ, on every path
                ref_g, ref_h = references(F, G, W, V, eps, fn, p)
                got = measured(F, G, W, V, eps, fn, p)
                errs = {name: rel(v, ref_g if name in ("plain", "create_graph", "func.grad") else ref_h)
                        for name, v in got.items()}
                label = fn if p is None else f"x^{p:g}"
                print(f"{str(dtype)[6:]:8} {k:>14} {str(shape):7} {eps:<6g} {label:8} | "
                      f"{errs['create_graph']:.1e} {errs['func.grad']:.1e} {errs['plain']:.1e} | "
                      f"{errs['hvp (double bwd)']:.1e} {errs['hvp (fwd-over-rev)']:.1e}", flush=True)
                for name, e in errs.items():
                    key = (str(dtype)[6:], name)
                    worst[key] = max(worst.get(key, 0.0), e)
    print("worst per dtype and path:")
    for (dt, name), e in sorted(worst.items()):
        print(f"  {dt:8} {name:20} {e:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
