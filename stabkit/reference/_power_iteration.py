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
agreement of the results at P and 2P bits (P = 128, 256, …, doubled until ≥ ``TARGET_DIGITS`` agree
or ``MAX_BITS``), an estimate as the mpmath engine's, not a proof. The precision matters: on an
arithmetic spectrum (LAPACK mode 4, d = 16, eigvec loss) the function is so sensitive that 128
bits get not one digit right and torch autograd through the same iteration in float64 is 45° off,
while 256, 512, … 4096 bits agree (``tests/test_reference_power_iteration.py``).
"""

from __future__ import annotations

import mpmath
import numpy as np
from flint import arb, arb_mat, ctx

from ._common import MAX_DIGITS, agreement_digits

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
        hi, lam = _at_precision(A, starts, steps, kept, loss, bits)
        if lo is not None:
            digits = agreement_digits(hi, lo)
            if digits >= TARGET_DIGITS or 2 * bits > MAX_BITS:
                break
        lo, bits = hi, 2 * bits
    d = A.shape[0]
    grad = np.array([float(x) for x in hi], dtype=np.float64).reshape(d, d)
    return grad, np.array([float(x) for x in lam]), min(digits, MAX_DIGITS), bits


def _at_precision(A, starts, steps, kept, loss, bits):
    """The gradient entries (row-major, mpmath numbers) and λ̂ at ``bits`` bits."""
    old = ctx.prec
    ctx.prec = bits
    try:
        with mpmath.workprec(bits):
            G, lam = _reverse_mode(A, starts, steps, kept, loss, bits)
            d = A.shape[0]
            entries = [_mpf((G[i, j] + G[j, i]) / 2) for i in range(d) for j in range(d)]
            return entries, [mpmath.nan if x is None else _mpf(x) for x in lam]
    finally:
        ctx.prec = old


def _reverse_mode(A, starts, steps, kept, loss, bits):
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
    gU, glam = _loss_grads(loss, {k: u for k, _, _, u, _ in stages}, lam, kept, bits)
    Mbar = arb_mat(d, d)
    for k, V, N, u, m in reversed(stages):
        M = (M + m * u.transpose()).mid()  # the M this stage iterated (undo its deflation)
        Mt = M.transpose()
        mbar = (u * glam[k] - Mbar * u).mid()
        ubar = (gU[k] + m * glam[k] - Mbar.transpose() * m + Mt * mbar).mid()
        left, right = [mbar], [u]
        vbar = ubar
        for t in range(steps - 1, -1, -1):
            v1 = V[t + 1]
            wbar = ((vbar - v1 * (v1.transpose() * vbar)[0, 0]) * (1 / N[t])).mid()
            left.append(wbar)
            right.append(V[t])
            vbar = (Mt * wbar).mid()
        Mbar = (Mbar + _columns(left) * _columns(right).transpose()).mid()
    return Mbar, [lam.get(k) for k in range(d)]


def _loss_grads(loss, U: dict, lam: dict, kept, bits):
    """(∂L/∂u_k, ∂L/∂λ_k) per index, as ``loss.grads`` but in P bits, zero on dropped pairs."""
    W = arb_mat(np.asarray(loss.weight, dtype=np.float64).tolist())
    Ws = (W + W.transpose()) * arb(0.5)
    if loss.kind == "spectral" and any(kept[k] for k in lam):  # only the pairs the loss sees need its domain
        loss.check(np.array([float(lam[k]) for k in sorted(lam) if kept[k]]), np.float64)
    gU, glam = {}, {}
    for k, u in U.items():
        if not kept[k]:
            gU[k], glam[k] = arb_mat(u.nrows(), 1), arb(0)
            continue
        if loss.kind == "spectral":
            x = _mpf(lam[k])
            gU[k] = (Ws * u) * (2 * _arb(loss.f_mp(x)))
            glam[k] = _arb(loss.df_mp(x)) * (u.transpose() * W * u)[0, 0]
        else:
            gU[k] = (Ws * u) * (2 * arb(float(loss.w[k])))
            glam[k] = arb(0)
    return gU, glam


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

