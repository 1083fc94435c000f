"""The certificate of a refinement pass: Ostrowski/Weyl eigenvalue enclosures, Davis–Kahan sin θ
bounds per vector and, for groups of overlapping enclosures, the subspace sin Θ theorem (see
``_flint``'s docstring for the derivations)."""

from __future__ import annotations

import math

import numpy as np

from ._flint_ints import _SAFE, _fm, _lb_sqrt, _to_float, _ub, _ub_sqrt
from ._flint_refine import _Pass


# ----------------------------------------------------------------------------------------------
# certificate


def _certify(p: _Pass):
    """ρ ≥ ‖I − XᵀX‖_F, eigenvalue radii η_i about s_ii (units of the refined matrix), ε_i ≥ ‖u_i − x_i‖."""
    X, s, a = p.X, p.s, p.a
    d = X.shape[0]
    two_s = 2 * s
    R2 = -p.P1
    for i in range(d):
        R2[i, i] += 1 << two_s
    rho = _ub_sqrt(int(np.sum(R2 * R2)), two_s)
    Sd = np.array([int(v) for v in np.diag(p.S)], dtype=object)
    Soff = p.S.copy()
    for i in range(d):
        Soff[i, i] = 0
    o = _ub_sqrt(int(np.sum(Soff * Soff)), a + two_s)
    if rho >= 0.25:
        return None
    sabs = np.abs(_to_float(Sd, a + two_s))
    eta = ((sabs * _SAFE + o) * rho / (1 - rho) + o) * _SAFE
    # residual norms ‖A x_i − s_ii x_i‖ at scale a + 3s: n_i = C_i 2^{4s} − S_ii²(2^{2s+1} − P1_ii)
    C = np.sum(p.AX * p.AX, axis=0)
    P1d = np.diag(p.P1)
    eps = np.full(d, np.inf)
    diff = np.abs(Sd[:, None] - Sd[None, :])
    difff = _to_float(diff, a + two_s) * (1 - 2.0 ** -50)
    dist = difff - eta[None, :] * _SAFE
    np.fill_diagonal(dist, np.inf)
    delta = dist.min(axis=1) * (1 - 1e-12)
    for i in range(d):
        n = int(C[i]) * (1 << (4 * s)) - int(Sd[i]) ** 2 * ((1 << (two_s + 1)) - int(P1d[i]))
        wn = _ub_sqrt(max(n, 0), a + 3 * s)
        xn = _lb_sqrt(int(P1d[i]), s)
        if delta[i] <= 0 or xn <= 0:
            continue
        sin = wn / (xn * delta[i]) * _SAFE
        if sin < 0.5:
            r = _ub(abs(int(R2[i, i])), two_s)
            eps[i] = (math.sqrt(2) * sin + r) * _SAFE
    grp = _groups(Sd, a + two_s, eta)
    _certify_groups(p, grp, eta, rho, eps)
    return {"rho": rho, "eta": eta, "eps": eps, "grp": grp}


def _gap_lb(c: np.ndarray, q: int, eta: np.ndarray, i0: int, i1: int, i2: int) -> float:
    """Lower bound on min_{k∈[i1,i2)} (c_k − η_k) − max_{i∈[i0,i1)} (c_i + η_i), c_i = C_i/2^q exact.

    Offsets from the anchor c[i1] are exact integer differences rounded to float64 (relative
    error ≤ 2^-53), so gaps far below ulp(c) are resolved."""
    anchor = int(c[i1])
    den = 1 << q
    o = np.array([(int(v) - anchor) / den for v in c[i0:i2]])  # correctly rounded
    slack = np.abs(o) * 2.0 ** -51 + 1e-300
    e = eta[i0:i2] * _SAFE
    n = i1 - i0
    top = float(np.max(o[:n] + slack[:n] + e[:n]))
    bot = float(np.min(o[n:] - slack[n:] - e[n:]))
    gap = bot - top
    return gap * (1 - 2.0 ** -40) if gap > 0 else gap * (1 + 2.0 ** -40) - 1e-300


def _groups(c: np.ndarray, q: int, eta: np.ndarray) -> np.ndarray:
    """Labels 0, 1, … of the maximal runs of overlapping enclosures [c_i ± η_i] (c_i = C_i/2^q
    ascending, C exact ints).  Runs are merged until neighbouring unions are disjoint; for ascending
    centres, disjoint neighbours imply pairwise disjoint unions."""
    d = c.size
    starts = [0]
    for i in range(1, d):
        if _gap_lb(c, q, eta, starts[-1], i, i + 1) <= 0:
            continue
        starts.append(i)
    while True:
        b = starts + [d]
        bad = {k for k in range(1, len(starts)) if _gap_lb(c, q, eta, b[k - 1], b[k], b[k + 1]) <= 0}
        if not bad:
            break
        starts = [st for k, st in enumerate(starts) if k not in bad]
    grp = np.zeros(d, dtype=np.int64)
    for k, st in enumerate(starts):
        grp[st:] = k
    return grp


def _certify_groups(p: _Pass, grp: np.ndarray, eta: np.ndarray, rho: float, eps: np.ndarray) -> None:
    """ε_J ≥ min_W ‖X_J − U_J W‖_F for every group J of ≥ 2 overlapping enclosures (in place).

    Y = X_J, T = YᵀAY (exact), residual W = AY − YT (exact).  With N = (YᵀY)^½, Q = Y N⁻¹
    orthonormal and M = QᵀAQ = N⁻¹TN⁻¹: AQ − QM = (W − Y((YᵀY)⁻¹ − I)T) N⁻¹, so
    ‖AQ − QM‖_F ≤ (‖W‖_F + √(1+ρ) ρ/(1−ρ) ‖T‖_F)/√(1−ρ).  By Ostrowski and Weyl (as for the
    single eigenvalues) eig(M) lies in the union I_J of the group's enclosures, and the other
    eigenvalues of A lie in the other groups' unions, at distance ≥ δ_J from I_J.  Davis–Kahan
    sin Θ (interval vs. exterior, constant 1): ‖sin Θ(Q, U_J)‖_F ≤ ‖AQ − QM‖_F / δ_J, and
    min_W ‖Q − U_J W‖_F ≤ √2 ‖sin Θ‖_F, ‖Y − Q‖_F = ‖N − I‖_F ≤ ρ.
    """
    X, s, a = p.X, p.s, p.a
    d = X.shape[0]
    labels, starts = np.unique(grp, return_index=True)
    if len(labels) == d or rho >= 0.25:
        return
    C = np.array([int(v) for v in np.diag(p.S)], dtype=object)
    bounds = list(starts) + [d]
    AX = None
    for k in range(len(starts)):
        i0, i1 = bounds[k], bounds[k + 1]
        if i1 - i0 < 2:
            continue
        eps[i0:i1] = np.inf
        gaps = [np.inf]
        if k > 0:
            gaps.append(_gap_lb(C, a + 2 * s, eta, bounds[k - 1], i0, i1))
        if k + 1 < len(starts):
            gaps.append(_gap_lb(C, a + 2 * s, eta, i0, i1, bounds[k + 2]))
        delta = min(gaps)
        if delta <= 0:
            continue
        if AX is None:
            AX = p.AX
        Yf = _fm(X[:, i0:i1])
        Tm = p.S[i0:i1, i0:i1]
        Wm = _fm(AX[:, i0:i1]) * (1 << (2 * s)) - Yf * _fm(Tm)  # scale a + 3s
        wn = _ub_sqrt(sum(int(v) * int(v) for v in Wm.entries()), a + 3 * s)
        tn = _ub_sqrt(int(np.sum(Tm * Tm)), a + 2 * s)
        res = (wn + math.sqrt(1 + rho) * rho / (1 - rho) * tn) / math.sqrt(1 - rho) * _SAFE
        sin = res / delta * _SAFE if np.isfinite(delta) else 0.0
        if sin < 0.5:
            eps[i0:i1] = (math.sqrt(2) * sin + rho) * _SAFE
