"""Ogita–Aishima refinement in exact integer fixed point, with the cluster handling and the
Rayleigh–Ritz step described in ``_flint``'s docstring (Ogita & Aishima, JJIAM 35 (2018); part II,
JJIAM 36 (2019))."""

from __future__ import annotations

import bisect
import math

import numpy as np

from . import _flint_mul
from ._flint_mul import IntMat
from ._flint_ints import _float_exact_to_int, _fm, _obj, _round_to_int, _shift, _sqrt_ub, _to_float

_NEWTON_MAX_BITS = 10  # largest |E_ij| of a separated pair that the refinement applies as is: 2^-10


# ----------------------------------------------------------------------------------------------
# refinement


class _Pass:
    """Exact products of one refinement pass for X (scale 2^-s)."""

    def __init__(self, Ai: IntMat, a, X, s):
        self.X, self.s, self.a = X, s, a
        Xi = IntMat(X)
        self.P1 = _flint_mul.matmul(Xi.T, Xi, sym=True)  # XᵀX, scale 2s
        keep = [] if Ai.symmetric else None  # then (XᵀA)ᵀ = AX, from the chain's own residues
        self.S = _flint_mul.matmul(Xi.T, Ai, Xi, sym=Ai.symmetric, keep=keep)  # XᵀAX, scale a + 2s
        self._Ai, self._Xi = Ai, Xi  # AX (scale a + s) is formed only when certifying
        self._AX = None
        self._XtA = keep[0] if keep else None
        self.order = None
        self.sort()

    def Xint(self) -> IntMat:
        """X (in its sorted column order) as an ``IntMat``."""
        return self._Xi if self.order is None else self._Xi.take_cols(self.order)

    @property
    def AX(self) -> np.ndarray:
        if self._AX is None:
            self._AX = self._XtA().T.copy() if self._XtA is not None else _flint_mul.matmul(self._Ai, self._Xi)
            self._XtA = None
        return self._AX if self.order is None else self._AX[:, self.order]

    def sort(self):
        d = self.X.shape[1]
        sd = list(np.diag(self.S))
        order = sorted(range(d), key=sd.__getitem__)
        if order != list(range(d)):
            o = np.array(order)
            self.order = o
            self.X = self.X[:, o]
            self.P1 = self.P1[np.ix_(o, o)]
            self.S = self.S[np.ix_(o, o)]


def _refine(A: np.ndarray, target_bits: int, lam0: np.ndarray, Q0: np.ndarray, max_iter: int = 14):
    """Ogita–Aishima refinement of (lam0, Q0) = eigh(A) to ~target_bits; returns (last pass, previous pass)."""
    d = A.shape[0]
    Aint, a = _float_exact_to_int(A)
    Ai = IntMat(Aint)
    Ai.symmetric = bool(np.array_equal(A, A.T))  # XᵀAX is then symmetric: half its reconstruction
    normA = float(np.abs(lam0).max()) or 1.0
    s = min(64, target_bits)  # float64 eigh is accurate to ~2^-50; less only when a low target is forced
    X = _round_to_int(Q0, s)
    prev = None
    rr_blocks, n_rr = None, 0
    cur = None
    extra = max(0, target_bits - 200) // 16  # graded spectra: one Rayleigh–Ritz per ~16 digits
    for _ in range(max_iter + 2 * extra):
        cur = _Pass(Ai, a, X, s)
        s2 = 2 * s
        R2 = -cur.P1
        for i in range(d):
            R2[i, i] += 1 << s2  # R = I − XᵀX at scale 2s (exact)
        Sd = np.diag(cur.S)
        P1d = np.diag(cur.P1)
        # clusters from *exact* λ̃ differences: float64 λ̃ cannot resolve gaps below ulp(λ̃), and
        # pairs it rounds together would never be separated by the iteration
        w0 = s2 + 16
        lam = [(int(Sd[i]) << w0) // (int(P1d[i]) << a) for i in range(d)]  # scale w0
        # ω = 2(‖S − diag S‖_F + ‖A‖‖R‖_F) as an integer upper bound at scale w0 (in integers: at
        # high targets 2^-2s and 2^w0 leave the float64 range)
        soff2 = int(np.dot(cur.S.ravel(), cur.S.ravel())) - sum(int(v) * int(v) for v in Sd)
        norm_a = int(math.ceil(math.ldexp(normA, 20)))
        om_int = 2 * (_sqrt_ub(soff2, a + s2, w0)
                      + ((norm_a * _sqrt_ub(int(np.dot(R2.ravel(), R2.ravel())), s2, w0)) >> 20) + 1) + 1
        clus, gmin_int = _cluster_test(lam, om_int)
        gapbits = 0
        if gmin_int is not None:
            gapbits = max(0, w0 - gmin_int.bit_length() + math.ceil(math.log2(normA)) + 1)
        # E at scale s2, from S, R exact and λ̃ at scale w: its error ≈ 2^-w / gap ≤ 2^-(2s+16)
        w = s2 + gapbits + 16
        lam = np.array([(int(Sd[i]) << w) // (int(P1d[i]) << a) for i in range(d)], dtype=object)
        den = lam[None, :] - lam[:, None]  # scale w
        den[clus] = 1
        N = _shift(cur.S, w - a)
        N += R2 * lam[None, :]  # scale w + 2s
        E = N // den  # scale 2s
        E[clus] = R2[clus] // 2
        # A pair split by the cluster test whose correction is not small lies outside the Newton
        # region: its eigenvalues are closer than the mixing of its (not yet resolved) vectors.
        # Updating it would throw the iterate away (it cycled on exactly repeated eigenvalues split
        # by rounding); treat its run as one cluster instead, so that its invariant subspace
        # converges and the Rayleigh–Ritz step below resolves it.
        absE = np.abs(E)
        big = ~clus & (absE > (1 << (s2 - _NEWTON_MAX_BITS)))
        if big.any():
            clus = _merge_runs(clus, big)
            E = N // np.where(clus, 1, den)
            E[clus] = R2[clus] // 2
            absE = np.abs(E)
        del N, den
        emax = int(absE.max())  # scale 2s
        del absE
        acc = s2 - math.log2(emax) if emax > 0 else float(target_bits + 64)
        if acc >= target_bits:
            # Rayleigh–Ritz on the clusters whose subspace has converged; again on the sub-clusters
            # it leaves (eigenvalues split below the float64 resolution of the cluster block)
            blocks = _cluster_blocks(clus)
            if blocks and blocks != rr_blocks and n_rr < 4 + extra:
                n_rr += 1
                rr_blocks = blocks
                prev = cur
                prev._XtA = None  # only the last pass is certified: free its kept residues
                X, s = _rayleigh_ritz(cur, blocks, s, target_bits)
                continue
            break
        s_new = int(min(target_bits + 32, max(s, 2 * acc + 48, s + 8)))
        XE = _flint_mul.matmul(cur.Xint(), E)  # scale 3s
        X = _shift(cur.X, s_new - s) + _shift(XE, s_new - 3 * s)
        s = s_new
        prev = cur
        prev._XtA = None  # only the last pass is certified: free its kept residues
    return cur, prev


def _cluster_test(lam: list[int], om: int):
    """clus_ij = |λ_i − λ_j| ≤ ω and the smallest |λ_i − λ_j| > ω (None if there is none), for exact
    integers λ, from the sorted order (O(d log d) integer operations; the pairs within ω of λ_i
    are a contiguous run of the sorted values)."""
    d = len(lam)
    order = sorted(range(d), key=lam.__getitem__)
    srt = [lam[i] for i in order]
    rank = np.empty(d, dtype=np.int64)
    rank[order] = np.arange(d)
    lo = np.array([bisect.bisect_left(srt, v - om) for v in lam], dtype=np.int64)
    hi = np.array([bisect.bisect_right(srt, v + om) for v in lam], dtype=np.int64)
    clus = (rank[None, :] >= lo[:, None]) & (rank[None, :] < hi[:, None])
    gaps = [v - srt[l - 1] for v, l in zip(lam, lo) if l > 0] + [srt[h] - v for v, h in zip(lam, hi) if h < d]
    return clus, (min(gaps) if gaps else None)


def _merge_runs(clus: np.ndarray, big: np.ndarray) -> np.ndarray:
    """clus with every run [min, max] of a connected component of clus ∪ big that holds a big pair
    made one full block (indices are sorted by λ̃, so a run is a set of neighbouring eigenvalues)."""
    d = clus.shape[0]
    parent = list(range(d))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(clus | big)):
        parent[find(int(i))] = find(int(j))
    hit = {find(int(i)) for i in np.nonzero(big.any(axis=1))[0]}
    runs = []
    for root in hit:
        members = [i for i in range(d) if find(i) == root]
        runs.append([min(members), max(members)])
    runs.sort()
    merged = []
    for lo, hi in runs:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out = clus.copy()
    for lo, hi in merged:
        out[lo:hi + 1, lo:hi + 1] = True
    return out


def _cluster_blocks(clus: np.ndarray) -> list[list[int]]:
    d = clus.shape[0]
    blocks, i = [], 0
    while i < d:
        j = i
        while j + 1 < d and clus[j, j + 1]:
            j += 1
        if j > i:
            blocks.append(list(range(i, j + 1)))
        i = j + 1
    return blocks


def _rayleigh_ritz(p: _Pass, blocks, s: int, target_bits: int):
    """Rotate each converged cluster basis onto the eigenvectors of its (shifted) Ritz block."""
    X = p.X.copy()
    sw = s
    for b in blocks:
        idx = np.array(b)
        Sb = p.S[np.ix_(idx, idx)]
        mu = Sb[0, 0]
        Mb = Sb - np.diag([mu] * len(b))
        top = int(np.abs(Mb).max())
        if top == 0:
            continue
        Mf = _to_float(Mb, top.bit_length() - 60)  # only the direction matters: keep it in range
        Mf = Mf / float(np.abs(Mf).max())
        _, W = np.linalg.eigh((Mf + Mf.T) / 2)
        Y = _round_to_int(W, sw)
        for _ in range(12):  # Newton–Schulz: Y ← Y(3I − YᵀY)/2, quadratic to an orthogonal matrix
            Yf = _fm(Y)
            G = _obj(Yf.transpose() * Yf)  # scale 2sw
            k = len(b)
            T = -G
            for i in range(k):
                T[i, i] += 3 << (2 * sw)
            Y = _shift(_obj(Yf * _fm(T)), -(2 * sw + 1))
            err = G.copy()
            for i in range(k):
                err[i, i] -= 1 << (2 * sw)
            if int(np.abs(err).max()).bit_length() < sw + 8:  # ‖YᵀY − I‖_max < 2^-(sw-8)
                break
        Xb = _obj(_fm(X[:, idx]) * _fm(Y))
        X[:, idx] = _shift(Xb, -sw)
    return X, s
