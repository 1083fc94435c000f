"""``pi`` (SVD-PI) and ``pi-forward`` (PI): gradients through power iteration with deflation.

Wang, Chen, Salzmann & Fua, "Backpropagation-Friendly Eigendecomposition", NeurIPS 2019.
For eigenvectors in decreasing eigenvalue order k = 1, 2, …, with M_1 = A:

    v_{t+1} = M_k v_t / ‖M_k v_t‖  (t = 0 … T−1),   u_k = v_T,   λ_k = u_kᵀ M_k u_k,
    M_{k+1} = M_k − M_k u_k u_kᵀ                     (deflation, as in the paper's code),

and the gradient is back-propagated through every step. ``pi`` (SVD-PI) takes v_0 = the exact
eigenvector, so the forward is the exact eigendecomposition and only the backward goes through
the T = 19 iterations; it stops at the first k where λ_k ≤ ε, the Rayleigh quotient is off by
more than 10 %, or the eigenvalues kept so far hold ≥ 1 − ε of the energy (Σλ), and drops that
and every smaller eigenvector (their gradient contributions are zero). Default ε = 1e-4, the
ZCA layer's ε in the paper. ``pi-forward`` (the PI baseline) starts from seeded random vectors,
so its forward is power iteration too, with no breaking conditions.
"""

from __future__ import annotations

import numpy as np

from .. import _xp
from ._base import Method


def _norm(x, xp):
    return xp.sqrt((x * x).sum(-1, keepdims=True) if xp is np else (x * x).sum(-1, keepdim=True))


def _matvec(M, v):
    return (M @ v[..., :, None])[..., 0]


def _outer(a, b):
    return a[..., :, None] * b[..., None, :]


def _dot(a, b):
    return (a * b).sum(-1)


def _run(A, starts, steps, order, xp):
    """Power iteration with deflation; returns trajectories and the deflated matrices' factors.

    ``order`` lists eigen-indices (ascending numbering) from largest to smallest; starts[..., :, k]
    is the start vector for index k.
    """
    M = A
    traj, lam_hat, W = {}, {}, {}
    for k in order:
        v = starts[..., :, k]
        path = [v]
        for _ in range(steps):
            w = _matvec(M, v)
            v = w / _norm(w, xp)
            path.append(v)
        traj[k] = path
        Mv = _matvec(M, v)
        lam_hat[k] = _dot(v, Mv)
        W[k] = Mv
        M = M - _outer(Mv, v)
    return traj, lam_hat, W


def _forward(A, steps, start: str, eps: float, seed: int):
    xp = _xp.namespace(A)
    d = A.shape[-1]
    order = list(range(d - 1, -1, -1))
    if start == "exact":
        lam, U = (np.linalg.eigh(A) if xp is np else xp.linalg.eigh(A))
        starts = U
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, d, 0x91]))
        s = rng.standard_normal(A.shape)
        s /= np.linalg.norm(s, axis=-2, keepdims=True)
        starts = s.astype(A.dtype) if xp is np else xp.as_tensor(s, dtype=A.dtype, device=A.device)
    traj, lam_hat, W = _run(A, starts, steps, order, xp)
    ones = np.ones(A.shape[:-2] + (d,), dtype=bool)
    active = ones if xp is np else xp.as_tensor(ones, device=A.device)
    if start == "exact":
        active = _breaking_mask(lam, lam_hat, eps, xp)
    else:
        stack = xp.stack if xp is not np else np.stack
        U = stack([traj[k][-1] for k in range(d)], -1)
        lam = stack([lam_hat[k] for k in range(d)], -1)
    state = {"A": A, "traj": traj, "lam_hat": lam_hat, "W": W, "order": order, "active": active}
    return lam, U, state


def _breaking_mask(lam, lam_hat, eps, xp):
    """active[..., k]: eigen-index k is kept by SVD-PI's breaking conditions (paper, Sec. 4)."""
    d = lam.shape[-1]
    energy = lam.sum(-1)
    kept = None
    captured = lam[..., 0] * 0
    cols = [None] * d
    for k in range(d - 1, -1, -1):
        ok = (lam[..., k] > eps) & (xp.abs(lam_hat[k] - lam[..., k]) <= 0.1 * xp.abs(lam[..., k]))
        ok = ok & (captured < (1 - eps) * energy)  # energy already captured by larger ones
        captured = captured + lam[..., k]
        kept = ok if kept is None else kept & ok
        cols[k] = kept
    return (np.stack if xp is np else xp.stack)(cols, -1)


def backward(state, gU, glam, **_):
    """Reverse-mode through the iterations and deflations of ``_run`` (no autograd needed).

    Dropped stages are skipped with ``where`` (not multiplied by 0), so the NaN that power
    iteration produces on a deflated-to-zero matrix cannot leak into the kept stages.
    """
    A, traj, W, order, active = state["A"], state["traj"], state["W"], state["order"], state["active"]
    xp = _xp.namespace(A)
    zero = A[..., 0] * 0

    def keep(k, x, fallback):
        flag = active[..., k]
        return xp.where(flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim)), x, fallback)

    W_kept = {k: keep(k, W[k], zero) for k in order}
    v_kept = {k: keep(k, traj[k][-1], zero) for k in order}
    M = A
    for k in order:
        M = M - _outer(W_kept[k], v_kept[k])
    gM = A * 0
    for k in reversed(order):
        v = traj[k][-1]
        M = M + _outer(W_kept[k], v_kept[k])  # M_k, rebuilt from M_{k+1}
        # deflation M_{k+1} = M_k − (M_k v) vᵀ
        gv = -(_matvec(_xp.T(gM), W[k]) + _matvec(_xp.T(M), _matvec(gM, v)))
        g = gM - _outer(_matvec(gM, v), v)
        # Rayleigh quotient λ = vᵀ M_k v, then the loss's own gradient for column k
        gl = glam[..., k]
        g = g + gl[..., None, None] * _outer(v, v)
        gv = gv + gl[..., None] * (_matvec(M, v) + _matvec(_xp.T(M), v)) + gU[..., :, k]
        # the T power-iteration steps, backwards
        path = traj[k]
        for t in range(len(path) - 1, 0, -1):
            w = _matvec(M, path[t - 1])
            h = (gv - path[t] * _dot(path[t], gv)[..., None]) / _norm(w, xp)
            g = g + _outer(h, path[t - 1])
            gv = _matvec(_xp.T(M), h)
        gM = keep(k, g, gM)
    return _xp.sym(gM)


def _svd_pi_forward(A, steps=19, eps=1e-4):
    return _forward(A, steps, "exact", eps, 0)


def _pi_forward(A, steps=19, seed=0):
    return _forward(A, steps, "random", 0.0, seed)


SVD_PI = Method(
    "pi", backward, {"steps": 19, "eps": 1e-4}, forward=_svd_pi_forward,
    paper="Wang et al., NeurIPS 2019 (SVD-PI)", summary="exact forward, backward through 19 PI steps with deflation",
)
PI_FORWARD = Method(
    "pi-forward", backward, {"steps": 19, "seed": 0}, forward=_pi_forward,
    paper="Wang et al., NeurIPS 2019 (PI baseline)", summary="power iteration with deflation, forward and backward",
)
