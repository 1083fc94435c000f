"""The mpmath ground truths of the o2p_stability kind, on the very float input a layer sees:
Daleckii–Krein for ∂⟨G, log(FᵀF + εI)⟩/∂F and the implicit-function gradient of a loss of the
principal eigenvector."""

from __future__ import annotations

import numpy as np

DPS = 50


def _mp_matrix(x):
    import mpmath as mp
    return mp.matrix([[mp.mpf(float(v)) for v in row] for row in x])


def _np(M):
    return np.array(M.tolist(), dtype=np.float64)


def o2p_truth(F: np.ndarray, G: np.ndarray, eps: float) -> np.ndarray:
    """∂⟨G, log(FᵀF + εI)⟩/∂F at the float matrix F, by Daleckii–Krein in mpmath."""
    import mpmath as mp
    with mp.workdps(DPS):
        Fm = _mp_matrix(F)
        d = F.shape[1]
        A = Fm.T * Fm + mp.mpf(eps) * mp.eye(d)
        mu, Q = mp.eigsy(A)
        Gs = _mp_matrix((G + G.T) / 2)
        inner = Q.T * Gs * Q
        for i in range(d):
            for j in range(d):
                if mu[i] == mu[j]:
                    inner[i, j] *= 1 / mu[i]
                else:
                    inner[i, j] *= (mp.log(mu[i]) - mp.log(mu[j])) / (mu[i] - mu[j])
        return _np(2 * Fm * (Q * inner * Q.T))


def pc_truth(A: np.ndarray, B: np.ndarray, w: np.ndarray):
    """(∂L/∂A, top gap) for L = yᵀBy + (wᵀy)², y the principal eigenvector of the float A."""
    import mpmath as mp
    with mp.workdps(DPS):
        Am = _mp_matrix((A.astype(np.float64) + A.astype(np.float64).T) / 2)
        d = A.shape[0]
        lam, Q = mp.eigsy(Am)
        order = sorted(range(d), key=lambda i: -lam[i])
        top = order[0]
        y = Q[:, top]
        wm = _mp_matrix(w[None, :]).T
        gy = _mp_matrix(B + B.T) * y + 2 * (wm.T * y)[0] * wm
        v = mp.matrix(d, 1)
        for j in order[1:]:
            v += Q[:, j] * ((Q[:, j].T * gy)[0] / (lam[top] - lam[j]))
        G = v * y.T
        gap = float(lam[top] - lam[order[1]])
        return _np((G + G.T) / 2), gap
