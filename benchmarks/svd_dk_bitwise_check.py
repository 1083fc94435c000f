"""Bitwise regression check of the SVD-DK layer on the inputs that a change to the wide-F-with-ε > 0
differentiated backward must not touch: square and tall F (any ε), wide F with ε = 0, and for every
shape the forward value, the plain (non-differentiated) backward and the forward-mode tangent; for the
untouched shapes also double backward and torch.func.hessian.

    python benchmarks/svd_dk_bitwise_check.py --save before.pt     # on the old code
    python benchmarks/svd_dk_bitwise_check.py --compare before.pt  # on the new code: torch.equal each
"""

from __future__ import annotations

import argparse

import torch

from stabkit.layers import matrix_functions as mf

FUNCTIONS = [("log", None), ("sqrt", None), ("power", -0.5), ("power", 0.3), ("power", 2.0), ("power", 1.5)]


def _inputs():
    for dtype in (torch.float32, torch.float64):
        for seed, shape in enumerate([(5, 3), (4, 4), (3, 5), (2, 6), (6, 4)]):
            for k in (0, 6):
                gen = torch.Generator().manual_seed(100 + seed)
                F = (torch.randn(*shape, dtype=torch.float64, generator=gen) * 2.0 ** k).to(dtype)
                d = shape[1]
                G = torch.randn(d, d, dtype=torch.float64, generator=gen).to(dtype)
                V = torch.randn(*shape, dtype=torch.float64, generator=gen).to(dtype)
                yield f"{str(dtype)[6:]}-{shape}-k{k}", F, G, V


def results():
    out = {}
    for name, F, G, V in _inputs():
        wide = F.shape[-2] < F.shape[-1]
        for eps in (0.0, 1e-3, 0.1):
            for fn, p in FUNCTIONS:
                if eps == 0 and wide and (fn == "log" or (fn == "power" and p < 0)):
                    continue  # refused (infinite)
                key = f"{name}-eps{eps}-{fn}{'' if p is None else p}"
                loss = lambda f: (G * mf.svd_dk_matrix_function(f, fn, eps, p)).sum() ** 2  # noqa: E731
                x = F.clone().requires_grad_()
                C = mf.svd_dk_matrix_function(x, fn, eps, p)
                out[key + "/value"] = C.detach()
                out[key + "/grad"] = torch.autograd.grad(loss(x), x)[0]
                out[key + "/tangent"] = torch.func.jvp(lambda f: mf.svd_dk_matrix_function(f, fn, eps, p), (F,), (V,))[1]
                if wide and eps > 0:
                    continue  # the differentiated path of this case is the one that changes
                x = F.clone().requires_grad_()
                (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
                out[key + "/create_graph-grad"] = g.detach()
                out[key + "/hvp"] = torch.autograd.grad((g * V).sum(), x)[0]
                out[key + "/func-grad"] = torch.func.grad(loss)(F)
                out[key + "/vmap-grad"] = torch.func.vmap(torch.func.grad(loss))(torch.stack([F, F.flip(-1)]))
                if F.dtype == torch.float64 and "k0" in name:
                    out[key + "/hessian"] = torch.func.hessian(loss)(F)
    return out


def main():
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save")
    group.add_argument("--compare")
    args = parser.parse_args()
    got = results()
    if args.save:
        torch.save(got, args.save)
        print(f"saved {len(got)} results to {args.save}")
        return
    before = torch.load(args.compare)
    assert before.keys() == got.keys(), "different result sets"
    bad = [k for k in got if not torch.equal(got[k], before[k])]
    nan_same = [k for k in bad if torch.equal(got[k].isnan(), before[k].isnan())
                and torch.equal(torch.nan_to_num(got[k]), torch.nan_to_num(before[k]))]
    bad = [k for k in bad if k not in nan_same]
    print(f"{len(got)} results compared with torch.equal: {len(got) - len(bad)} identical, {len(bad)} differ")
    for k in bad:
        print("  DIFFERS:", k)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
