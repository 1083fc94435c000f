"""Certified high-precision ground truth for ∂L/∂A of the probe losses.

The truth is the exact gradient of the loss at the input matrix *exactly as given* (float32 input
is widened exactly to float64), evaluated by the Daleckii–Krein formula

    ∂L/∂A = U (D ∘ (Uᵀ G_sym U)) Uᵀ

(Daleckii & Krein 1965; see also Higham, "Functions of Matrices", SIAM 2008, Thm. 3.11) from a
high-precision eigendecomposition A = U diag(λ) Uᵀ.  Two engines compute that decomposition:

* ``mpmath`` — ``mpmath.eigsy`` (Jacobi/QL in arbitrary precision) at two precisions P and ≈1.5P,
  the gradient in mpmath arithmetic.  ``digits`` is the number of significant digits on which the
  two results agree.  This is an *agreement estimate*, not a proof.  Independent of the flint
  engine and of the float64 code paths; fine up to d ≈ 64.
* ``flint`` — float64 ``numpy.linalg.eigh`` refined by the Ogita–Aishima iteration (Ogita &
  Aishima, "Iterative refinement for symmetric eigenvalue decomposition", JJIAM 35, 2018; part II
  for clustered eigenvalues, JJIAM 36, 2019) with all matrix products done *exactly* in integer
  fixed point (python-flint ``fmpz_mat``).  From the exact products the final X is certified
  (see ``stabkit._flint_eig``): Weyl + Ostrowski bounds on every eigenvalue, a Davis–Kahan sin θ
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
spectrum that is degenerate before rounding (gaps ≈ 1e-16 relative) still gets ~30 digits.
Divided differences of near-equal eigenvalues are evaluated without cancellation (extra working
precision, or the mean-value/midpoint expansion f'((λ_i+λ_j)/2) when the pair is closer than the
square root of the working precision).

Results are cached on disk (``$STABKIT_CACHE`` or ``~/.cache/stabkit/reference``): the
eigendecomposition per input (sha256 of the float64 bytes and shape) and engine, the gradient per
(input, engine, loss name, sha of weight, sha of w).  Every key carries ``_CACHE_VERSION`` and the
engine's algorithm version (``ENGINE_VERSIONS``), so results of an older algorithm are not reused.
Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mpmath
import numpy as np

from .validation import check_symmetric

MIN_DIGITS = 12
MAX_DIGITS = 60.0
AUTO_MPMATH_MAX_D = 24
ENGINES = ("auto", "mpmath", "flint")
_CACHE_VERSION = "v2"
# Algorithm version of each engine, part of every cache key: bump when an engine's results change,
# so that truths computed by an older algorithm are never reused.
# flint 2: exact cluster test in the refinement, repeated Rayleigh–Ritz on sub-clusters, and the
#          group (invariant-subspace) certificate for overlapping eigenvalue enclosures.
# flint 3: pairs outside the Newton region (large correction) are refined as one cluster and
#          resolved by Rayleigh–Ritz (exactly repeated eigenvalues split by rounding cycled).
ENGINE_VERSIONS = {"mpmath": "1", "flint": "3"}


@dataclass(frozen=True)
class Truth:
    grad: np.ndarray  # float64 (d, d): ∂L/∂A rounded from the high-precision result
    eigenvalues: np.ndarray  # float64: exact eigenvalues of the input, rounded, ascending
    digits: float  # certified significant digits of grad (relative to max|grad|), capped at 60
    engine: str  # "mpmath" or "flint"
    seconds: float  # wall time of the (uncached) computation

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


def _choose_digits(A: np.ndarray) -> int:
    """P = 30 + ⌈−log10(min relative gap)⌉ from a float64 estimate of the spectrum."""
    lam = np.linalg.eigvalsh(A)
    scale = float(np.abs(lam).max()) or 1.0
    gaps = np.diff(lam) / scale if lam.size > 1 else np.array([1.0])
    g = max(float(gaps.min()), 1e-17)
    return 30 + max(0, math.ceil(-math.log10(g)))


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
    key = _eig_key(A, "mpmath", dps_pair)
    path = _cache_dir() / f"{key}.json"
    if cache and path.exists():
        data = json.loads(path.read_text())
        out = []
        ctx = mpmath.workdps(max(dps_pair) + 30)  # construct the stored mpf values without rounding
        ctx.__enter__()
        for lam_s, U_s in zip(data["lam"], data["U"]):
            lam = [mpmath.mpf((int(m), int(e))) for m, e in lam_s]
            d = len(lam)
            U = mpmath.matrix(d, d)
            for idx, (m, e) in enumerate(U_s):
                U[idx // d, idx % d] = mpmath.mpf((int(m), int(e)))
            out.append((lam, U))
        ctx.__exit__(None, None, None)
        return out
    out = []
    for dps in dps_pair:
        lam, U = eigh_exact(A, dps)
        out.append(([lam[i] for i in range(lam.rows)], U))
    if cache:
        def enc(x):
            return [str(_signed_man(x)), str(x._mpf_[2])]
        data = {"dps": list(dps_pair),
                "lam": [[enc(x) for x in lam] for lam, _ in out],
                "U": [[enc(U[i, j]) for i in range(U.rows) for j in range(U.cols)] for _, U in out]}
        _atomic_write(path, json.dumps(data).encode())
    return out


def _signed_man(x) -> int:
    sign, man, _exp, _bc = x._mpf_
    return -int(man) if sign else int(man)


def _mp_engine(A: np.ndarray, loss, cache: bool, dps: int | None, input_dtype=np.float64):
    P = dps or _choose_digits(A)
    P2 = math.ceil(1.5 * P) + 5
    (lam1, U1), (lam2, U2) = _eig_mp_cached(A, (P, P2), cache)
    lam64 = np.array([float(x) for x in lam2])
    loss.check(lam64, dtype=input_dtype)
    g1 = _gradient_mp(lam1, U1, loss, P)
    g2 = _gradient_mp(lam2, U2, loss, P2)
    digits = _agreement_digits(g2, g1)
    d = A.shape[0]
    grad = np.array([float(x) for x in g2], dtype=np.float64).reshape(d, d)  # correctly rounded
    return grad, lambda: g2, lam64, digits


# ----------------------------------------------------------------------------------------------
# public API


def ground_truth(A, loss, *, engine: str = "auto", cache: bool = True, _dps: int | None = None) -> Truth:
    """Certified ∂L/∂A of ``loss`` at A (exactly as given), rounded to float64.

    ``engine``: "mpmath", "flint" or "auto" (mpmath for d ≤ 24).  Raises ValueError for invalid
    input or where the loss is undefined (``loss.check`` on the exact eigenvalues).  ``digits``
    tells how many significant digits are certified; check ``Truth.certified`` before use.
    ``_dps`` (private) forces the working precision in decimal digits, for tests.
    """
    input_dtype = np.asarray(A).dtype
    A = _as_exact_float64(A)
    d = A.shape[0]
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "mpmath" if d <= AUTO_MPMATH_MAX_D else "flint"
    gkey = _grad_key(A, engine, loss, _dps)
    gpath = _cache_dir() / f"{gkey}.npz"
    if cache and gpath.exists():
        with np.load(gpath) as z:
            truth = Truth(z["grad"].copy(), z["eigenvalues"].copy(), float(z["digits"]), str(z["engine"]),
                          float(z["seconds"]))
        loss.check(truth.eigenvalues, dtype=input_dtype)
        return truth
    start = time.perf_counter()
    grad, _, lam64, digits = _engine(A, loss, engine, cache, _dps, input_dtype)
    truth = Truth(grad, lam64, float(digits), engine, time.perf_counter() - start)
    if cache:
        import io
        buf = io.BytesIO()
        np.savez(buf, grad=truth.grad, eigenvalues=truth.eigenvalues, digits=truth.digits,
                 engine=truth.engine, seconds=truth.seconds)
        _atomic_write(gpath, buf.getvalue())
    return truth


def _hp_gradient(A, loss, engine: str, cache: bool = False, _dps: int | None = None):
    """(gradient entries row-major as high-precision mpf numbers, float64 eigenvalues, digits)."""
    _, hp, lam64, digits = _engine(_as_exact_float64(A), loss, engine, cache, _dps, np.asarray(A).dtype)
    return hp(), lam64, digits


def _engine(A, loss, engine: str, cache: bool, _dps: int | None, input_dtype=np.float64):
    """(float64 gradient, thunk returning the high-precision entries, float64 eigenvalues, digits)."""
    if engine == "mpmath":
        return _mp_engine(A, loss, cache, _dps, input_dtype)
    if engine == "flint":
        from . import _flint_eig
        return _flint_eig.engine(A, loss, cache=cache, dps=_dps, cache_dir=_cache_dir(),
                                 key=_eig_key(A, "flint", _dps), atomic_write=_atomic_write,
                                 input_dtype=input_dtype)
    raise ValueError(f"unknown engine {engine!r}")


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


def _cache_dir() -> Path:
    p = Path(os.environ.get("STABKIT_CACHE") or Path.home() / ".cache" / "stabkit" / "reference")
    p.mkdir(parents=True, exist_ok=True)
    return p


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
