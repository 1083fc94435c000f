"""Certified high-precision ground truth for ∂L/∂A of the probe losses.

The truth is the exact gradient of the loss at the input matrix *exactly as given* (float32 input
is widened exactly to float64), evaluated by the Daleckii–Krein formula

    ∂L/∂A = U (D ∘ (Uᵀ G_sym U)) Uᵀ

(Daleckii & Krein 1965; see also Higham, "Functions of Matrices", SIAM 2008, Thm. 3.11) from a
high-precision eigendecomposition A = U diag(λ) Uᵀ.  Two engines compute that decomposition:

* ``mpmath`` — ``mpmath.eigsy`` (Jacobi/QL in arbitrary precision) at two precisions P and ≈1.5P,
  the gradient in mpmath arithmetic.  ``digits`` is the number of significant digits on which the
  two results agree, capped by what a backward-stable solver delivers at P (P − 3 − gap digits −
  condition digits), so two precisions making the same error cannot certify it.  This is an
  *agreement estimate*, not a proof.  Independent of the flint
  engine and of the float64 code paths; fine up to d ≈ 64.
* ``flint`` — float64 ``numpy.linalg.eigh`` refined by the Ogita–Aishima iteration (Ogita &
  Aishima, "Iterative refinement for symmetric eigenvalue decomposition", JJIAM 35, 2018; part II
  for clustered eigenvalues, JJIAM 36, 2019) with all matrix products done *exactly* in integer
  fixed point (python-flint ``fmpz_mat``).  From the exact products the final X is certified
  (see ``stabkit.reference._flint``): Weyl + Ostrowski bounds on every eigenvalue, a Davis–Kahan sin θ
  bound on every eigenvector whose eigenvalue enclosure is isolated, a subspace Davis–Kahan
  sin Θ bound on the invariant subspace of every group of overlapping enclosures (exactly
  repeated eigenvalues) that is isolated as a whole, and a perturbation bound that carries these
  through the Daleckii–Krein formula (inside a group, D is replaced by its value at the group's
  centre, with the mean-value bound max|f''|·radius on the difference).  When all of these exist
  (loss with a known f''/f''' table — zca, sqrt, log — or weighted with equal weights inside every
  group), ``digits`` is that rigorous bound (bound arithmetic in float64 with a safety factor
  covering its rounding).  Otherwise (unknown spectral f, a weighted loss whose weights differ
  inside a group, a group not isolated) ``digits`` falls back to the agreement between the
  gradients of the last two refinement iterates (precision ≈ P/2 and P), an estimate only.

Precision is chosen from the float64 spectrum: P = 30 + ⌈−log10(min relative gap)⌉ digits, so a
spectrum that is degenerate before rounding (gaps ≈ 1e-16 relative) still gets ~30 digits.  For
spectral losses (f depends on λ itself) the mpmath engine adds ⌈log10(‖A‖/λ_min)⌉ read from its
own high-precision eigenvalues, raising P until it covers the condition (up to ``MAX_DPS``): the
eigensolver's absolute error ~10^-P ‖A‖ must be small against λ_min, which float64 cannot see
beyond a condition of ~1e16.  The flint engine does the same with its certified enclosure of
λ_min (``_flint.engine``).
Divided differences of near-equal eigenvalues are evaluated without cancellation (extra working
precision, or the mean-value/midpoint expansion f'((λ_i+λ_j)/2) when the pair is closer than the
square root of the working precision).

Results are cached on disk (``$STABKIT_CACHE`` or ``~/.cache/stabkit/reference``): the
eigendecomposition per input (sha256 of the float64 bytes and shape) and engine, the gradient per
(input, engine, loss name, sha of weight, sha of w).  Every key carries ``_CACHE_VERSION`` and the
engine's algorithm version (``ENGINE_VERSIONS``), so results of an older algorithm are not reused.
Files are written atomically, each with a sha256 checksum of its key and contents: an entry that
fails it (edited, truncated, corrupted) or cannot be read is recomputed with a
``ReferenceCacheWarning`` naming the file, and a read-only or full cache directory only warns —
a bad cache never fails a computation.

The float64 gradient is certified only if it is representable: a gradient that overflows float64
or underflows to zero gets 0 digits (``Truth.note`` says why), and one near the underflow
threshold at most the digits the subnormal spacing leaves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mpmath
import numpy as np

from ..validation import check_symmetric

MIN_DIGITS = 12
MAX_DIGITS = 60.0
AUTO_MPMATH_MAX_D = 24
MAX_DPS = 2000  # the mpmath engine's working precision never exceeds this (decimal digits)
ENGINES = ("auto", "mpmath", "flint")
_CACHE_VERSION = "v3"  # v3: checksummed entries
# Algorithm version of each engine, part of every cache key: bump when an engine's results change,
# so that truths computed by an older algorithm are never reused.
# flint 2: exact cluster test in the refinement, repeated Rayleigh–Ritz on sub-clusters, and the
#          group (invariant-subspace) certificate for overlapping eigenvalue enclosures.
# mpmath 2: precision covers the condition; digits capped by it.
# flint 3: pairs outside the Newton region (large correction) are refined as one cluster and
#          resolved by Rayleigh–Ritz (exactly repeated eigenvalues split by rounding cycled).
ENGINE_VERSIONS = {"mpmath": "2", "flint": "3"}


@dataclass(frozen=True)
class Truth:
    grad: np.ndarray  # float64 (d, d): ∂L/∂A rounded from the high-precision result
    eigenvalues: np.ndarray  # float64: exact eigenvalues of the input, rounded, ascending
    digits: float  # certified significant digits of grad (relative to max|grad|), capped at 60
    engine: str  # "mpmath" or "flint"
    seconds: float  # wall time of the (uncached) computation
    note: str = ""  # why digits is low or 0 where that is not the precision (overflow, underflow…)

    @property
    def certified(self) -> bool:
        return self.digits >= MIN_DIGITS


# ----------------------------------------------------------------------------------------------
# input handling, precision choice


def _as_exact_float64(A) -> np.ndarray:
    """Validate A and return it as float64, symmetrized exactly (float32 widens exactly)."""
    a = np.asarray(A)
    check_symmetric(a)
    if a.ndim != 2:
        raise ValueError(f"matrix must be a single d×d matrix, got shape {a.shape}")
    a = a.astype(np.float64)
    return (a + a.T) / 2  # exact for float32 input; for float64 the same as check_symmetric


def _gap_digits(A: np.ndarray) -> int:
    """⌈−log10(min relative gap)⌉ of the float64 spectrum (gaps below 1e-17 count as 1e-17)."""
    lam = np.linalg.eigvalsh(A)
    scale = float(np.abs(lam).max()) or 1.0
    gaps = np.diff(lam) / scale if lam.size > 1 else np.array([1.0])
    g = max(float(gaps.min()), 1e-17)
    return max(0, math.ceil(-math.log10(g)))


def _choose_digits(A: np.ndarray) -> int:
    """P = 30 + ⌈−log10(min relative gap)⌉ from a float64 estimate of the spectrum."""
    return 30 + _gap_digits(A)


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


def _agreement_digits(hi: list, lo: list) -> float:
    """−log10(max|hi − lo| / max|hi|), capped at MAX_DIGITS."""
    scale = max(abs(x) for x in hi)
    diff = max(abs(x - y) for x, y in zip(hi, lo))
    if scale == 0:
        return MAX_DIGITS if diff == 0 else 0.0
    if diff == 0:
        return MAX_DIGITS
    return float(min(MAX_DIGITS, max(0.0, -mpmath.log10(diff / scale))))


# ----------------------------------------------------------------------------------------------
# mpmath engine


def eigh_exact(A: np.ndarray, dps: int) -> tuple[mpmath.matrix, mpmath.matrix]:
    """(λ ascending as a column, U) of A exactly as given, computed by mpmath.eigsy at ``dps``."""
    A = _as_exact_float64(A)
    d = A.shape[0]
    with mpmath.workdps(dps):
        M = mpmath.matrix(A.tolist())  # float → mpf is exact
        E, Q = mpmath.eigsy(M)
        order = sorted(range(d), key=lambda i: E[i])
        lam = mpmath.matrix([E[i] for i in order])
        U = mpmath.matrix(d, d)
        for c, i in enumerate(order):
            for r in range(d):
                U[r, c] = Q[r, i]
    return lam, U


def _divided_differences_mp(lam: list, loss, dps: int) -> list[list]:
    """D_ij of the Daleckii–Krein formula at ``dps`` digits, without catastrophic cancellation."""
    d = len(lam)
    D = [[mpmath.mpf(0)] * d for _ in range(d)]
    with mpmath.workdps(dps):
        if loss.kind == "weighted":
            w = [mpmath.mpf(float(x)) for x in loss.w]
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


def _gradient_mp(lam: list, U: mpmath.matrix, loss, dps: int) -> list:
    """Daleckii–Krein gradient in mpmath at ``dps``; returns the d×d entries row-major."""
    d = len(lam)
    with mpmath.workdps(dps):
        G = loss.weight
        Gs = mpmath.matrix([[(mpmath.mpf(float(G[i, j])) + mpmath.mpf(float(G[j, i]))) / 2
                             for j in range(d)] for i in range(d)])
        K = U.T * Gs * U
        D = _divided_differences_mp(lam, loss, dps)
        M = mpmath.matrix(d, d)
        for i in range(d):
            for j in range(d):
                M[i, j] = D[i][j] * K[i, j]
        g = U * M * U.T
        return [g[i, j] for i in range(d) for j in range(d)]


def _eig_mp_cached(A: np.ndarray, dps_pair: tuple[int, int], cache: bool):
    path = _cache_path(f"{_eig_key(A, 'mpmath', dps_pair)}.json", cache)
    if path is not None:
        out = _cache_read(path, lambda raw: _eig_mp_parse(raw, dps_pair))
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
        _cache_write(path, json.dumps(data).encode())
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


def _mp_engine(A: np.ndarray, loss, cache: bool, dps: int | None, input_dtype=np.float64):
    """Gradient at precisions P and ≈1.5P.  P = 30 + gap digits + condition digits (spectral losses):
    the condition is read from the high-precision eigenvalues, and P is raised (at least doubled
    while λ_min is below the eigensolver's noise floor) until it covers it, up to MAX_DPS.

    ``digits`` = min(agreement of the two gradients, P − 3 − gap digits − condition digits): the
    second term is the accuracy a backward-stable solver can deliver at P, so that two precisions
    making the same error (e.g. both treating an off-diagonal of 1e-61 against 1 as negligible)
    cannot certify a wrong number."""
    d = A.shape[0]
    gap_dig = _gap_digits(A)
    with mpmath.workdps(40):
        normA = mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(x)) ** 2 for x in A.ravel()))
    mag = np.abs(np.linalg.eigvalsh(A))
    # the float64 condition (seen up to ~1e16), for every loss so that all share one cached solve
    cond64 = math.ceil(math.log10(mag.max() / max(mag.min(), 1e-16 * mag.max()))) if mag.max() else 0
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
    g1 = _gradient_mp(lam1, U1, loss, P)
    g2 = _gradient_mp(lam2, U2, loss, P2)
    digits = min(_agreement_digits(g2, g1), max(0.0, P - 3 - gap_dig - cond_dig))
    note = ""
    if dps is None and P < need:
        note = (f"the condition needs {need} working digits, more than MAX_DPS = {MAX_DPS}"
                if math.isfinite(need) else "a zero eigenvalue: the condition is infinite")
    grad = np.array([float(x) for x in g2], dtype=np.float64).reshape(d, d)  # correctly rounded
    return grad, lambda: g2, lam64, digits, note


# ----------------------------------------------------------------------------------------------
# public API


def ground_truth(A, loss, *, engine: str = "auto", cache: bool = True, _dps: int | None = None) -> Truth:
    """Certified ∂L/∂A of ``loss`` at A (exactly as given), rounded to float64.

    ``engine``: "mpmath", "flint" or "auto" (mpmath for d ≤ 24).  Raises ValueError for invalid
    input or where the loss is undefined (``loss.check`` on the exact eigenvalues).  ``digits``
    tells how many significant digits are certified; check ``Truth.certified`` before use.  A
    gradient that overflows or underflows float64 is never certified (``Truth.note`` says why).
    A cache entry that fails its checksum or cannot be read is recomputed, and a cache directory
    that cannot be written is skipped, each with a ``ReferenceCacheWarning`` naming the file.
    ``_dps`` (private) forces the working precision in decimal digits, for tests.
    """
    input_dtype = np.asarray(A).dtype
    A = _as_exact_float64(A)
    d = A.shape[0]
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "mpmath" if d <= AUTO_MPMATH_MAX_D else "flint"
    gpath = _cache_path(f"{_grad_key(A, engine, loss, _dps)}.npz", cache)
    if gpath is not None:
        truth = _cache_read(gpath, _truth_from_bytes)
        if truth is not None:
            loss.check(truth.eigenvalues, dtype=input_dtype)
            return truth
    start = time.perf_counter()
    grad, _, lam64, digits, note = _engine(A, loss, engine, gpath is not None, _dps, input_dtype)
    truth = Truth(grad, lam64, float(digits), engine, time.perf_counter() - start, note)
    if gpath is not None:
        _cache_write(gpath, _truth_to_bytes(truth))
    return truth


def _truth_to_bytes(t: Truth) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, grad=t.grad, eigenvalues=t.eigenvalues, digits=t.digits, engine=t.engine,
             seconds=t.seconds, note=t.note)
    return buf.getvalue()


def _truth_from_bytes(raw: bytes) -> Truth:
    import io
    with np.load(io.BytesIO(raw)) as z:
        t = Truth(z["grad"].copy(), z["eigenvalues"].copy(), float(z["digits"]), str(z["engine"]),
                  float(z["seconds"]), str(z["note"]))
    d = t.eigenvalues.shape[0]
    if t.grad.shape != (d, d) or t.engine not in ENGINES:
        raise ValueError(f"entry holds a {t.grad.shape} gradient for {d} eigenvalues, engine {t.engine!r}")
    return t


def _hp_gradient(A, loss, engine: str, cache: bool = False, _dps: int | None = None):
    """(gradient entries row-major as high-precision mpf numbers, float64 eigenvalues, digits)."""
    _, hp, lam64, digits, _ = _engine(_as_exact_float64(A), loss, engine, cache, _dps, np.asarray(A).dtype)
    return hp(), lam64, digits


def _engine(A, loss, engine: str, cache: bool, _dps: int | None, input_dtype=np.float64):
    """(float64 gradient, thunk → high-precision entries, float64 eigenvalues, digits, note)."""
    if engine == "mpmath":
        out = _mp_engine(A, loss, cache, _dps, input_dtype)
    elif engine == "flint":
        from . import _flint
        cdir = _cache_path("", cache)
        out = _flint.engine(A, loss, cache=cdir is not None, dps=_dps, cache_dir=cdir,
                                key=lambda dps: _eig_key(A, "flint", dps), atomic_write=_cache_write,
                                input_dtype=input_dtype, cache_read=_cache_read) + ("",)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    grad, hp, lam64, digits, note = out
    digits, range_note = _float64_digits(grad, hp, digits)
    return grad, hp, lam64, digits, "; ".join(n for n in (range_note, note) if n)


_TINY = 2.0 ** -1074  # the smallest subnormal: the absolute rounding error of tiny float64 entries


def _float64_digits(grad: np.ndarray, hp, digits: float) -> tuple[float, str]:
    """Digits of the *float64* gradient: 0 if it overflowed (not finite) or underflowed to zero;
    near the underflow threshold, at most what the subnormal spacing 2^-1074 leaves."""
    if not np.isfinite(grad).all():
        with mpmath.workprec(64):
            top = max(abs(x) for x in hp())
        return 0.0, f"∂L/∂A overflows float64 (max |∂L/∂A| = {mpmath.nstr(top, 3)})"
    top64 = float(np.abs(grad).max())
    if top64 == 0:
        with mpmath.workprec(64):
            top = max(abs(x) for x in hp())
        if top == 0:
            return digits, ""
        return 0.0, f"∂L/∂A underflows float64 (max |∂L/∂A| = {mpmath.nstr(top, 3)})"
    if top64 < 1e-290:
        cap = max(0.0, math.log10(top64 / _TINY) - 0.5)
        if cap < digits:
            return cap, f"∂L/∂A near the float64 underflow threshold (max {top64:.3g})"
    return digits, ""


def finite_difference_grad(A, loss, *, dps: int = 60, h: str = "1e-20") -> np.ndarray:
    """∂L/∂A by mpmath central differences of the loss value along (E_ij + E_ji)/2 (tests only).

    Independent of the Daleckii–Krein code: only loss values L = Σ f(λ_i) u_iᵀGu_i (spectral) or
    Σ w_i u_iᵀBu_i (weighted) from ``mpmath.eigsy`` at ``dps`` digits are used.  O(d²) eigsy calls.
    """
    A = _as_exact_float64(A)
    d = A.shape[0]
    out = np.zeros((d, d))
    with mpmath.workdps(dps):
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


# ----------------------------------------------------------------------------------------------
# cache


class ReferenceCacheWarning(UserWarning):
    """A reference cache file was bad (recomputed) or could not be written (not cached)."""


_CACHE_MAGIC = b"stabkit-reference-cache 1 sha256="


def _cache_dir() -> Path:
    p = Path(os.environ.get("STABKIT_CACHE") or Path.home() / ".cache" / "stabkit" / "reference")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _cache_warn(msg: str) -> None:
    warnings.warn(msg, ReferenceCacheWarning, stacklevel=3)


def _cache_path(name: str, cache: bool) -> Path | None:
    """The cache file ``name``, or None when caching is off or the directory cannot be made."""
    if not cache:
        return None
    try:
        return _cache_dir() / name
    except OSError as e:
        _cache_warn(f"reference cache directory unusable ({e}); going on without caching")
        return None


def _checksum(name: str, payload: bytes) -> bytes:
    """sha256 over the file name (the key: input, engine, loss, precision) and the payload."""
    return hashlib.sha256(name.encode() + b"\0" + payload).hexdigest().encode()


def _cache_read(path: Path, parse):
    """parse(payload) of a cache entry, or None when the file is missing; a file that cannot be
    read, fails its checksum or cannot be parsed gives a warning naming it and None (recompute)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        _cache_warn(f"reference cache file {path} cannot be read ({e}); recomputing")
        return None
    try:
        head, sep, payload = raw.partition(b"\n")
        if not sep or not head.startswith(_CACHE_MAGIC):
            raise ValueError("no checksum header (truncated, or not written by stabkit)")
        if head[len(_CACHE_MAGIC):] != _checksum(path.name, payload):
            raise ValueError("checksum mismatch (edited or corrupted)")
        return parse(payload)
    except Exception as e:  # noqa: BLE001 - a bad cache file must never fail the computation
        _cache_warn(f"reference cache file {path} is bad ({type(e).__name__}: {e}); recomputing it")
        return None


def _cache_write(path: Path, payload: bytes) -> None:
    """Write a checksummed entry atomically; a read-only or full directory only warns."""
    path = Path(path)
    try:
        _atomic_write(path, _CACHE_MAGIC + _checksum(path.name, payload) + b"\n" + payload)
    except OSError as e:
        _cache_warn(f"reference cache file {path} cannot be written ({e}); going on without caching it")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _matrix_hash(A: np.ndarray) -> str:
    A = np.ascontiguousarray(A, dtype=np.float64)
    return _sha(repr(A.shape).encode() + A.tobytes())


def _eig_key(A: np.ndarray, engine: str, dps) -> str:
    ver = f"{_CACHE_VERSION}-{engine}{ENGINE_VERSIONS[engine]}"
    return f"eig-{ver}-{_matrix_hash(A)[:32]}-{dps or 'auto'}".replace(" ", "")


def _loss_id(loss) -> str:
    parts = [loss.kind, loss.name, _matrix_hash(np.asarray(loss.weight, dtype=np.float64))]
    if loss.kind == "weighted":
        parts.append(_sha(np.ascontiguousarray(loss.w, dtype=np.float64).tobytes()))
    return _sha("|".join(parts).encode())[:24]


def _grad_key(A: np.ndarray, engine: str, loss, dps) -> str:
    ver = f"{_CACHE_VERSION}-{engine}{ENGINE_VERSIONS[engine]}"
    return f"grad-{ver}-{_matrix_hash(A)[:32]}-{_loss_id(loss)}-{dps or 'auto'}"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then os.replace (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
