"""Where does a float32 ZCA forward lose λ_min > 0 — the covariance or the eigensolver?

For Σ + εI the exact eigenvalues are ≥ ε, yet zca-cifar10 saw the float32 forward return λ_min ≤ 0 at
step 0 (before any update). This script takes the step-0 network of the study (same seeds, ResNet-18
conv1 at initialisation, one batch of 128 CIFAR-10 test images, no augmentation) and computes λ_min of
each d-group's Σ + εI four ways, so that the two rounding sources separate:

  eigh32(Σ32)   the layer: covariance and eigh in float32 on the device
  eigh64(Σ32)   the float32 covariance, eigenvalues in float64      → eigensolver error = first − this
  eigh64(Σ64)   covariance and eigh in float64 from the same conv1 output → covariance error = this − above
  eigh32cpu(Σ32) the float32 covariance, float32 LAPACK on the CPU

    python benchmarks/zca_forward_rounding.py --device cuda [--data PATH]     # prints a Markdown table

``--save DIR`` also writes the float64 Σ + εI of each d and seed's first group as
``DIR/zca-cov-d{d}-seed{seed}.npy``, a real layer input for ``stabkit compare --matrix``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stabkit.data import load_cifar10
from stabkit.train.loop import normalize
from stabkit.train.resnet import ResNet18
from stabkit.train.zca import group_covariance


def group_cov(z: torch.Tensor, d: int, eps: float) -> torch.Tensor:
    """Σ + εI per group of d channels of a conv output z (B, C, H, W), formed as the ZCA layer forms it."""
    return group_covariance(z.transpose(0, 1).reshape(z.shape[1] // d, d, -1), eps)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=None)
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-4)
    ap.add_argument("--save", type=Path, help="write each float64 Σ + εI (first group) here as .npy")
    args = ap.parse_args()
    images, _ = load_cifar10(args.data, "test")
    x = normalize(torch.from_numpy(images[:128]).permute(0, 3, 1, 2).contiguous().to(args.device))
    print(f"device {args.device}, torch {torch.__version__}, cuDNN TF32 convolutions "
          f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; λ_min / ε of Σ + εI (ε = {args.eps:g}), min over groups\n")
    print("| d | seed | ‖Σ‖₂ | eigh32(Σ32) | eigh64(Σ32) | eigh64(Σ64) | eigh32cpu(Σ32) |")
    print("|---|---|---|---|---|---|---|")
    for d in args.dims:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            conv1 = ResNet18(norm="zca", d=d, eps=args.eps).conv1.to(args.device)
            with torch.no_grad():
                z = conv1(x)
                s32 = group_cov(z, d, args.eps)
                s64 = group_cov(z.double(), d, args.eps)
                vals = [torch.linalg.eigvalsh(s32), torch.linalg.eigvalsh(s32.double()), torch.linalg.eigvalsh(s64),
                        torch.linalg.eigvalsh(s32.cpu())]
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                np.save(args.save / f"zca-cov-d{d}-seed{seed}.npy", s64[0].cpu().numpy())
            lam = [v.min().item() / args.eps for v in vals]
            norm = torch.linalg.eigvalsh(s64).max().item()
            print(f"| {d} | {seed} | {norm:.3g} | " + " | ".join(f"{v:.3g}" for v in lam) + " |")


if __name__ == "__main__":
    main()
