"""The scale of the SVD-DK derivatives where σ spread so far that a divided difference overflows while
the derivatives do not.

The DK backward 2F·L(G) of :mod:`.matrix_functions` forms D_ij = g[μ_i, μ_j] (μ = σ² + ε) before F
multiplies it. For g' unbounded at 0 (log, √, x^p with p < 1) D is largest at the smallest μ, D_ii = g'(μ_i),
and can overflow although what the gradient needs, σ_i·D_ij, is finite: float32 F = [diag(1, ½, 1e-14); 0],
x^−½, ε = 0 has D_33 = ½·1e42 = inf but ∂⟨G, C⟩/∂F_33 = −1e28·G_33. Then the whole backward was NaN.
:func:`.svd.range_scale` places only the largest σ; this moves the scale c (a power of two, so F·c and
the final c^(1−2q) are exact) until the largest and smallest σ lie symmetrically about 1 in exponent,
where D spans 2^(±2(1−q)h) (h half their spread in binary exponent) instead of 1 … 2^(4(1−q)h).
The differentiated backward of a wide F with ε > 0 takes two more scales here: :func:`centred_range_scale`
and :func:`ridge_scale`.
"""

from __future__ import annotations

import math

import torch

from .divided_differences import pair_divided_differences


def spread_scale(S: torch.Tensor, eps: float, fn: str, p: float | None, c: torch.Tensor) -> torch.Tensor:
    """c (shape (..., 1), from :func:`.svd.range_scale`), or, for g' unbounded at 0 (log, √, x^p with p < 1),
    where the smallest μ = (c s)² + c² ε (s = max(σ_min, √ε) > 0) is subnormal (D there had lost digits: √
    3e-3 off at float32 σ = 1e-22) or its divided difference D_ii = g'(μ) overflows as the backward would
    form it — and only there, so that every other input is computed bitwise as before — 2^−⌊(e_max + e_min)/2⌋ with
    e_max, e_min the binary exponents of max(σ_max, √ε) and s. An exact σ = 0 with ε = 0 is not moved
    (g'(0) is infinite at every scale). Without host synchronisation."""
    if S.shape[-1] == 0 or (fn == "power" and p >= 1):  # g' bounded near 0: D is largest at the largest μ
        return c
    S, root = S.detach(), math.sqrt(eps)
    low = S.amin(-1, keepdim=True).clamp_min(root)
    scaled = low * c
    mu = scaled * scaled + eps * c * c                  # as the backward forms μ at cF, c²ε
    slope = pair_divided_differences(mu, mu, torch.zeros_like(mu), fn, p)
    over = (slope.isinf() | (mu < torch.finfo(mu.dtype).tiny)) & (low > 0)
    return torch.where(over, _centred(S, low, root), c)


def ridge_scale(S: torch.Tensor, eps: float, q: float, c: torch.Tensor) -> torch.Tensor:
    """c, or, for the differentiated backward of a wide F with ε > 0 — which forms h's divided differences up to
    g[μ_a, μ_c, μ_b, c²ε], about g'''(c²μ)/6 ~ (c²μ)^(q−3) where μ_a, μ_c, μ_b lie near ε — where that power at the
    smallest μ = σ_min² + ε is within 2¹⁰ of overflowing, 2^−⌊(e_max + e_min)/2⌋ with e_max, e_min the binary
    exponents of max(σ_max, √ε) and max(σ_min, √ε): the smallest and largest c²μ then lie symmetrically about 1.
    At range_scale's c alone (σ_max placed), float32 x^−2 with ε = 1e-3, σ_max = 9.5e4 and a σ = 0 had c²ε = 1.5e-8,
    (c²ε)^−5 = inf, and inf·0 made the HVP NaN (float64 log, ε = 1e-200: the gradient). g of degree q ≥ 3: g'''
    is bounded at 0."""
    if S.shape[-1] == 0 or q >= 3 or eps == 0:
        return c
    S, root = S.detach(), math.sqrt(eps)
    low = S.amin(-1, keepdim=True).clamp_min(root)
    scaled = low * c
    probe = (scaled * scaled + eps * c * c) ** (q - 3) * 1024
    return torch.where(probe.isinf(), _centred(S, low, root), c)


def centred_range_scale(S, eps, q, c):
    """range_scale's c (shape (..., 1)) where it is 1, else 2^k with k moving s = max(σ_max, √ε) towards 1 as far as
    c^(1−2q) and c^(2−2q) (the gradient's and the HVP's unscaling) stay 2¹⁶ inside the normal range, never less than
    range_scale's own shift. For the wide F's differentiated ridge path: the double backward's cotangent arrives times
    c^(1−2q) and meets σ-, σ²-, σ⁴-sized factors of cF, so at range_scale's least shift (s at 2^−175 for x^1.9 in
    float64) their partial products underflowed: F = [diag(1e-94, 3e-94, 0) 0], ε = 1e-200, HVP 4.6e-3 off."""
    top = int(math.log2(torch.finfo(S.dtype).max)) - 24
    bound = int(top / max(abs(1 - 2 * q), abs(2 - 2 * q), 1))
    _, e = torch.frexp(S.detach().amax(-1, keepdim=True).clamp_min(math.sqrt(eps)))
    _, k_range = torch.frexp(c)
    k = (-e).clamp(-bound, bound)
    k = torch.where(k.abs() >= (k_range - 1).abs(), k, k_range - 1)
    return torch.where(c == 1, c, torch.exp2(k.to(S.dtype)))


def _centred(S: torch.Tensor, low: torch.Tensor, root: float) -> torch.Tensor:
    """2^−⌊(e_max + e_min)/2⌋, e_max and e_min the binary exponents of max(σ_max, √ε) and ``low``: the scale that
    puts the largest and smallest σ symmetrically about 1 in exponent."""
    _, e_low = torch.frexp(low)
    _, e_high = torch.frexp(S.amax(-1, keepdim=True).clamp_min(root))
    return torch.exp2(-torch.div(e_high + e_low, 2, rounding_mode="floor").to(S.dtype))
