"""One monitored call's statistics, per stacked run: the smallest gap, relative gap and λ, whether
input and spectrum were finite, and the bound (max |F_ij| of a method's backward). Gaps are measured
exactly (in float64), the bound as the call's backward meets it (in the call's dtype).
"""

from __future__ import annotations

import torch


def wide(t):
    """``t`` in float64 where the device has it (not MPS): a float32 spectrum's gaps, relative gaps,
    1/gap and σ² are then its own exact numbers, never rounded to 0 or overflowed to ∞ (1/gap > 3.4e38,
    σ > 1.8e19 made σ² = ∞: a false non-finite event; σ < 1e-19 made σ² = 0: a false tie)."""
    return t.double() if t.is_floating_point() and t.device.type != "mps" else t


def entries_read_finite(A, triangle: str | None = None):
    """Per matrix of ``A`` (..., n, n), whether the entries the call reads are finite: all of them, or
    (``triangle`` "L"/"U") the lower/upper triangle with the diagonal — all that torch.linalg.eigh(A,
    UPLO) reads, so a NaN in the other triangle changes none of its outputs."""
    bad = ~torch.isfinite(A)
    if triangle is not None and A.ndim >= 2:
        bad = bad.tril() if triangle == "L" else bad.triu()
    return ~bad


@torch.no_grad()
def call_stats(A, lam, bound, runs: int, squared: bool = False, outputs=(), triangle: str | None = None) -> dict:
    """One call's statistics per run, each a (runs,) tensor (the call's batch split into ``runs`` equal
    parts, one after another): the smallest gap, relative gap and λ of the part's matrices, whether its
    input and its λ were finite, the largest |F_ij| of ``bound``'s method (absent without one); and
    ``batch`` (matrices per part) and ``n`` (λ per matrix), plain ints. ``lam`` ascending; ``squared``:
    it holds σ, and the spectrum is σ². ``outputs``: the call's outputs, counted in ``finite`` (a
    Daleckii–Krein layer's g(A) is NaN where its λ are finite: log of λ ≤ 0). ``triangle``: the one the
    call reads ("L", "U"; None: all of A), for the input's finiteness (:func:`entries_read_finite`).

    Gaps, relative gaps and λ are the spectrum's exact values (:func:`wide`). The bound is what the
    call's backward meets: F of λ in the call's dtype, σ² squared in it as the backward squares it (a
    float32 σ² tie gives ∞ even where the exact σ² differ)."""
    lam = lam.detach()
    if lam.ndim == 1:
        lam = lam[None]
    n = lam.shape[-1]
    if lam.numel() == 0 or lam.is_meta:  # an empty batch, 0×0 matrices, a tensor without values: nothing to measure
        device = "cpu" if lam.is_meta else lam.device
        nan = torch.full((runs,), float("nan"), dtype=lam.dtype, device=device)
        ok = torch.ones(runs, dtype=torch.bool, device=device)
        return {"batch": lam.shape[:-1].numel() // runs, "n": n, "input_finite": ok, "finite": ok, "lam_min": nan,
                "min_gap": nan, "min_rel_gap": nan}
    s_own = lam.reshape(runs, -1, n)
    s = wide(s_own)
    input_finite = entries_read_finite(A.detach(), triangle).reshape(runs, -1).all(1)
    # finiteness of σ itself: a float64 σ past 1.3e154 has σ² = ∞, a false non-finite event
    finite = input_finite & torch.isfinite(s).reshape(runs, -1).all(1)
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.numel() and not out.is_meta:
            finite = finite & torch.isfinite(out.detach()).reshape(runs, -1).all(1)
    gaps, rel_gaps = _gaps(s, squared) if n > 1 else (None, None)
    if squared:  # σ² exactly for the statistics; in the call's dtype for the bound (only where one is logged)
        s, s_own = s * s, s_own * s_own if bound is not None else None
    out = {"batch": s.shape[1], "n": n, "input_finite": input_finite, "finite": finite, "lam_min": s[..., 0].amin(1)}
    if n > 1:
        out["min_gap"] = gaps.amin(-1).amin(1)
        out["min_rel_gap"] = rel_gaps.amin(-1).amin(1)
    else:
        out["min_gap"] = out["min_rel_gap"] = torch.full((runs,), float("inf"), dtype=s.dtype, device=s.device)
    F = bound.bound(s_own.reshape(-1, n)) if bound is not None and n > 1 else None
    if F is not None:  # None: the method has no coefficient matrix F
        out["bound"] = F.reshape(runs, -1).amax(1)
    return out


def _gaps(s, squared: bool):
    """(gaps, gaps over the largest |value|) between neighbours of each matrix's ascending s, or of
    s² with ``squared``: |Δs|·(s_(i+1) + s_i) and (|Δs| / max s)·((s_(i+1) + s_i) / max s), which
    neither cancel nor give ∞ − ∞ = NaN where s² overflows (s > 1.3e154 in float64); the relative
    gap, a product of two ratios ≤ 2, stays finite there and where s² underflows to 0."""
    scale = s.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    diff = (s[..., 1:] - s[..., :-1]).abs()
    if not squared:
        return diff, diff / scale
    total = (s[..., 1:] + s[..., :-1]).abs()
    return diff * total, (diff / scale) * (total / scale)
