"""Exact products of integer matrices through float64 BLAS (multi-modular; the flint engine's products).

The flint engine (``stabkit.reference._flint``) works in exact integer fixed point; its cost is a few dozen
products of d × d matrices whose entries have 60–550 bits.  ``flint.fmpz_mat`` multiplies them
multi-modularly with ~60-bit primes in integer arithmetic, and every product pays a round trip
through Python integers.  Here the same multi-modular product runs on ``numpy`` float64 ``@``
(BLAS dgemm: ~0.3 s at d = 2048 on 2 cores, against ~22 s for one fmpz_mat product of 171-bit
entries), exactly:

* primes p = 2h + 1 − 2j with k·(h + 3)² < 2^53 − 2^27 (k the inner dimension; p ≈ 2^22 at
  k = 2048) and p < 2^26.  Residues are kept at |r| ≤ p/2 + 2 (``_mod``), so every partial sum of
  a dgemm over k terms is an integer of magnitude < 2^53 − 2^27: exact in float64 whatever the
  order of summation or the use of FMA.  ``_mod`` is exact: q = rint(r·(1/p)) is an integer with
  |qp| ≤ |r| + p < 2^53, so qp and r − qp are exact.
* residues of an input come from its two's complement 16-bit limbs, x = Σ_j ℓ_j 2^{16j} − neg·2^{16L}:
  x ≡ Σ_j ℓ_j (2^{16j} mod p) − neg (2^{16L} mod p), one (primes × L) · (L × entries) dgemm
  (terms < 2^16 · 2^26, sums < 2^53 for L < 2^11).
* a chain P₁P₂(P₃) is reduced mod p after every factor, so XᵀAX needs no intermediate
  reconstruction.
* reconstruction (CRT, no Garner loop): with M = Πp_i, M_i = M/p_i and w_i ≡ r_i (M_i⁻¹ mod p_i)
  (mod p_i), |w_i| ≤ p_i/2 + 2, S = Σ_i w_i M_i ≡ x (mod M) and S/M = Σ_i w_i/p_i.  The primes are
  chosen so that M > 8 B, B ≥ |x| the a-priori bound Π_f max|P_f| · Π inner dimensions; then
  S/M = t + x/M with |x/M| < 1/8, and t = round(Σ_i w_i/p_i) is exact (the float sum's error is
  < n²·2^-52 ≪ 3/8).  x = Σ_i w_i M_i − t M is formed in limb columns (base 2^24, or 2^16 where
  the column sums n·(p/2 + 3)·2^24 could reach 2^52) by one more exact dgemm, carried in int64 to
  two's complement limbs, and read into Python integers (``int.from_bytes``).

The result is the exact integer product, as a numpy object array of Python ints (the engine's
representation) — or int64 when asked and it fits.  Nothing here is approximate: the integers
are those ``flint.fmpz_mat`` multiplication returns (tests/test_reference_flint.py checks it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_LB = 16  # limb bits
_LIM = (1 << 53) - (1 << 27)  # dgemm sums stay below this: r − qp in ``_mod`` then stays < 2^53
_LMASK = (1 << _LB) - 1
_ROWS = 1 << 18  # entries per chunk in the limb → residue conversion (memory)
_CHUNK = 1 << 16  # entries per chunk in the reconstruction (memory)
_GROUP = 8  # primes whose residues are formed together


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7, 11, 13, 17):  # deterministic for n < 3.4e14
        if a % n == 0:
            continue
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@lru_cache(maxsize=None)
def _prime_list(k: int, count: int) -> tuple[int, ...]:
    """``count`` primes p = 2h + 1 − 2j, descending, with k·(h + 3)² < 2^53 − 2^27 and p < 2^26 (so
    that r·r' < 2^52 for residues |r| ≤ p/2 + 2 and multipliers |r'| < p)."""
    # residues are reduced only to |r| ≤ p/2 + 2 = h + 2.5 (``_mod``): bound with h + 3
    h = min(math.isqrt(((1 << 53) - 1) // max(k, 1)), (1 << 25) - 1)
    while k * (h + 3) ** 2 >= _LIM:
        h -= 1
    p = 2 * h + 1
    out = []
    while len(out) < count:
        if _is_prime(p):
            out.append(p)
        p -= 2
    return tuple(out)


def _primes_for(bits: int, k: int) -> tuple[int, ...]:
    """The fewest primes of ``_prime_list(k, ·)`` whose product exceeds 2^(bits + 3)."""
    count = 64
    while True:
        ps, acc = [], 0.0
        for p in _prime_list(k, count):
            ps.append(p)
            acc += math.log2(p)
            if acc > bits + 3.5:  # 0.5 bit of slack for the float log sum
                return tuple(ps)
        count *= 2


class IntMat:
    """An integer matrix in two's complement 16-bit limbs; its residues are formed on demand.

    ``IntMat(N)`` from an int64 array or an object array of Python ints; ``.T`` is the transpose
    (shares limbs and residues); ``.bits`` ≥ log2 max|N|."""

    def __init__(self, N=None, *, _src=None, _transposed=False):
        if _src is not None:
            self.src, self.transposed = _src, _transposed
            return
        self.src, self.transposed = self, False
        N = np.asarray(N)
        self.shape0 = N.shape
        self._res = (None, None)  # (primes, int32 residue table): the last one formed
        if N.dtype != object:
            N = N.astype(np.int64)
            top = int(np.abs(N).max()) if N.size else 0
            self.bits = max(top.bit_length(), 1)
            flat = np.ascontiguousarray(N.ravel())
            self.limbs = flat.view("<u2").reshape(-1, 4)
            self.neg = flat < 0
            return
        flat = N.ravel().tolist()
        top = max(max(flat), -min(flat)) if flat else 0
        self.bits = max(int(top).bit_length(), 1)
        nl = (self.bits + 1 + _LB - 1) // _LB  # room for the sign bit
        w = 2 * nl
        buf = b"".join([v.to_bytes(w, "little", signed=True) for v in map(int, flat)])
        self.limbs = np.frombuffer(buf, dtype="<u2").reshape(-1, nl)
        self.neg = self.limbs[:, -1] >= 0x8000

    @property
    def T(self) -> "IntMat":
        return IntMat(_src=self.src, _transposed=not self.transposed)

    @property
    def bits(self) -> int:
        return self.src.__dict__["bits"] if self.src is not self else self.__dict__["bits"]

    @bits.setter
    def bits(self, v):
        self.__dict__["bits"] = v

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.src.shape0
        return (c, r) if self.transposed else (r, c)

    def _table(self, primes: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Residues |r| ≤ p/2 + 2, int32, (primes × entries), of the source matrix (cached while
        that group of primes is in use: ``release`` frees it)."""
        src = self.src
        if src._res[0] == primes:
            return src._res[1]
        limbs, neg = src.limbs, src.neg
        nl = limbs.shape[1]
        ps = np.array(primes, dtype=np.float64)
        C = np.array([[pow(2, _LB * j, p) for p in primes] for j in range(nl)], dtype=np.float64)
        top = np.array([pow(2, _LB * nl, p) for p in primes], dtype=np.float64)
        n = limbs.shape[0]
        R = out[:len(primes)] if out is not None else np.empty((len(primes), n), dtype=np.int32)
        for a in range(0, n, _ROWS):
            b = min(n, a + _ROWS)
            r = C.T @ limbs[a:b].T.astype(np.float64)  # exact: terms < 2^42, nl < 2^11 of them
            r -= top[:, None] * neg[None, a:b]
            R[:, a:b] = _mod(r, ps[:, None])
        src._res = (primes, R)
        return R

    def take_cols(self, order) -> "IntMat":
        """The matrix with its columns permuted (source orientation only)."""
        if self.transposed:
            raise ValueError("take_cols of a transposed view")
        r, c = self.shape0
        out = IntMat.__new__(IntMat)
        out.src, out.transposed, out.shape0, out._res = out, False, (r, c), (None, None)
        out.bits = self.bits
        nl = self.limbs.shape[1]
        out.limbs = np.ascontiguousarray(self.limbs.reshape(r, c, nl)[:, order, :]).reshape(r * c, nl)
        out.neg = np.ascontiguousarray(self.neg.reshape(r, c)[:, order]).ravel()
        return out

    def release(self) -> None:
        self.src._res = (None, None)

    def residue(self, primes: tuple[int, ...], i: int, buf: np.ndarray | None = None,
                table: np.ndarray | None = None) -> np.ndarray:
        """The residues mod primes[i] as a float64 matrix in this orientation (written into
        ``buf``, shaped as the source, when given: d × d temporaries at d = 2048 exceed glibc's
        mmap threshold, and fresh pages for each prime cost more system time than the copy)."""
        t = self._table(primes, table)[i].reshape(self.src.shape0)
        if buf is None:
            buf = np.empty(t.shape, dtype=np.float64)
        np.copyto(buf, t)
        return buf.T if self.transposed else buf


def _mod(r: np.ndarray, p, q: np.ndarray | None = None) -> np.ndarray:
    """A residue of r mod p with |·| ≤ p/2 + 2, for exact integers |r| < 2^53 in float64 (in
    place).  q = rint(r·(1/p)): the computed quotient is within 2/p of r/p (two roundings,
    |r/p| < 2^53/p), so q is the nearest integer to r/p unless r/p lies within 2/p of a half-integer,
    and in both cases |r − qp| ≤ p/2 + 2; qp and r − qp are exact when |r| + p < 2^53."""
    p = np.asarray(p, dtype=np.float64)
    q = np.multiply(r, 1.0 / p, out=q)
    np.rint(q, out=q)
    q *= p
    r -= q
    return r


def _as_intmat(M) -> IntMat:
    return M if isinstance(M, IntMat) else IntMat(M)


def matmul(*factors, out: str = "object", sym: bool = False, keep: list | None = None):
    """The exact product of a chain of 2 or 3 integer matrices (int64 / object arrays or ``IntMat``).

    ``out="object"``: numpy object array of Python ints; ``out="int64"``: int64 array (raises
    OverflowError when an entry does not fit).  ``sym=True``: the caller guarantees that the
    product is symmetric (XᵀX, XᵀAX with A = Aᵀ, …); only its upper triangle is reconstructed and
    mirrored (half the reconstruction and conversion work).  ``keep`` (a list, 3 factors): a
    function is appended to it that returns the exact P₁P₂ (object array) from the residues the
    chain formed anyway — no further dgemm (the flint engine's AX = (XᵀA)ᵀ for its certificate)."""
    mats = [_as_intmat(M) for M in factors]
    if not 2 <= len(mats) <= 3:
        raise ValueError("matmul takes 2 or 3 factors")
    for A, B in zip(mats, mats[1:]):
        if A.shape[1] != B.shape[0]:
            raise ValueError(f"shapes {A.shape} and {B.shape} do not chain")
    inner = [M.shape[0] for M in mats[1:]]
    k = max(inner)
    rows, cols = mats[0].shape[0], mats[-1].shape[1]
    if k == 0:
        Z = np.zeros((rows, cols), dtype=np.int64)
        return Z if out == "int64" else Z.astype(object)
    bits = sum(M.bits for M in mats) + sum(math.ceil(math.log2(kk)) for kk in inner)
    primes = _primes_for(bits, k)
    if sym and rows != cols:
        raise ValueError("sym=True needs a square product")
    iu = np.triu_indices(rows) if sym else None
    sel = iu[0] * cols + iu[1] if sym else slice(None)
    W = np.empty((len(primes), len(iu[0]) if sym else rows * cols), dtype=np.int32)  # |r| ≤ p/2 + 2 < 2^26
    # buffers reused for every prime (see IntMat.residue); factors that share a source (Xᵀ … X)
    # share one residue buffer
    rbuf, tbuf = {}, {}
    for M in mats:
        rbuf.setdefault(id(M.src), np.empty(M.src.shape0, dtype=np.float64))
        tbuf.setdefault(id(M.src), np.empty((min(_GROUP, len(primes)), M.src.limbs.shape[0]), dtype=np.int32))
    outs = [np.empty((rows, M.shape[1]), dtype=np.float64) for M in mats[1:]]
    qbuf = [np.empty_like(o) for o in outs]
    if keep is not None:
        if len(mats) != 3:
            raise ValueError("keep needs 3 factors")
        # P₁P₂'s primes: a prefix of the chain's (same table, fewer bits)
        kp = _primes_for(mats[0].bits + mats[1].bits + math.ceil(math.log2(inner[0])), k)
        K2 = np.empty((len(kp), rows * mats[1].shape[1]), dtype=np.int32)
    for g in range(0, len(primes), _GROUP):
        grp = primes[g:g + _GROUP]
        for i, p in enumerate(grp):
            base = {}
            for M in mats:
                key = id(M.src)
                if key not in base:
                    base[key] = M.src.residue(grp, i, rbuf[key], tbuf[key])  # source orientation
            res = [base[id(M.src)].T if M.transposed else base[id(M.src)] for M in mats]
            acc = res[0]
            for f in range(1, len(mats)):
                np.matmul(acc, res[f], out=outs[f - 1])
                acc = _mod(outs[f - 1], p, qbuf[f - 1])  # exact: see the module doc
                if f == 1 and keep is not None and g + i < len(kp):
                    K2[g + i] = acc.ravel()
            W[g + i] = acc.ravel()[sel]
        for M in mats:
            M.release()
    if keep is not None:
        shape2 = (rows, mats[1].shape[1])
        keep.append(lambda: _reconstruct(K2, kp, shape2, "object"))
    if not sym:
        return _reconstruct(W, primes, (rows, cols), out)
    vals = _reconstruct(W, primes, (W.shape[1],), out)
    res = np.empty((rows, cols), dtype=vals.dtype)
    res[iu] = vals
    res[iu[1], iu[0]] = vals
    return res


@lru_cache(maxsize=64)
def _crt_tables(primes: tuple[int, ...]):
    """inv_i = (M/p_i)⁻¹ mod p_i, the limbs of M/p_i and of M (base 2^lb), lb and the limb count.

    lb = 24 where n·(max p/2 + 3)·2^24 < 2^52 (every limb column sum stays exact), else 16; 16
    also when M < 2^61, so that the result can be read as int64."""
    M = math.prod(primes)
    n, pmax = len(primes), max(primes)
    lb = 24 if n * (pmax // 2 + 3) * (1 << 24) < (1 << 52) and M.bit_length() > 61 else 16
    mask = (1 << lb) - 1
    nl = (M.bit_length() + lb - 1) // lb
    Mi = [M // p for p in primes]
    inv = np.array([pow(mi % p, -1, p) for mi, p in zip(Mi, primes)], dtype=np.float64)
    lim = np.array([[(mi >> (lb * j)) & mask for j in range(nl)] for mi in Mi], dtype=np.float64)
    mu = np.array([(M >> (lb * j)) & mask for j in range(nl)], dtype=np.float64)
    return inv, lim, mu, lb, nl


def _reconstruct(W: np.ndarray, primes, shape, out: str):
    """Residues (row i mod primes[i], one column per entry) → the integers, by the CRT described
    in the module doc; chunk by chunk (memory)."""
    inv, lim, mu, lb, nl = _crt_tables(tuple(primes))
    ps = np.array(primes, dtype=np.float64)[:, None]
    n = W.shape[1]
    small = lb == 16 and nl <= 4  # |x| < 2^61: read as int64
    if out == "int64" and not small:
        raise OverflowError("product entries exceed int64")
    res = np.empty(n, dtype=np.int64 if small else object)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        w = _mod(W[:, a:b] * inv[:, None], ps)  # |r·inv| < 2^52: exact; any representative will do
        t = np.rint((w / ps).sum(axis=0))
        cols = lim.T @ w  # exact: see _crt_tables
        cols -= mu[:, None] * t[None, :]
        res[a:b] = _carry_to_ints(cols.astype(np.int64), lb, small)
    res = res.reshape(shape)
    return res if out == "int64" or not small else res.astype(object)


def _carry_to_ints(cols: np.ndarray, lb: int, small: bool):
    """Σ_j cols[j] 2^(lb j) (int64 columns, |x| < 2^(lb nl − 3)) as int64 or a list of Python ints."""
    nl, m = cols.shape
    mask = (1 << lb) - 1
    nl_out = 4 if small else nl
    limbs = np.empty((m, nl_out), dtype=np.uint16 if lb == 16 else np.uint32)
    carry = np.zeros(m, dtype=np.int64)
    for j in range(nl):
        v = cols[j]
        v += carry
        limbs[:, j] = v & mask
        carry = v >> lb
    # the final carry is the sign (0 or −1); the top bit of lb·nl_out bits is the sign bit
    limbs[:, nl:] = (carry & mask)[:, None]
    if small:
        return limbs.view("<i8").ravel()
    if lb == 16:
        by = limbs.view(np.uint8).reshape(m, -1)
    else:
        by = np.ascontiguousarray(limbs.view(np.uint8).reshape(m, nl_out, 4)[:, :, :3]).reshape(m, -1)
    w = by.shape[1]
    by[:, -1] ^= 0x80  # two's complement + 2^(8w − 1): unsigned (faster to read)
    buf = by.tobytes()
    fb, off = int.from_bytes, 1 << (8 * w - 1)
    return [fb(buf[i:i + w], "little") - off for i in range(0, len(buf), w)]
