"""g(σ² + ε) for the SVD routes of :mod:`.matrix_functions`, from the singular values σ of F, without forming
a σ² that over- or underflows (or, for x^p, a derivative p·μ^(p−1) that does)."""

from __future__ import annotations

import torch

from .divided_differences import scalar_function


def gram_values(S, eps, fn, p):
    """g(σ² + ε) elementwise, also where σ² + ε overflows (σ > 1.8e19 in float32) or is subnormal or 0 at σ ≠ 0
    (float32 σ < 1.1e-19 with ε = 0: σ² had lost its digits, or was 0), but g(σ² + ε) need not, and for x^p
    where its derivative p·μ^(p−1) is no normal number though the SVD route's 2pσ·μ^(p−1) may be (float32
    p = −½: σ < 1.4e-13 or > 4.4e12): there log = 2 log σ + log1p((ε/σ)/σ), √ = hypot(σ, √ε), x^p =
    hypot(σ, √ε)^(2p), whose derivatives in σ form no such power; elsewhere (every σ of ordinary size)
    g(σ² + ε) as is."""
    mu = S * S + eps
    tiny = torch.finfo(mu.dtype).tiny
    off = mu.isinf() | ((mu < tiny) & (S != 0))
    if fn == "power" and p != 1:  # x^p's derivative p·μ^(p−1) (the SVD route's) not a normal number
        slope = mu.detach() ** (p - 1)
        off = off | (((slope.abs() < tiny) | slope.isinf()) & (S != 0))
    one = torch.ones_like(mu)
    S_off = torch.where(off, S, one)
    if fn == "log":
        alt = 2 * torch.log(S_off) + (torch.log1p(eps / S_off / S_off) if eps else 0)  # no 0/σ² in the derivative
    else:
        h = torch.hypot(S_off, torch.full_like(S_off, eps ** 0.5))
        alt = h if fn == "sqrt" else h ** (2 * p)
    return torch.where(off, alt, scalar_function(fn, p)(torch.where(off, one, mu)))
