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

import math

import numpy as np

from .. import _xp
from ._base import MAX_STEPS, Method, integer, real


def _norm(x, xp):
    """‖x‖ over the last axis, kept as a length-1 axis (one kernel on either namespace)."""
    return np.linalg.norm(x, axis=-1, keepdims=True) if xp is np else xp.linalg.vector_norm(x, dim=-1, keepdim=True)


def _matvec(M, v):
    return (M @ v[..., :, None])[..., 0]


def _outer(a, b):
    return a[..., :, None] * b[..., None, :]


def _dot(a, b):
    """aᵀb over the last axis, kept as a length-1 axis."""
    return (a[..., None, :] @ b[..., :, None])[..., 0]


def _stack(items, axis, xp):
    return (np.stack if xp is np else xp.stack)(items, axis)


def _run(A, starts, steps, order, xp):
    """Power iteration with deflation over the eigen-indices in ``order`` (largest first).

    starts[..., :, k] is the start vector of index k. Per index k it returns the iterates
    v_0 … v_T stacked as (..., T + 1, d), the norms ‖M_k v_t‖ (t < T) as (..., T, 1), the
    Rayleigh quotient λ̂_k and W_k = M_k v_T (the deflation is M_{k+1} = M_k − W_k v_Tᵀ).
    """
    M = A
    paths, norms, lam_hat, W = {}, {}, {}, {}
    for k in order:
        v = starts[..., :, k]
        path, ns = [v], []
        for _ in range(steps):
            w = _matvec(M, v)
            n = _norm(w, xp)
            v = w / n
            path.append(v)
            ns.append(n)
        paths[k] = _stack(path, -2, xp)
        norms[k] = _stack(ns, -2, xp) if ns else None
        Mv = _matvec(M, v)
        lam_hat[k] = _dot(v, Mv)[..., 0]
        W[k] = Mv
        M = M - _outer(Mv, v)
    return paths, norms, lam_hat, W


def _forward(A, steps, start: str, eps: float, seed: int):
    xp = _xp.namespace(A)
    d = A.shape[-1]
    order = list(range(d - 1, -1, -1))
    if start == "exact":
        lam, U = (np.linalg.eigh(A) if xp is np else xp.linalg.eigh(A))
        kept = _energy_kept(lam, eps, xp)
        # indices dropped by the λ-only breaking conditions in every batch element contribute
        # nothing to the gradient and cannot influence larger ones: do not iterate them at all
        order = order[:int(kept.sum(-1).max()) if math.prod(kept.shape) else 0]
        starts = U
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, d, 0x91]))
        s = rng.standard_normal(A.shape)
        s /= np.linalg.norm(s, axis=-2, keepdims=True)
        starts = s.astype(A.dtype) if xp is np else xp.as_tensor(s, dtype=A.dtype, device=A.device)
    paths, norms, lam_hat, W = _run(A, starts, steps, order, xp)
    if start == "exact":
        active = _rayleigh_kept(kept, lam, lam_hat, order, xp)
    else:
        U = _stack([paths[k][..., -1, :] for k in range(d)], -1, xp)
        lam = _stack([lam_hat[k] for k in range(d)], -1, xp)
        ones = np.ones(A.shape[:-2] + (d,), dtype=bool)
        active = ones if xp is np else xp.as_tensor(ones, device=A.device)
    state = {"A": A, "paths": paths, "norms": norms, "lam_hat": lam_hat, "W": W, "order": order, "active": active}
    return lam, U, state


def _energy_kept(lam, eps, xp):
    """kept[..., k] by SVD-PI's λ-only breaking conditions (paper, Sec. 4): going down from the
    largest, stop at the first λ_k ≤ ε or once the larger ones hold ≥ 1 − ε of the energy Σλ."""
    desc = _flip(lam, xp)
    captured_before = _cumsum(desc, xp) - desc
    ok = (desc > eps) & (captured_before < (1 - eps) * lam.sum(-1)[..., None])
    return _flip(_prefix_all(ok, xp), xp)


def _rayleigh_kept(kept, lam, lam_hat, order, xp):
    """``kept`` further cut at the first iterated index whose Rayleigh quotient is off by > 10 %
    (the paper's third breaking condition); indices not iterated are dropped."""
    active = kept & False
    if order:
        # order = d−1, d−2, …: the iterated indices are the last len(order) ones, largest first
        lam_run = _flip(lam[..., lam.shape[-1] - len(order):], xp)
        ok = xp.abs(_stack([lam_hat[k] for k in order], -1, xp) - lam_run) <= 0.1 * xp.abs(lam_run)
        active[..., lam.shape[-1] - len(order):] = kept[..., lam.shape[-1] - len(order):] & _flip(_prefix_all(ok, xp), xp)
    return active


def _flip(x, xp):
    return np.flip(x, -1) if xp is np else xp.flip(x, (-1,))


def _cumsum(x, xp):
    return np.cumsum(x, -1) if xp is np else xp.cumsum(x, -1)


def _prefix_all(ok, xp):
    """out[..., i] = ok[..., 0] & … & ok[..., i]."""
    return np.logical_and.accumulate(ok, -1) if xp is np else xp.cumprod(ok.to(xp.float32), -1) > 0


def backward(state, gU, glam, **_):
    """Reverse-mode through the iterations and deflations of ``_run`` (no autograd needed).

    Dropped stages are skipped with ``where`` (not multiplied by 0), so the NaN that power
    iteration produces on a deflated-to-zero matrix cannot leak into the kept stages.
    """
    A, paths, norms, W = state["A"], state["paths"], state["norms"], state["W"]
    order, active = state["order"], state["active"]
    xp = _xp.namespace(A)
    zero = A[..., 0] * 0

    def keep(k, x, fallback):
        flag = active[..., k]
        return xp.where(flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim)), x, fallback)

    W_kept = {k: keep(k, W[k], zero) for k in order}
    v_kept = {k: keep(k, paths[k][..., -1, :], zero) for k in order}
    M = A
    for k in order:
        M = M - _outer(W_kept[k], v_kept[k])
    gM = A * 0
    for k in reversed(order):
        path, v = paths[k], paths[k][..., -1, :]
        M = M + _outer(W_kept[k], v_kept[k])  # M_k, rebuilt from M_{k+1}
        MT = _xp.T(M)
        # deflation M_{k+1} = M_k − (M_k v) vᵀ
        gMv = _matvec(gM, v)
        gv = -(_matvec(_xp.T(gM), W[k]) + _matvec(MT, gMv))
        g = gM - _outer(gMv, v)
        # Rayleigh quotient λ = vᵀ M_k v, then the loss's own gradient for column k
        gl = glam[..., k]
        g = g + gl[..., None, None] * _outer(v, v)
        gv = gv + gl[..., None] * (_matvec(M, v) + _matvec(MT, v)) + gU[..., :, k]
        # the T steps v_t = M v_{t−1} / ‖M v_{t−1}‖ backwards: h_t = (I − v_t v_tᵀ) ∂v_t / ‖M v_{t−1}‖,
        # then ∂v_{t−1} = Mᵀ h_t and ∂M += h_t v_{t−1}ᵀ (summed over t in one product at the end)
        T = path.shape[-2] - 1
        if T:
            hs = []
            for t in range(T, 0, -1):
                vt = path[..., t, :]
                h = (gv - vt * _dot(vt, gv)) / norms[k][..., t - 1, :]
                hs.append(h)
                gv = _matvec(MT, h)
            g = g + _stack(hs[::-1], -1, xp) @ path[..., :-1, :]
        gM = keep(k, g, gM)
    return _xp.sym(gM)


def _svd_pi_forward(A, steps=19, eps=1e-4):
    return _forward(A, steps, "exact", eps, 0)


def _pi_forward(A, steps=19, seed=0):
    return _forward(A, steps, "random", 0.0, seed)


SVD_PI = Method(
    "pi", backward, {"steps": 19, "eps": 1e-4}, forward=_svd_pi_forward,
    paper="Wang et al., NeurIPS 2019 (SVD-PI)", summary="exact forward, backward through 19 PI steps with deflation",
    domains={"steps": integer(1, MAX_STEPS), "eps": real(0.0, 1.0)},
)
PI_FORWARD = Method(
    "pi-forward", backward, {"steps": 19, "seed": 0}, forward=_pi_forward,
    paper="Wang et al., NeurIPS 2019 (PI baseline)", summary="power iteration with deflation, forward and backward",
    domains={"steps": integer(1, MAX_STEPS), "seed": integer(0)},
)
