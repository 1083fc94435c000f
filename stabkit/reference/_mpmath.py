"""The mpmath engine: ``mpmath.eigsy`` at two precisions P and ≈1.5P, the Daleckii–Krein gradient in
mpmath arithmetic, digits = the agreement of the two, capped by what a backward-stable solver
delivers at P.  An agreement estimate, not a proof; independent of the flint engine and of the
float64 code paths; fine up to d ≈ 64.  See the package docstring for the precision choice.
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np

from . import _cache
from ._common import agreement_digits, as_exact_float64, cancellation_digits, check_dps, gap_digits

MAX_DPS = 2000  # the mpmath engine's working precision never exceeds this (decimal digits)


def eigh_exact(A: np.ndarray, dps: int) -> tuple[mpmath.matrix, mpmath.matrix]:
    """(λ ascending as a column, U) of A exactly as given, computed by mpmath.eigsy at ``dps``."""
    A = as_exact_float64(A)
    d = A.shape[0]
    with mpmath.workdps(check_dps(dps)):
        M = mpmath.matrix(A.tolist())  # float → mpf is exact
        E, Q = mpmath.eigsy(M)
        order = sorted(range(d), key=lambda i: E[i])
        lam = mpmath.matrix([E[i] for i in order])
        U = mpmath.matrix(d, d)
        for c, i in enumerate(order):
            for r in range(d):
                U[r, c] = Q[r, i]
    return lam, U


# ----------------------------------------------------------------------------------------------
# precision


def _cond_digits(lam: list, normA, loss) -> float:
    """⌈log10(‖A‖ / min|λ|)⌉ for spectral losses (f depends on λ itself, so the eigensolver's absolute
    error ~10^-P ‖A‖ must be small against λ_min); 0 for weighted losses (only gaps matter)."""
    if loss.kind != "spectral" or normA == 0:
        return 0
    lmin = min(abs(x) for x in lam)
    if lmin == 0:
        return math.inf
    return max(0, int(mpmath.ceil(mpmath.log10(normA / lmin))))


def _noise_floor(normA, d: int, dps: int):
    """Absolute error scale of a backward-stable eigensolver at ``dps`` digits: 10^(3−dps)·d·‖A‖."""
    return mpmath.mpf(10) ** (3 - dps) * d * normA


# ----------------------------------------------------------------------------------------------
# the gradient


def _exact(x) -> mpmath.mpf:
    """A float64 as an mpf without rounding: ``mpmath.mpf`` rounds to the working precision, which a forced
    dps ≤ 15 puts below 53 bits (weights 1 and 1 + 2^-52 became equal at both P = 6 and P2 = 14)."""
    with mpmath.workprec(53):
        return mpmath.mpf(float(x))


def _divided_differences_mp(lam: list, loss, dps: int) -> list[list]:
    """D_ij of the Daleckii–Krein formula at ``dps`` digits, without catastrophic cancellation."""
    d = len(lam)
    D = [[mpmath.mpf(0)] * d for _ in range(d)]
    with mpmath.workdps(dps):
        if loss.kind == "weighted":
            w = [_exact(x) for x in loss.w]
            for i in range(d):
                for j in range(d):
                    if i != j and w[i] != w[j]:
                        D[i][j] = (w[i] - w[j]) / (lam[i] - lam[j])
            return D
        near = mpmath.mpf(10) ** (-(dps // 2 + 2))
        for i in range(d):
            D[i][i] = loss.df_mp(lam[i])
            for j in range(i + 1, d):
                h = lam[i] - lam[j]
                m = (lam[i] + lam[j]) / 2
                if abs(h) <= near * abs(m):
                    # midpoint expansion: f[a,b] = f'(m) + f'''(ξ) h²/24, error below 10^-dps
                    v = loss.df_mp(m)
                else:
                    extra = max(0, int(mpmath.ceil(-mpmath.log10(abs(h) / abs(m))))) + 5
                    with mpmath.workdps(dps + extra):  # λ are exact mpf; f evaluated more precisely
                        v = (loss.f_mp(lam[i]) - loss.f_mp(lam[j])) / h
                    v = +v
                D[i][j] = D[j][i] = v
    return D


def _gradient_mp(lam: list, U: mpmath.matrix, loss, dps: int) -> tuple[list, mpmath.mpf]:
    """Daleckii–Krein gradient in mpmath at ``dps``: (the d×d entries row-major, max|D_ij|·‖G_sym‖_F,
    the scale of its terms: a backward error ε moves it by ~ε·cond·that scale, whatever its size)."""
    d = len(lam)
    with mpmath.workdps(dps):
        G = loss.weight
        Gs = mpmath.matrix([[(_exact(G[i, j]) + _exact(G[j, i])) / 2
                             for j in range(d)] for i in range(d)])
        K = U.T * Gs * U
        D = _divided_differences_mp(lam, loss, dps)
        M = mpmath.matrix(d, d)
        for i in range(d):
            for j in range(d):
                M[i, j] = D[i][j] * K[i, j]
        g = U * M * U.T
        scale = max(abs(x) for row in D for x in row) * mpmath.mnorm(Gs, "f")
        return [g[i, j] for i in range(d) for j in range(d)], scale


# ----------------------------------------------------------------------------------------------
# the cached eigendecomposition pair (entry format: JSON of exact mantissa/exponent pairs)


def _eig_mp_cached(A: np.ndarray, dps_pair: tuple[int, int], cache: bool):
    path = _cache.path_for(f"{_cache.eig_key(A, 'mpmath', dps_pair)}.json", cache)
    if path is not None:
        out = _cache.read(path, lambda raw: _eig_mp_parse(raw, dps_pair))
        if out is not None:
            return out
    out = []
    for dps in dps_pair:
        lam, U = eigh_exact(A, dps)
        out.append(([lam[i] for i in range(lam.rows)], U))
    if path is not None:
        def enc(x):
            return [str(_signed_man(x)), str(x._mpf_[2])]
        data = {"dps": list(dps_pair),
                "lam": [[enc(x) for x in lam] for lam, _ in out],
                "U": [[enc(U[i, j]) for i in range(U.rows) for j in range(U.cols)] for _, U in out]}
        _cache.write(path, json.dumps(data).encode())
    return out


def _eig_mp_parse(raw: bytes, dps_pair) -> list:
    data = json.loads(raw.decode())
    if list(data["dps"]) != list(dps_pair):
        raise ValueError(f"entry is for precisions {data['dps']}, not {list(dps_pair)}")
    out = []
    with mpmath.workdps(max(dps_pair) + 30):  # construct the stored mpf values without rounding
        for lam_s, U_s in zip(data["lam"], data["U"], strict=True):
            lam = [mpmath.mpf((int(m), int(e))) for m, e in lam_s]
            d = len(lam)
            if len(U_s) != d * d:
                raise ValueError(f"eigenvector block has {len(U_s)} entries, expected {d * d}")
            U = mpmath.matrix(d, d)
            for idx, (m, e) in enumerate(U_s):
                U[idx // d, idx % d] = mpmath.mpf((int(m), int(e)))
            out.append((lam, U))
    if len(out) != 2:
        raise ValueError(f"entry holds {len(out)} decompositions, expected 2")
    return out


def _signed_man(x) -> int:
    sign, man, _exp, _bc = x._mpf_
    return -int(man) if sign else int(man)


# ----------------------------------------------------------------------------------------------
# the engine


def engine(A: np.ndarray, loss, cache: bool, dps: int | None, input_dtype=np.float64):
    """(float64 gradient, thunk → mpf entries row-major, float64 eigenvalues, digits, note).

    Gradient at precisions P and ≈1.5P.  P starts at 30 + gap digits + the float64 condition's digits
    (for every loss, so that all share one cached solve); for spectral losses the condition is then
    read from the high-precision eigenvalues, and P is raised (at least doubled while λ_min is below
    the eigensolver's noise floor) until it covers it, up to MAX_DPS.

    ``digits`` = min(agreement of the two gradients, P − 3 − gap digits − condition digits −
    cancellation digits): the second term is the accuracy a backward-stable solver can deliver at P,
    so that two precisions making the same error (e.g. both treating an off-diagonal of 1e-61 against
    1 as negligible) cannot certify a wrong number.  That error is absolute, on the scale of the
    gradient's terms (max|D|·‖G_sym‖_F); a gradient smaller by cancellation loses the difference
    (0 digits for a computed 0: two precisions that both drop a 1e-61 coupling agree on exactly 0)."""
    d = A.shape[0]
    gap_dig = gap_digits(A)
    with mpmath.workdps(40):
        normA = mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(x)) ** 2 for x in A.ravel()))
    mag = np.abs(np.linalg.eigvalsh(A))
    # the float64 condition (seen up to ~1e16), for every loss so that all share one cached solve
    floor = max(mag.min(), 1e-16 * mag.max())  # 0 where an eigenvalue is 0 and 1e-16·max underflows (subnormal A)
    cond64 = math.ceil(math.log10(mag.max() / floor)) if floor else 16 if mag.max() else 0
    P = dps or 30 + gap_dig + cond64
    while True:
        P2 = math.ceil(1.5 * P) + 5
        (lam1, U1), (lam2, U2) = _eig_mp_cached(A, (P, P2), cache)
        cond_dig = _cond_digits(lam2, normA, loss)
        need = 30 + gap_dig + cond_dig if loss.kind == "spectral" else P
        if dps is not None or P >= need or P >= MAX_DPS:
            break
        noise = _noise_floor(normA, d, P)
        lmin = min(lam2)
        if loss.kind == "spectral" and lmin < -noise:
            break  # clearly indefinite: loss.check rejects it below
        P = int(min(MAX_DPS, max(need, 2 * P) if abs(lmin) <= noise else need))
    lam64 = np.array([float(x) for x in lam2])
    loss.check(lam64, dtype=input_dtype)
    g1, _ = _gradient_mp(lam1, U1, loss, P)
    g2, scale = _gradient_mp(lam2, U2, loss, P2)
    cap = P - 3 - gap_dig - cond_dig - cancellation_digits(g2, scale)
    digits = min(agreement_digits(g2, g1), max(0.0, cap))
    note = ""
    if dps is None and P < need:
        note = (f"the condition needs {need} working digits, more than MAX_DPS = {MAX_DPS}"
                if math.isfinite(need) else "a zero eigenvalue: the condition is infinite")
    grad = np.array([float(x) for x in g2], dtype=np.float64).reshape(d, d)  # correctly rounded
    return grad, lambda: g2, lam64, digits, note
