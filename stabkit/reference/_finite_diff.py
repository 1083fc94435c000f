"""∂L/∂A by mpmath central differences of the loss *value*: an independent check of the
Daleckii–Krein engines (tests only)."""

from __future__ import annotations

import mpmath
import numpy as np

from ._common import as_exact_float64, check_dps


def finite_difference_grad(A, loss, *, dps: int = 60, h: str = "1e-20") -> np.ndarray:
    """∂L/∂A by mpmath central differences of the loss value along (E_ij + E_ji)/2 (tests only).

    Independent of the Daleckii–Krein code: only loss values L = Σ f(λ_i) u_iᵀGu_i (spectral) or
    Σ w_i u_iᵀBu_i (weighted) from ``mpmath.eigsy`` at ``dps`` digits are used.  O(d²) eigsy calls.
    """
    A = as_exact_float64(A)
    d = A.shape[0]
    out = np.zeros((d, d))
    with mpmath.workdps(check_dps(dps)):
        hh = mpmath.mpf(h)
        base = mpmath.matrix(A.tolist())
        W = mpmath.matrix(loss.weight.tolist())

        def value(M):
            E, Q = mpmath.eigsy(M)
            order = sorted(range(d), key=lambda i: E[i])
            tot = mpmath.mpf(0)
            for rank, i in enumerate(order):
                q = Q[:, i]
                quad = (q.T * W * q)[0, 0]
                c = loss.f_mp(E[i]) if loss.kind == "spectral" else mpmath.mpf(float(loss.w[rank]))
                tot += c * quad
            return tot

        for i in range(d):
            for j in range(i, d):
                P = base.copy()
                M = base.copy()
                step = hh if i == j else hh / 2
                P[i, j] += step
                M[i, j] -= step
                if i != j:
                    P[j, i] += step
                    M[j, i] -= step
                g = (value(P) - value(M)) / (2 * hh)
                out[i, j] = out[j, i] = float(g)
    return out
