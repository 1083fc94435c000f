"""Whiten features with ``ZCAWhitening`` and train through it with a chosen backward.

    python examples/zca_whitening.py

Correlated synthetic features (B, C, H, W) go through ``ZCAWhitening(C, d=4, method="taylor")``:
each group of d = 4 channels leaves with (nearly) the identity covariance, Σ^{-1/2} computed by
``stabkit.torch.eigh`` whose backward is SVD-Taylor's. A few SGD steps of a tiny classifier
train through the layer; eval mode then uses the running statistics, as BatchNorm does.
Runs on a CPU in about a second.
"""

import torch
from torch import nn

from stabkit.layers import ZCAWhitening

C, D = 8, 4


def group_covariances(y):
    """Covariance of each group of D channels over batch and pixels: (C/D, D, D)."""
    g = y.transpose(0, 1).reshape(C // D, D, -1)
    g = g - g.mean(-1, keepdim=True)
    return g @ g.transpose(1, 2) / g.shape[-1]


def main():
    torch.manual_seed(0)
    mixing = torch.randn(C, C) + 2 * torch.eye(C)
    x = torch.einsum("ij,bjhw->bihw", mixing, torch.randn(64, C, 4, 4))  # strongly correlated channels
    y = (x[:, 0].mean((1, 2)) > 0).long()

    zca = ZCAWhitening(C, d=D, method="taylor", params={"K": 9}, eps=1e-4, affine=False)
    white = zca(x)
    before = group_covariances(x)
    after = group_covariances(white)
    eye = torch.eye(D).expand_as(after)
    print(f"max |cov − I| per group before: {[f'{v:.3g}' for v in (before - eye).abs().amax((1, 2)).tolist()]}")
    print(f"max |cov − I| per group after:  {[f'{v:.3g}' for v in (after - eye).abs().amax((1, 2)).tolist()]}")

    model = nn.Sequential(ZCAWhitening(C, d=D, method="taylor", params={"K": 9}), nn.Flatten(), nn.Linear(C * 16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"eval mode (running statistics): training accuracy {accuracy:.2f}")


if __name__ == "__main__":
    main()
