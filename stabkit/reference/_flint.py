"""The scalable reference engine: Ogita–Aishima refinement in exact integer fixed point + certificate.

Refinement (Ogita & Aishima, JJIAM 35 (2018) 1007–1035; part II for clusters, JJIAM 36 (2019)
435–459).  Start from float64 ``numpy.linalg.eigh``; with R = I − XᵀX, S = XᵀAX,
λ̃_i = s_ii/(1 − r_ii), E_ij = (s_ij + λ̃_j r_ij)/(λ̃_j − λ̃_i) for separated pairs and r_ij/2 inside
a cluster (|λ̃_i − λ̃_j| ≤ ω = 2(‖S − diag S‖ + ‖A‖‖R‖)), update X ← X + XE; convergence is
quadratic.  The cluster test compares *exact* λ̃ differences with ω: float64 λ̃ cannot resolve
gaps below ulp(λ), and pairs it rounded together used to stay in a cluster for ever, their
eigenvectors unresolved, leaving ~1e-13 eigenvector bounds (the cause of the 8–11 digits on LAPACK
modes 1/2).  When the invariant subspace of a cluster has converged, a Rayleigh–Ritz step on the
cluster block (float64 eigh of the shifted block, orthonormalized to full precision by
Newton–Schulz) separates eigenvalues that differ by rounding only, after which the plain iteration
resolves them; sub-clusters the float64 block eigh could not split get a further Rayleigh–Ritz
step (up to 4 in all, one more per 16 bits of target beyond 200 for graded spectra).  A separated
pair whose correction |E_ij| exceeds 2^-10 lies outside the Newton region (its gap is below the
mixing of its still arbitrary vectors — exactly repeated eigenvalues split by rounding, once ω
drops below the split); its run is refined as one cluster until the Rayleigh–Ritz step resolves
it, instead of cycling.  X is a matrix of integers with an implicit scale 2^-s and A is scaled
exactly to integers, so XᵀX, AX, XᵀAX are *exact* integer products.

Products: every d × d product (XᵀX, XᵀAX, AX, XE, XᵀGX, XM̃Xᵀ) is an exact integer product formed
by ``_flint_mul.matmul``: multi-modular with primes ≈ 2^22 on float64 BLAS (each dgemm exact by
construction, CRT reconstruction exact; see that module).  It returns the same integers that
``flint.fmpz_mat`` multiplication returns — only faster (issue #16: the fmpz_mat products and the
Python-integer round trips around them took most of the time at d ≥ 512) — so nothing below depends on it;
``flint`` is kept for the small cluster blocks (Rayleigh–Ritz, group residuals).

Certificate (all from exact integer quantities; final bound arithmetic in float64 with a safety
factor that covers its own rounding):

* eigenvalues — Ostrowski: λ_i(XᵀAX) = θ_i λ_i(A), θ_i ∈ [1 − ‖R‖, 1 + ‖R‖]; Weyl:
  |λ_i(S) − s_(i)| ≤ ‖S − diag S‖_F.  Gives λ_i ∈ [s_ii ± η_i] for every i, clusters included.
* eigenvectors — Davis–Kahan sin θ (one vector, any shift μ): sin∠(x_i, u_i) ≤ ‖Ax_i − μx_i‖ /
  (‖x_i‖ δ_i), δ_i the distance of μ = s_ii to the other eigenvalue enclosures; needs δ_i > 0,
  i.e. an isolated enclosure.  ‖u_i − x_i‖ ≤ √2 sin θ + |r_ii| =: ε_i.
* gradient — with K = UᵀGU, M = D∘K and the computed M̃ = D̃∘XᵀGX:
  ‖U M Uᵀ − X M̃ Xᵀ‖_F ≤ ‖ΔU‖_F(1 + √(1+ρ))‖M‖₂ + (1+ρ)‖M − M̃‖_F, with
  |K − XᵀGX|_ij ≤ ‖G‖(ε_i + √(1+ρ)ε_j) and |D − D̃|_ij from η (mean-value theorem with
  max|f''| for spectral losses, exact quotient perturbation for weighted ones) plus the
  evaluation error of D̃.

* groups — enclosures that overlap (exactly repeated eigenvalues, or splits below the working
  precision) form groups J, maximal runs whose unions I_J are disjoint (tested on exact integer
  differences of the centres).  For |J| ≥ 2 the subspace Davis–Kahan sin Θ theorem (Davis &
  Kahan, SIAM J. Numer. Anal. 7 (1970); Stewart & Sun, Matrix Perturbation Theory, Thm V.3.6),
  with the exact residual W = AX_J − X_J(X_JᵀAX_J) and δ_J = distance of I_J to the other groups,
  gives ε_J ≥ min_W ‖X_J − U_J W‖_F over orthogonal W (``_certify_groups``); the group's columns
  get ε_i = ε_J.  In the gradient the eigenvalues of a group are replaced by its centre μ_J, with
  radius r_J ≥ |λ_i − μ_J|: the resulting D⁰ is constant on group blocks, so U(D⁰∘UᵀGU)Uᵀ does
  not depend on the basis inside a group, and |D − D⁰|_ij ≤ (r_i + r_j)/2 · max|f''| over the
  enclosures (mean value theorem, ∂f[a,b]/∂a = f''(ξ)/2) bounds the rest (``_bound``).
  Singletons are the case |J| = 1, μ = s_ii, r = η_i.

Precision: the refinement's error is absolute (~2^-bits ‖A‖), so for spectral losses (f depends on
λ itself) ``engine`` raises the target until the smallest |λ| is enclosed to ~25 digits (up to
``MAX_DPS``, stopping when a step brings no progress): float64 cannot see a condition beyond ~1e16,
and λ_min = 1e-150 used to come out as 4.7e-150.  The iteration's own scalars (ω, ‖E‖) are kept
in integers so that targets beyond the float64 exponent range work.  Bounds beyond the float64
range (f'' of zca at λ = 1e-150) are not formed: the result is then not certified.

Rigorous: all of the above — for zca/sqrt/log (f'', f''' tables) and weighted losses (exact
quotient perturbation; finite only when the weights are equal inside every group) — whenever every
enclosure or group is isolated and every sin bound is < 1/2; exact ties included.  Not rigorous:
only the fallback — a group not isolated, a sin bound ≥ 1/2, or a spectral f without a derivative
table — where the engine reports the agreement between the gradients of the last two iterates
(an estimate, not a proof).
"""

from __future__ import annotations

import bisect
import io
import json
import math
from fractions import Fraction

import flint
import mpmath
import numpy as np

from . import _cache
from ._flint_mul import IntMat, matmul

MAX_DIGITS = 60.0
_SAFE = 1.0 + 1e-9  # covers float64 rounding in the bound arithmetic (≪ 1e-9 relative in total)
_NEWTON_MAX_BITS = 10  # largest |E_ij| of a separated pair that the refinement applies as is: 2^-10


# ----------------------------------------------------------------------------------------------
# integer matrix helpers


def _fm(X: np.ndarray) -> flint.fmpz_mat:
    r, c = X.shape
    return flint.fmpz_mat(r, c, [int(v) for v in X.ravel()])


def _obj(M: flint.fmpz_mat) -> np.ndarray:
    return np.array([int(v) for v in M.entries()], dtype=object).reshape(M.nrows(), M.ncols())


def _float_exact_to_int(a: np.ndarray) -> tuple[np.ndarray, int]:
    """float64 array → (integers N, scale e) with a = N / 2^e exactly."""
    a = np.asarray(a, dtype=np.float64)
    m, ex = np.frexp(a)  # a = m 2^ex, 0.5 ≤ |m| < 1
    mant = (m * 2.0 ** 53).astype(np.int64)  # exact
    nz = mant != 0
    if not nz.any():
        return np.zeros(a.shape, dtype=object), 0
    e = int((53 - ex[nz]).max())
    shifts = np.where(nz, e - 53 + ex, 0)  # ≥ 0 on the nonzero entries
    return mant.astype(object) << shifts.astype(object), e


def _round_to_int(a: np.ndarray, s: int) -> np.ndarray:
    """round(a · 2^s) for a float64 array, as Python ints."""
    if s > 960:  # 2^s beyond the float64 range: exact rational arithmetic
        return np.array([round(Fraction(float(v)) * (1 << s)) for v in a.ravel()], dtype=object).reshape(a.shape)
    with np.errstate(over="ignore"):
        r = np.round(np.ldexp(np.asarray(a, dtype=np.float64), s))  # exact scaling; half to even, as round()
    if not np.isfinite(r).all():
        raise OverflowError("round(a · 2^s) beyond the float64 range")
    out = np.empty(r.size, dtype=object)
    out[:] = [int(v) for v in r.ravel().tolist()]
    return out.reshape(r.shape)


def _to_float(N: np.ndarray, scale: int) -> np.ndarray:
    """N / 2^scale correctly rounded (int/int true division); ±inf beyond the float64 range."""
    N = np.asarray(N)
    try:  # float(int) is correctly rounded, and so is ·2^-scale unless the result is subnormal
        F = N.astype(np.float64)
    except OverflowError:
        F = None
    if F is not None and F.size and np.isfinite(F).all():
        nz = np.abs(F[F != 0])
        if nz.size == 0 or math.frexp(float(nz.min()))[1] - scale > -1021:
            with np.errstate(over="ignore"):
                out = np.ldexp(F, -scale)
            if np.isfinite(out).all():
                return out

    def one(v, den):
        try:
            return v / den if den else float(v << -scale)
        except OverflowError:
            return math.inf if v > 0 else -math.inf

    den = 1 << scale if scale >= 0 else 0
    return np.array([one(v, den) for v in N.ravel()], dtype=np.float64).reshape(N.shape)


def _shift(N: np.ndarray, k: int) -> np.ndarray:
    """N · 2^k, floor for negative k."""
    if k >= 0:
        return N * (1 << k)
    return N >> (-k)


def _div_pow2(num: np.ndarray, e: int, den: np.ndarray) -> np.ndarray:
    """floor(num · 2^e / den) elementwise on integer arrays."""
    if e >= 0:
        return (num * (1 << e)) // den
    return num // (den * (1 << -e))


def _bits(n) -> int:
    return abs(int(n)).bit_length()


def _sqrt_ub(n: int, q: int, w: int) -> int:
    """An integer ≥ sqrt(n) / 2^q · 2^w (n ≥ 0)."""
    if w >= q:
        return math.isqrt(n << (2 * (w - q))) + 1
    return (math.isqrt(n) >> (q - w)) + 1


def _ub(n: int, scale: int) -> float:
    """Upper bound on n / 2^scale (n ≥ 0) in float64."""
    v = n / (1 << scale) if scale >= 0 else float(n << -scale)
    return max(v * (1 + 2.0 ** -50), 1e-300)


def _ub_sqrt(n: int, scale2: int) -> float:
    """Upper bound on sqrt(n) / 2^scale2 for an integer n ≥ 0 (scale2 = half the scale of n)."""
    return _ub(math.isqrt(n) + 1, scale2)


def _lb_sqrt(n: int, scale2: int) -> float:
    v = math.isqrt(n) / (1 << scale2)
    return v * (1 - 2.0 ** -50)


# ----------------------------------------------------------------------------------------------
# refinement


class _Pass:
    """Exact products of one refinement pass for X (scale 2^-s)."""

    def __init__(self, Ai: IntMat, a, X, s):
        self.X, self.s, self.a = X, s, a
        Xi = IntMat(X)
        self.P1 = matmul(Xi.T, Xi, sym=True)  # XᵀX, scale 2s
        keep = [] if Ai.symmetric else None  # then (XᵀA)ᵀ = AX, from the chain's own residues
        self.S = matmul(Xi.T, Ai, Xi, sym=Ai.symmetric, keep=keep)  # XᵀAX, scale a + 2s
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
            self._AX = self._XtA().T.copy() if self._XtA is not None else matmul(self._Ai, self._Xi)
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
        XE = matmul(cur.Xint(), E)  # scale 3s
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


# ----------------------------------------------------------------------------------------------
# the bounds of the spectral divided differences: |f''|, |f'''| on [x, ∞), carried by the loss
# (``SpectralLoss.d2_bound``/``d3_bound``; a loss without them gets no rigorous bound)


def _float_or_inf(fn, x) -> float:
    try:
        return float(fn(float(x)))
    except OverflowError:  # the derivative bound exceeds float64 (tiny λ): no float64 bound
        return math.inf


# ----------------------------------------------------------------------------------------------
# gradient


def _collapse(st: dict):
    """Group-collapsed eigenvalues μ (ints at scale qc) and radii r_i ≥ |λ_i − μ_i|.

    Singletons keep μ_i = c_i, r_i = η_i; a group J of overlapping enclosures gets one centre
    μ_J = (min c_J + max c_J)/2 and r_J = max_{i∈J} (|c_i − μ_J| + η_i), so every true λ_i, i ∈ J,
    lies in [μ_J ± r_J].
    """
    c, qc, eta = st["c"], st["qc"], st["eta"]
    d = c.size
    grp = st.get("grp")
    if grp is None:
        grp = np.arange(d)
    mu = c.copy()
    r = np.array(eta, dtype=np.float64).copy()
    _, starts = np.unique(grp, return_index=True)
    bounds = list(starts) + [d]
    for k in range(len(starts)):
        i0, i1 = bounds[k], bounds[k + 1]
        if i1 - i0 < 2:
            continue
        m = (int(min(c[i0:i1])) + int(max(c[i0:i1]))) // 2
        dev = _to_float(np.array([abs(int(v) - m) for v in c[i0:i1]], dtype=object), qc) * (1 + 2.0 ** -50)
        mu[i0:i1] = m
        r[i0:i1] = float(np.max(dev + r[i0:i1])) * _SAFE
    return mu, r, grp, bounds


def _gradient(st: dict, loss, G: np.ndarray, want_bound: bool):
    """Daleckii–Krein gradient from a refined state; (exact numerator ints, scale, bound or None).

    D̃ is evaluated at the group-collapsed eigenvalues μ (see ``_collapse``): inside a group of
    overlapping enclosures the gradient is formed from the group's invariant subspace only.
    """
    X, s, qc = st["X"], st["s"], st["qc"]  # λ_i ≈ c_i / 2^qc
    c, r, grp, bounds = _collapse(st)
    d = X.shape[0]
    G0, g0 = _float_exact_to_int(G)
    Gint, g = G0 + G0.T, g0 + 1  # G_sym = (G + Gᵀ)/2 exactly
    Gs = _to_float(Gint, g)
    Xi = st["_Xint"] if "_Xint" in st else IntMat(X)  # not in a state read from the cache
    K = matmul(Xi.T, Gint, Xi, sym=True)  # scale 2s + g (G_sym is symmetric)
    qK = 2 * s + g
    lamf = _to_float(c, qc)
    target = st["target_bits"]
    # D̃ at absolute scale tD: target + 40 bits below max|D|
    if loss.kind == "weighted":
        Wint, sw = _float_exact_to_int(np.asarray(loss.w, dtype=np.float64))
        dW = Wint[:, None] - Wint[None, :]
        dc = c[:, None] - c[None, :]
        dWf = _to_float(dW, sw)
        dcf = _to_float(dc, qc)
        with np.errstate(divide="ignore", invalid="ignore"):
            Dapprox = np.where(dWf != 0, dWf / np.where(dcf == 0, np.inf, dcf), 0.0)
        nz = (dW != 0) & (dc != 0)
        # ⌊log2 max|D|⌋ within one bit from the integers (a float quotient can overflow)
        Dbits = max((_bits(w) - sw - _bits(h) + qc for w, h in zip(dW[nz], dc[nz])), default=0)
        tD = int(target + 40 - Dbits)
        zero = (dW == 0) | (dc == 0)
        D = np.where(zero, 0, _div_pow2(dW, qc + tD - sw, np.where(zero, 1, dc)))
        want_bound = want_bound and tD > -1000  # the bound arithmetic is float64: |D| must fit
        evalD = np.full((d, d), 2.0 ** -tD) if want_bound else None
        if want_bound:
            se = r[:, None] + r[None, :]
            h = np.abs(dcf)
            with np.errstate(divide="ignore", invalid="ignore"):
                dD0 = np.where(dWf == 0, 0.0,
                               np.where(h > se, np.abs(dWf) * se / (h * (h - se)), np.inf))
    else:
        mags = np.maximum(np.abs(lamf), 1e-300)
        with mpmath.workprec(64):  # f'(λ) can exceed the float64 range (zca at λ = 1e-300)
            dfmax = max(abs(loss.df_mp(mpmath.mpf((int(ci), -qc)))) for ci in c)
            dbits = int(mpmath.floor(mpmath.log(dfmax, 2))) if dfmax > 0 else 0
        tD = int(target + 40 - dbits)
        half = max(tD, target) // 2 + 8
        dc = c[:, None] - c[None, :]
        dcf = _to_float(dc, qc)
        # pairs closer than 2^-half relatively use the midpoint rule f'((λ_i+λ_j)/2) (error ∝ h²)
        near = np.abs(dcf) <= 2.0 ** -half * mags[:, None]
        np.fill_diagonal(near, True)
        hmin = float(np.abs(dcf[~near]).min()) if (~near).any() else 1.0
        # f(λ_i) to 2^-tF absolute so that the quotient's error 4·2^-tF/|h| stays below 2^-tD
        tF = tD + max(0, math.ceil(-math.log2(hmin))) + 8
        mag_bits = math.ceil(abs(math.log2(float(mags.max())))) + math.ceil(abs(math.log2(float(mags.min()))))
        with mpmath.workprec(tF + 128 + mag_bits):  # |f| ≤ 2^mag_bits for x^±1/2, log on these λ
            lam_mp = [mpmath.mpf((int(ci), -qc)) for ci in c]
            fvals = [int(mpmath.nint(mpmath.ldexp(loss.f_mp(x), tF))) for x in lam_mp]
            Fv = np.array(fvals, dtype=object)
            dF = Fv[:, None] - Fv[None, :]
            D = np.where(near, 0, _div_pow2(dF, qc + tD - tF, np.where(near, 1, dc)))
            done = {}
            for i, j in zip(*np.nonzero(near)):
                if j < i:
                    continue
                key = (int(c[i]), int(c[j]))
                if key not in done:
                    m = (lam_mp[i] + lam_mp[j]) / 2
                    done[key] = int(mpmath.nint(mpmath.ldexp(loss.df_mp(m), tD)))
                D[i, j] = D[j, i] = done[key]
        h = np.abs(dcf)
        want_bound = want_bound and tD > -1000 and tF > -1000  # the bound arithmetic is float64
        if want_bound:
            evalerr = np.full((d, d), 2.0 ** -tD) + np.where(near, 0.0, 4.0 * 2.0 ** -tF / np.where(near, 1.0, h))
            d2, d3 = loss.d2_bound, loss.d3_bound
            lo = lamf * (1 - 1e-15) - r
            low = np.minimum(lo[:, None], lo[None, :])
            if d2 is None or d3 is None or (low <= 0).any():
                want_bound = False
            else:
                with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: no bound
                    # the tabulated bounds decrease on (0, inf): at min(lo_i, lo_j) they are the
                    # larger of their values at lo_i and lo_j
                    f2v = np.array([_float_or_inf(d2, x) for x in lo])
                    f3v = np.array([_float_or_inf(d3, x) for x in lo])
                    f2 = np.maximum(f2v[:, None], f2v[None, :])
                    f3 = np.maximum(f3v[:, None], f3v[None, :])
                    dD0 = (r[:, None] + r[None, :]) / 2 * f2 * _SAFE
                    evalD = (np.where(near & (h > 0), h * h / 24 * f3, 0.0) + evalerr) * _SAFE
    # M = D̃ ∘ K̃, rounded to scale tM
    Mfull = D * K  # scale tD + qK
    Mtop = int(np.abs(Mfull).max())
    tM = int(target + 40 - (_bits(Mtop) - 1 - tD - qK if Mtop else 0))
    Mint = _shift(Mfull, tM - tD - qK)
    # D̃ and K̃ are symmetric (divided differences of exact ints, floor quotients of negated
    # pairs agree), hence M̃; checked, as the product's symmetric reconstruction relies on it
    gnum = matmul(Xi, Mint, Xi.T, sym=bool((Mint == Mint.T).all()))  # scale 2s + tM
    gscale = 2 * s + tM
    bound = None
    if want_bound and np.isfinite(st["eps"]).all():
        bound = _bound(st, grp, bounds, Gs, K, qK, D, tD, Mint, tM, dD0, evalD)
    return gnum, gscale, bound


def _bound(st, grp, bounds, Gs, K, qK, D, tD, Mint, tM, dD0, evalD):
    """Rigorous ‖∂L/∂A − X M̃ Xᵀ‖_F (see the module docstring), or None if not finite.

    Ũ = U·blockdiag(W_J) with ‖Ũ_J − X_J‖_F ≤ ε_J; D⁰ = divided differences at the collapsed μ
    (constant on group blocks, so U(D⁰∘UᵀGU)Uᵀ = Ũ(D⁰∘ŨᵀGŨ)Ũᵀ).  Then
      ‖Γ − Γ⁰‖_F = ‖(D − D⁰)∘K‖_F ≤ (Σ_{J,J'} (max_{JJ'}|D − D⁰| (‖K̃_{JJ'}‖_F + κ_{JJ'}))²)^½,
      ‖Γ⁰ − XM̃Xᵀ‖_F ≤ ‖ΔU‖_F(1 + √(1+ρ))‖M⁰‖₂ + (1+ρ)‖M⁰ − M̃‖_F,
    κ_{JJ'} = ‖G‖(ε_J + √(1+ρ)ε_J') ≥ ‖Ũ_JᵀGŨ_J' − X_JᵀGX_J'‖_F (and entrywise).
    """
    d = Gs.shape[0]
    rho, eps = st["rho"], st["eps"]
    starts = np.array(bounds[:-1])
    Gn = float(np.linalg.norm(Gs)) * _SAFE
    sq = math.sqrt(1 + rho) * _SAFE
    kappa = Gn * (eps[:, None] + sq * eps[None, :]) * _SAFE
    Kf = np.abs(_to_float(K, qK)) * _SAFE
    Df = np.abs(_to_float(D, tD)) * _SAFE
    with np.errstate(invalid="ignore", over="ignore"):
        # Γ − Γ⁰, block by block (dD0 and κ are constant on group blocks)
        K2 = np.add.reduceat(np.add.reduceat(Kf * Kf, starts, axis=0), starts, axis=1)
        blk = dD0[np.ix_(starts, starts)] * (np.sqrt(K2) * _SAFE + kappa[np.ix_(starts, starts)])
        tA = float(np.linalg.norm(blk)) * _SAFE
        # Γ⁰ − X M̃ Xᵀ
        dM = (np.linalg.norm(evalD * (Kf + kappa)) + np.linalg.norm(Df * kappa) + d * 2.0 ** -tM) * _SAFE
        M2 = (np.linalg.norm(_to_float(Mint, tM)) * _SAFE + dM) * _SAFE
        epsJ = eps[starts]
        dU = float(np.linalg.norm(epsJ)) * _SAFE
        bound = (tA + dU * (1 + sq) * M2 + (1 + rho) * dM) * _SAFE * 1.01
    return float(bound) if np.isfinite(bound) else None


def _digits_from(bound: float, gnum: np.ndarray, gscale: int) -> float:
    top = int(np.abs(gnum).max())
    if top == 0:
        return MAX_DIGITS if bound == 0 else 0.0
    if bound <= 0:
        return MAX_DIGITS
    with mpmath.workprec(64):  # max|g| may lie outside the float64 range
        lg = mpmath.log10(mpmath.mpf((top, -gscale)))
        return float(min(MAX_DIGITS, max(0.0, lg - mpmath.log10(bound))))


# ----------------------------------------------------------------------------------------------
# state (what is cached) and the engine


def _state_from_pass(p: _Pass, target_bits: int, certify: bool, k: int) -> dict:
    """What the gradient needs: X (scale 2^-s), λ_i ≈ c_i / 2^qc of A = 2^-k A', and the bounds."""
    st = {"X": p.X, "s": p.s, "c": np.array([int(v) for v in np.diag(p.S)], dtype=object),
          "qc": p.a + 2 * p.s + k, "target_bits": target_bits, "_Xint": p.Xint()}
    cert = _certify(p) if certify else None
    if cert is not None:
        st.update(rho=cert["rho"], eta=cert["eta"] * 2.0 ** -k, eps=cert["eps"], grp=cert["grp"])
    else:
        st.update(rho=np.inf, eta=np.full(p.X.shape[0], np.inf), eps=np.full(p.X.shape[0], np.inf),
                  grp=np.arange(p.X.shape[0]))
    return st


def _ints_to_bytes(N: np.ndarray) -> tuple[np.ndarray, int]:
    flat = [int(v) for v in N.ravel()]
    nbytes = max(1, max((abs(v).bit_length() for v in flat), default=1) // 8 + 1)
    buf = b"".join(v.to_bytes(nbytes, "little", signed=True) for v in flat)
    return np.frombuffer(buf, dtype=np.uint8).copy(), nbytes


def _ints_from_bytes(raw: np.ndarray, nbytes: int, shape) -> np.ndarray:
    b = raw.tobytes()
    flat = [int.from_bytes(b[i:i + nbytes], "little", signed=True) for i in range(0, len(b), nbytes)]
    return np.array(flat, dtype=object).reshape(shape)


def _save_states(path, states: list[dict], atomic_write) -> None:
    arrays, meta = {}, []
    for n, st in enumerate(states):
        xb, xn = _ints_to_bytes(st["X"])
        cb, cn = _ints_to_bytes(st["c"])
        arrays[f"X{n}"], arrays[f"c{n}"] = xb, cb
        arrays[f"eta{n}"], arrays[f"eps{n}"], arrays[f"grp{n}"] = st["eta"], st["eps"], st["grp"]
        meta.append({"s": st["s"], "qc": st["qc"], "target_bits": st["target_bits"], "rho": st["rho"],
                     "xn": xn, "cn": cn, "shape": list(st["X"].shape)})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def _states_from_bytes(raw: bytes) -> list[dict]:
    with np.load(io.BytesIO(raw)) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        out = []
        for n, m in enumerate(meta):
            shape = tuple(m["shape"])
            out.append({"X": _ints_from_bytes(z[f"X{n}"], m["xn"], shape),
                        "c": _ints_from_bytes(z[f"c{n}"], m["cn"], (shape[1],)),
                        "s": m["s"], "qc": m["qc"], "target_bits": m["target_bits"], "rho": m["rho"],
                        "eta": z[f"eta{n}"].copy(), "eps": z[f"eps{n}"].copy(),
                        "grp": z[f"grp{n}"].copy()})
    return out


def _choose_bits(lam: np.ndarray, dps: int | None) -> int:
    if dps is None:
        scale = float(np.abs(lam).max()) or 1.0
        g = max(float(np.diff(lam).min()) / scale, 1e-17) if lam.size > 1 else 1.0
        dps = 30 + max(0, math.ceil(-math.log10(g)))
    return math.ceil(dps * math.log2(10)) + 16


MAX_DPS = 400  # the precision the condition loop may raise the target to (decimal digits)


def _lmin_spread(st: dict) -> float:
    """η/|λ| of the eigenvalue nearest 0, as an mpf (inf when η is not finite or λ = 0)."""
    c, qc, eta = st["c"], st["qc"], st["eta"]
    i = int(np.argmin([abs(int(v)) for v in c]))
    if not np.isfinite(eta[i]) or c[i] == 0:
        return mpmath.inf
    with mpmath.workprec(64):
        return mpmath.mpf(float(eta[i])) / abs(mpmath.mpf((int(c[i]), -qc)))


def _more_dps(st: dict) -> int | None:
    """Target precision (decimal digits) that resolves the smallest |λ| to ~25 digits — the
    refinement's error is absolute, ~2^-bits ‖A‖ — or None when it is already resolved (or the
    enclosure is not finite: the certificate failed for another reason)."""
    c, qc, eta = st["c"], st["qc"], st["eta"]
    i = int(np.argmin([abs(int(v)) for v in c]))
    if not np.isfinite(eta[i]):
        return None
    with mpmath.workprec(64):
        lmin = abs(mpmath.mpf((int(c[i]), -qc)))
        e = mpmath.mpf(float(eta[i]))
        if e <= lmin * mpmath.mpf(10) ** -25:
            return None
        cur = (st["target_bits"] - 16) / math.log2(10)
        new = 2 * cur if e >= lmin else cur + float(mpmath.log10(e / lmin)) + 27
    new = math.ceil(new)
    return new if new <= MAX_DPS else None


def eig_states(A: np.ndarray, *, dps: int | None = None, cache: bool = True) -> list[dict]:
    """Refined + certified eigendecomposition of A (cached): [final state] or [final, previous].

    A cache entry that is missing, fails its checksum or cannot be parsed is recomputed (``_cache``)."""
    path = _cache.path_for(f"{_cache.eig_key(A, 'flint', dps)}.npz", cache)
    if path is not None:
        states = _cache.read(path, _states_from_bytes)
        if states is not None:
            return states
    amax = float(np.abs(A).max())
    k = -math.frexp(amax)[1] if amax > 0 else 0  # A' = 2^k A has max|A'| in [0.5, 1): exact
    A2 = np.ldexp(A, k)
    lam0, Q0 = np.linalg.eigh(A2)
    bits = _choose_bits(lam0, dps)
    last, prev = _refine(A2, bits, lam0, Q0)
    st = _state_from_pass(last, bits, certify=True, k=k)
    states = [st]
    rigorous = np.isfinite(st["eps"]).all()
    if not rigorous and prev is not None:
        states.append(_state_from_pass(prev, bits, certify=False, k=k))
    if path is not None:
        _save_states(path, states, _cache.write)
    return states


def engine(A: np.ndarray, loss, *, cache: bool, dps: int | None, input_dtype=np.float64):
    """(float64 gradient, thunk → mpf entries row-major, float64 eigenvalues, digits); see module doc."""
    states = eig_states(A, dps=dps, cache=cache)
    if dps is None and loss.kind == "spectral":
        # f depends on λ itself: λ_min must be resolved relatively, beyond what float64 sees
        spread = _lmin_spread(states[0])
        for _ in range(6):
            more = _more_dps(states[0])
            if more is None:
                break
            new = eig_states(A, dps=more, cache=cache)
            if not _lmin_spread(new[0]) < spread / 10:
                break  # no progress (the refinement does not resolve this spectrum): keep the last
            states, spread = new, _lmin_spread(new[0])
    st = states[0]
    lam64 = _to_float(st["c"], st["qc"])
    loss.check(lam64, dtype=input_dtype)  # a float32 input resolves λ only to float32 level
    G = np.asarray(loss.weight, dtype=np.float64)
    gnum, gscale, bound = _gradient(st, loss, G, want_bound=True)
    if bound is not None:
        digits = _digits_from(bound, gnum, gscale)
    elif len(states) > 1:
        gprev, sprev, _ = _gradient(states[1], loss, G, want_bound=False)
        digits = _agreement_exact(gnum, gscale, gprev, sprev)
    else:
        digits = 0.0
    def high_precision():
        with mpmath.workprec(max(64, max(abs(int(v)).bit_length() for v in gnum.ravel()) + 8)):
            return [mpmath.mpf((int(v), -gscale)) for v in gnum.ravel()]

    return _to_float(gnum, gscale), high_precision, lam64, digits


def _agreement_exact(g1, s1, g2, s2) -> float:
    """−log10(max|g1 − g2| / max|g1|) computed exactly from the integer numerators."""
    s = max(s1, s2)
    a = _shift(g1, s - s1)
    b = _shift(g2, s - s2)
    diff = int(np.abs(a - b).max())
    top = int(np.abs(a).max())
    if top == 0:
        return MAX_DIGITS if diff == 0 else 0.0
    if diff == 0:
        return MAX_DIGITS
    return float(min(MAX_DIGITS, max(0.0, math.log10(top) - math.log10(diff))))
