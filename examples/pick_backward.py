"""Pick a backward for your layer: score each rule on the matrix your layer really decomposes.

    python examples/pick_backward.py

A covariance pooling layer sees feature maps in which some channels are dead (all zero after a
ReLU) or nearly so, and its covariance Σ + εI then has a cluster of eigenvalues at or near ε — the
case where the analytic rule's 1/(λ_i − λ_j) is largest. For each case we take that very Σ, ask
``stabkit.compare`` for the angle of each rule's ∂L/∂Σ (probe loss: the matrix square root,
computed in float32 as in training) to the certified high-precision truth, and build the layer
with the best rule. On your own model: save the matrix your layer decomposes (``np.save``) and run
``stabkit compare --matrix cov.npy --loss sqrt --dtype float32``.
"""

import numpy as np
import torch

from stabkit.compare import compare
from stabkit.layers import CovariancePooling
from stabkit.layers.pooling import channel_covariance

EPS = 1e-3


def score(x, label):
    cov = channel_covariance(x, EPS)[0].numpy()
    lam = " ".join(f"{v:.4g}" for v in np.linalg.eigvalsh(cov))
    print(f"\n{label}: eigenvalues of Σ + εI [{lam}]")
    result = compare(cov, "sqrt", None, dtype="float32")  # every registry method
    print(f"  {'method':<12} {'angle to truth (deg)':>21} {'rel. error':>11}")
    for row in result.rows:
        print(f"  {row['method']:<12} {row['angle_deg']:>21.3g} {row['rel_err']:>11.3g}")
    finite = [r for r in result.rows if np.isfinite(r["angle_deg"])]
    best = min(finite, key=lambda r: r["angle_deg"])["method"]
    print(f"  best on this matrix: {best}")
    return best


def main():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(1, 8, 6, 6, dtype=torch.float64))
    nearly_dead = x.clone()
    nearly_dead[:, 5:] *= 1e-2
    score(nearly_dead, "three nearly dead channels")
    dead = x.clone()
    dead[:, 5:] = 0.0
    best = score(dead, "three dead channels (eigenvalue ε three times)")

    pool = CovariancePooling("sqrt", method=best, eps=EPS)
    xf = dead.float().requires_grad_(True)
    pool(xf).sum().backward()
    print(f"\nCovariancePooling('sqrt', method={best!r}) on the dead-channel map: gradient finite = "
          f"{bool(torch.isfinite(xf.grad).all())}")


if __name__ == "__main__":
    main()
