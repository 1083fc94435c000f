"""ZCA whitening layer: decorrelated batch normalization with a chosen eigendecomposition backward.

Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization", CVPR 2018, and Wang, Chen, Ma,
Salzmann & Fua, "Robust Differentiable SVD", TPAMI 2021, Alg. 2. For an input X (B, C, H, W)
the C channels are split into G = C/d groups of d; for each group, with m = B·H·W samples,

    μ = mean(X_g),  Σ = (X_g − μ)(X_g − μ)ᵀ / m + εI,  Σ = U Λ Uᵀ,  W = U Λ^{-1/2} Uᵀ,
    Y_g = W (X_g − μ),   out = γ ∘ Y + β   (per-channel affine).

The eigendecomposition is ``stabkit.torch.eigh(Σ, method, **params)`` batched over the G
groups, so the backward is the chosen registry method's (SVD = ``analytic``, PI = ``pi-forward``,
SVD-PI = ``pi``, SVD-Taylor = ``taylor``, SVD-Clip = ``clip``, …).

ε defaults to 1e-4, the value of the TPAMI paper's experiments (it is also the ``pi`` method's
default energy threshold): it bounds Λ^{-1/2} ≤ 100 and keeps Σ positive definite, but it does not
separate close eigenvalues, so it does not bound the analytic gradient's 1/(λ_i − λ_j).

Eval mode uses the running mean and running whitening matrix, updated in training as
running ← (1 − momentum)·running + momentum·batch (momentum 0.1, as BatchNorm). ``dtype`` sets
the computation dtype of covariance, eigendecomposition and whitening (float32 or float64; the
input is cast in and the result cast back).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import torch as sktorch
from ..methods import resolve_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}



def group_covariance(xg: torch.Tensor, eps: float):
    """Mean μ (G, d, 1), centred samples X_g − μ and Σ + εI (G, d, d) of grouped samples xg (G, d, m),
    in xg's dtype; Σ is symmetrised so that rounding cannot make it asymmetric."""
    mean = xg.mean(-1, keepdim=True)
    xc = xg - mean
    eye = torch.eye(xg.shape[1], dtype=xg.dtype, device=xg.device)
    cov = xc @ xc.transpose(1, 2) / xc.shape[-1] + eps * eye
    return mean, xc, (cov + cov.transpose(1, 2)) / 2

class ZCAWhitening(nn.Module):
    def __init__(self, num_features: int, d: int = 16, method: str = "analytic", params: dict | None = None,
                 eps: float = 1e-4, momentum: float = 0.1, dtype: str = "float32", affine: bool = True):
        super().__init__()
        if d < 1 or num_features % d:
            raise ValueError(f"group size d={d} must divide the number of channels {num_features}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose float32 or float64")
        if not eps >= 0:
            raise ValueError(f"eps must be ≥ 0, got {eps}")
        self.num_features, self.d, self.groups = num_features, d, num_features // d
        self.method, self.params = method, resolve_params(method, params)
        self.eps, self.momentum, self.compute_dtype = float(eps), float(momentum), DTYPES[dtype]
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(self.groups, d, 1))
        self.register_buffer("running_whitening", torch.eye(d).expand(self.groups, d, d).clone())

    def extra_repr(self):
        return f"{self.num_features}, d={self.d}, method={self.method}, eps={self.eps:g}, dtype={self.compute_dtype}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if C != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got {C}")
        xg = x.to(self.compute_dtype).transpose(0, 1).reshape(self.groups, self.d, -1)  # G, d, m
        if self.training:
            mean, xc, cov = group_covariance(xg, self.eps)
            lam, U, kept = sktorch.eigh_kept(cov, self.method, **self.params)
            # W = U diag(kept·λ^-½) Uᵀ: only the pairs the method keeps (SVD-PI, NeurIPS 2019 Alg. 1)
            scale = torch.where(kept, torch.where(kept, lam, torch.ones_like(lam)).rsqrt(), torch.zeros_like(lam))
            whitening = (U * scale[:, None, :]) @ U.transpose(1, 2)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_whitening.mul_(1 - m).add_(m * whitening.to(self.running_whitening.dtype))
        else:
            xc = xg - self.running_mean.to(xg.dtype)
            whitening = self.running_whitening.to(xg.dtype)
        y = (whitening @ xc).reshape(C, B, H, W).transpose(0, 1).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y
