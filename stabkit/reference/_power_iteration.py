"""High-precision truth of L∘(power iteration with deflation): the function an iterating forward computes.

A method whose forward is T steps of power iteration with deflation from fixed start vectors
(Wang et al., NeurIPS 2019, Alg. 1; ``Method.iteration``) returns (λ̂, Û), not the exact
eigendecomposition, so its own function is A ↦ L(λ̂(A), Û(A)). With M = A at the largest index and
indices k = d−1, …, 0 in turn (s_k the start of index k):

    v_0 = s_k,  w_t = M v_t,  n_t = ‖w_t‖,  v_{t+1} = w_t / n_t   (t < T),
    u_k = v_T,  m_k = M u_k,  λ̂_k = u_kᵀ m_k,  M ← M − m_k u_kᵀ.

Its gradient is the reverse mode of these steps (the stages in the opposite order, M̄ the adjoint
of the deflated M a stage hands on, ū and λ̄ from the loss on the kept pairs):

    m̄ = λ̄_k u_k − M̄ u_k,   ū ← ū + λ̄_k m_k − M̄ᵀ m_k + Mᵀ m̄,   M̄ ← M̄ + m̄ u_kᵀ,
    w̄_t = (v̄_{t+1} − v_{t+1} (v_{t+1}ᵀ v̄_{t+1})) / n_t,   v̄_t = Mᵀ w̄_t,   M̄ ← M̄ + Σ_t w̄_t v_tᵀ,

with v̄_T = ū; ∂L/∂A is the symmetric part of the final M̄. Everything runs in P-bit binary
floating point (python-flint ``arb_mat`` midpoints) on the exact float64 values of A, the starts
and the loss weight; M at a stage is rebuilt in the reverse pass by undoing the deflation
(M + m_k u_kᵀ) rather than stored, so memory stays O(d² T).

Why midpoints and not Arb's balls: through T normalisations per stage and d chained deflations
the ball radii grow past any use (the wrapping effect: 36 digits lost at d = 8 with 512 bits,
infinite radii at d = 16) while the midpoints agree to the last bit. ``digits`` is therefore the
agreement of the results at P and 2P bits, capped by the digits 2P bits leave of max|∂L/∂A| against
the magnitude of the terms summed into it (``_cancellation_cap``: what both precisions lose alike, a
weight entry of 1e-100 beside 1, the agreement cannot see), with P = 128, 256, … doubled until
≥ ``TARGET_DIGITS`` or ``MAX_BITS``: an estimate as the mpmath engine's, not a proof. The precision
matters: on an arithmetic spectrum (LAPACK mode 4, d = 16, eigvec loss) the function is so
sensitive that 128 bits get not one digit right and torch autograd through the same iteration in
float64 is 45° off, while 256, 512, … 4096 bits agree (``tests/test_reference_power_iteration.py``).
"""

from __future__ import annotations

import mpmath
import numpy as np
from flint import arb, arb_mat, ctx

from ._common import MAX_DIGITS, agreement_digits, cancellation_digits

START_BITS = 128
MAX_BITS = 4096
TARGET_DIGITS = 30.0


def gradient(A: np.ndarray, starts: np.ndarray, steps: int, kept: np.ndarray, loss):
    """(∂L/∂A float64, λ̂ float64, digits, bits) of L∘(power iteration) at A exactly as given.

    ``starts[:, k]`` is the start vector of index k, ``kept`` the pairs the loss sees (a dropped
    pair's ∂L/∂u and ∂L/∂λ are 0). Stages after the last kept one (lower indices) cannot reach the
    loss and are not run: their λ̂ is NaN. Raises ValueError where the loss is undefined at a kept λ̂
    (a spectral loss needs λ̂ > 0) or a stage that is run breaks down (a zero iterate).
    """
    bits, lo = START_BITS, None
    while True:
        hi, lam, scale = _at_precision(A, starts, steps, kept, loss, bits)
        if lo is not None:
            digits = min(agreement_digits(hi, lo), _cancellation_cap(hi, scale, bits))
            if digits >= TARGET_DIGITS or 2 * bits > MAX_BITS:
                break
        lo, bits = hi, 2 * bits
    d = A.shape[0]
    grad = np.array([float(x) for x in hi], dtype=np.float64).reshape(d, d)
    return grad, np.array([float(x) for x in lam]), min(digits, MAX_DIGITS), bits


def _at_precision(A, starts, steps, kept, loss, bits):
    """The gradient entries (row-major, mpmath numbers), λ̂ and the scale of the terms at ``bits`` bits."""
    old = ctx.prec
    ctx.prec = bits
    try:
        with mpmath.workprec(bits):
            G, lam, scale = _reverse_mode(A, starts, steps, kept, loss, bits)
            d = A.shape[0]
            entries = [_mpf((G[i, j] + G[j, i]) / 2) for i in range(d) for j in range(d)]
            return entries, [mpmath.nan if x is None else _mpf(x) for x in lam], scale
    finally:
        ctx.prec = old


def _reverse_mode(A, starts, steps, kept, loss, bits):
    """(M̄, λ̂, S): S = Σ ‖a‖‖b‖ over the terms abᵀ summed into M̄, each ‖a‖ taken as the sum of the
    magnitudes of a's own summands (before their cancellation), for ``_cancellation_cap``."""
    d = A.shape[0]
    M = arb_mat(A.tolist())
    stages = []  # per index (largest first): iterates V (T+1 columns), norms, u, m
    last = int(np.flatnonzero(kept).min()) if np.any(kept) else d  # later stages never reach the loss
    for k in range(d - 1, last - 1, -1):
        v = _column(starts[:, k])
        V, N = [v], []
        for _ in range(steps):
            w = (M * v).mid()
            n = _norm(w)
            v = (w * (1 / n)).mid()
            V.append(v)
            N.append(n)
        m = (M * v).mid()
        stages.append((k, V, N, v, m))
        M = (M - m * v.transpose()).mid()
    lam = {k: (u.transpose() * m)[0, 0].mid() for k, _, _, u, m in stages}
    gU, glam, sg = _loss_grads(loss, {k: u for k, _, _, u, _ in stages}, lam, kept, bits)
    Mbar = arb_mat(d, d)
    scale = mpmath.mpf(0)
    for k, V, N, u, m in reversed(stages):
        M = (M + m * u.transpose()).mid()  # the M this stage iterated (undo its deflation)
        Mt = M.transpose()
        sM = _vnorm(M)
        mb1, mb2 = (u * glam[k]).mid(), (Mbar * u).mid()
        mbar = (mb1 - mb2).mid()
        s_mbar = _vnorm(mb1) + _vnorm(mb2)
        ub = [(m * glam[k]).mid(), (Mbar.transpose() * m).mid(), (Mt * mbar).mid()]
        ubar = (gU[k] + ub[0] - ub[1] + ub[2]).mid()
        s_v = sg[k] + _vnorm(ub[0]) + _vnorm(ub[1]) + sM * s_mbar  # the magnitude of ū's summands
        scale += s_mbar * _vnorm(u)
        left, right = [mbar], [u]
        vbar = ubar
        for t in range(steps - 1, -1, -1):
            v1 = V[t + 1]
            c = (v1.transpose() * vbar)[0, 0]
            wbar = ((vbar - v1 * c) * (1 / N[t])).mid()
            scale += (s_v + _vnorm(v1) * abs(_mpf(c))) / _mpf(N[t]) * _vnorm(V[t])
            left.append(wbar)
            right.append(V[t])
            vbar = (Mt * wbar).mid()
            s_v = sM * _vnorm(wbar)
        Mbar = (Mbar + _columns(left) * _columns(right).transpose()).mid()
    return Mbar, [lam.get(k) for k in range(d)], scale


def _cancellation_cap(hi: list, scale, bits: int) -> float:
    """The digits ``bits``-bit arithmetic leaves in max|∂L/∂A| against the scale S of the terms it sums:
    bits·log10 2 − 3 − ``cancellation_digits`` (0 for a computed 0 beside S > 0). Information below
    2^-P of a term (a weight entry of 1e-100 beside 1, a coupling of 1e-100 in A) is lost alike at P
    and 2P bits, so the two agree — exactly, on 0 where the truth is 4e-101 — while ∂L/∂A, small by
    cancellation, consists of nothing else."""
    return float(max(0.0, bits * mpmath.log10(2) - 3 - cancellation_digits(hi, scale)))


def _loss_grads(loss, U: dict, lam: dict, kept, bits):
    """(∂L/∂u_k, ∂L/∂λ_k) per index, as ``loss.grads`` but in P bits, zero on dropped pairs, and per
    index the magnitude of ∂L/∂u_k's terms, 2‖W_sym‖_F‖u_k‖|f(λ_k) or w_k|."""
    W = arb_mat(np.asarray(loss.weight, dtype=np.float64).tolist())
    Ws = (W + W.transpose()) * arb(0.5)
    sWs = _vnorm(Ws)
    if loss.kind == "spectral" and any(kept[k] for k in lam):  # only the pairs the loss sees need its domain
        loss.check(np.array([float(lam[k]) for k in sorted(lam) if kept[k]]), np.float64)
    gU, glam, scales = {}, {}, {}
    for k, u in U.items():
        su = _vnorm(u)
        if not kept[k]:
            gU[k], glam[k], scales[k] = arb_mat(u.nrows(), 1), arb(0), mpmath.mpf(0)
            continue
        if loss.kind == "spectral":
            x = _mpf(lam[k])
            fx, dfx = loss.f_mp(x), loss.df_mp(x)
            gU[k] = (Ws * u) * (2 * _arb(fx))
            glam[k] = _arb(dfx) * (u.transpose() * W * u)[0, 0]
            scales[k] = 2 * sWs * su * abs(fx)
        else:
            gU[k] = (Ws * u) * (2 * arb(float(loss.w[k])))
            glam[k] = arb(0)
            scales[k] = 2 * sWs * su * abs(mpmath.mpf(float(loss.w[k])))
    return gU, glam, scales


def _vnorm(x: arb_mat) -> mpmath.mpf:
    """The Frobenius norm of the midpoints of ``x`` (a scale: rounded at the working precision); a
    matrix's as the sum of its squared entries (d² products, not the d³ of trace(xᵀx))."""
    if x.ncols() == 1:
        sq = (x.transpose() * x)[0, 0]
    else:
        sq = sum((e * e for e in x.entries()), arb(0))
    return _mpf(sq.mid().sqrt())


def _column(x: np.ndarray) -> arb_mat:
    return arb_mat([[float(v)] for v in x])


def _columns(cols: list) -> arb_mat:
    """The d × n matrix whose columns are the d × 1 matrices ``cols``."""
    d = cols[0].nrows()
    out = arb_mat(d, len(cols))
    for j, c in enumerate(cols):
        for i in range(d):
            out[i, j] = c[i, 0]
    return out


def _norm(w: arb_mat) -> arb:
    n = (w.transpose() * w)[0, 0].mid()
    if not n > 0:
        raise ValueError("power iteration broke down: an iterate is zero (M v = 0)")
    return n.sqrt().mid()


def _mpf(x: arb) -> mpmath.mpf:
    """The midpoint of ``x`` as an mpmath number, exactly."""
    man, exp = x.mid().man_exp()
    return mpmath.mpf((int(man), int(exp)))


def _arb(x: mpmath.mpf) -> arb:
    """An mpmath number as an exact arb."""
    if not mpmath.isfinite(x):
        raise ValueError(f"the loss is not finite at this λ̂ ({x})")
    if not x:
        return arb(0)
    man, exp = abs(x).man_exp  # mpmath's man_exp drops the sign
    return (-1 if x < 0 else 1) * arb(int(man)) * arb(2) ** int(exp)

