"""Seeded generators of symmetric test matrices with known (or sampled) spectra.

``make(family, d, seed=0, dtype="float64", **params)`` returns a :class:`Spectrum`. Families
(``FAMILIES``), eigenvalues positive and the largest about 1 unless stated:

* ``separated(cond=10)``: evenly spaced in [1/cond, 1].
* ``cluster(k=2, delta=1e-6)``: k eigenvalues λ_c·(1 + j·delta) mid-spectrum, rest separated.
* ``degenerate(m=2)``: one eigenvalue of exact multiplicity m, rest separated.
* ``rank_deficient(r=d//2, n=None)``: d − r exact zeros; or, with n, a rank-n sample covariance.
* ``lapack(mode=3, cond=1e4)``: the six eigenvalue modes of LAPACK's xLATMS generator.
* ``wishart(aspect=0.5)``: the sample covariance X Xᵀ/n, n = ceil(d/aspect) (no recorded spectrum).
* ``powerlaw(alpha=1)``: λ_i = i^−alpha, i = 1..d.

Spectrum-built families use a Haar-random orthogonal basis Q: A = Q diag(λ) Qᵀ in float64,
symmetrized exactly as (A + Aᵀ)/2, then rounded to float32 if asked. Randomness comes only from
``np.random.default_rng(np.random.SeedSequence([seed, d, stream]))``, ``stream`` a fixed integer
per family (``FAMILY_STREAMS``): same (family, d, seed, params) → the identical matrix, whatever the
call order, process or caller's thread setting (the QR, SVD and product run on one BLAS thread, one
``make`` at a time), but only for the same numpy (NEP 19 allows ``Generator`` streams to change
between releases) and the same BLAS/LAPACK kernels (an AVX2 and an AVX-512 OpenBLAS round the QR and
product differently). The one exception: while another Python thread holds threadpoolctl's control
of a pthreads OpenBLAS (it is inside its own ``threadpool_limits``), make cannot change the count and
computes on that thread's.

``cluster``'s delta is a *relative* gap: the absolute gaps are λ_c·delta, λ_c = 0.55 (to one ulp)
whenever d − k is even and positive (k = 2 at the studies' even d; at k = d it is 1), so a "gap δ"
axis built from it has absolute gaps 0.55·δ, not δ.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from ._choices import FAMILY_NAMES
from .errors import InputError
from .validation import dtype_name

__all__ = ["Spectrum", "FAMILIES", "FAMILY_STREAMS", "make", "haar_orthogonal"]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A generated symmetric test matrix and how it was built.

    ``matrix`` is the float rounding of Q diag(λ) Qᵀ (computed in float64, symmetrized exactly,
    then rounded to the requested dtype): ``eigenvalues`` (ascending, float64) and ``basis`` (the
    float64 orthogonal Q) are the exact values used in that construction, so the matrix's own
    eigenvalues differ from them by rounding, ~d·eps·max|λ| with the eps of the matrix's dtype (a
    float32 matrix records the same float64 λ and Q as the float64 one). Both are None when the matrix is
    sampled directly rather than built from a spectrum (``wishart``). ``params`` holds the family
    parameters actually used, defaults filled in, plus ``d`` and ``seed``; ``derived`` names those
    the family worked out itself rather than took as arguments.
    """

    family: str
    params: dict
    matrix: np.ndarray
    eigenvalues: np.ndarray | None
    basis: np.ndarray | None
    derived: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """"family d=… seed=… name=value…": the ``make`` arguments that rebuild this matrix — the
        family's own parameters that are set, values it derived (``derived``, e.g. rank_deficient's
        r from n; wishart's n is not a parameter at all) left out, numbers not rounded."""
        own = [p for p in inspect.signature(FAMILIES[self.family]).parameters if p not in ("d", "rng", *self.derived)]
        shown = [f"{k}={_exact_text(self.params[k])}" for k in own if self.params.get(k) is not None]
        return " ".join([self.family, f"d={self.params['d']}", f"seed={self.params['seed']}", *shown])


def _exact_text(value) -> str:
    """A number as text that reads back as the same number: '%g' where that is exact (1e-06, 10000),
    else the shortest round-trip repr (1.0000001)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


class _Draw(NamedTuple):
    """What a family function returns: ascending eigenvalues (or None), a sampled matrix (or
    None, meaning: build Q diag(λ) Qᵀ), and the resolved family parameters."""

    eigenvalues: np.ndarray | None
    matrix: np.ndarray | None
    params: dict
    derived: tuple[str, ...] = ()  # params the family worked out itself (not make's arguments)


# ------------------------------------------------------------------------------ checks

MAX_ENTRIES = 2**27  # the largest matrix (or wishart sample) a family builds: 1 GiB of float64


def _int(family: str, name: str, value, lo: int, hi: int | None = None, why: str = "") -> int:
    """``value`` as an int in [lo, hi]; InputError naming the family, parameter and bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or (
        not isinstance(value, numbers.Integral) and (math.isinf(value) or value != int(value))
    ):  # any Real, not just float: np.float32(8.5) and Fraction(5, 2) are not integers either
        raise InputError(f"{family}: {name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        bounds = f"{lo} <= {name} <= {hi}" if hi is not None else f"{name} >= {lo}"
        raise InputError(f"{family}: {name}={v} is impossible (need {bounds}{why})")
    return v


def _real(family: str, name: str, value, *, gt: float | None = None, ge: float | None = None) -> float:
    """``value`` as a finite float with value > gt (or >= ge); InputError naming the problem."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{family}: {name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int (or Fraction) beyond float64: 10**400 raised a bare OverflowError
        raise InputError(f"{family}: {name} must be finite, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{family}: {name} must be finite, got {value!r}")
    if gt is not None and not v > gt:
        raise InputError(f"{family}: {name}={value!r} is impossible (need {name} > {gt:g})")
    if ge is not None and not v >= ge:
        raise InputError(f"{family}: {name}={value!r} is impossible (need {name} >= {ge:g})")
    return v


def _even(lo: float, hi: float, n: int) -> np.ndarray:
    """n evenly spaced values in [lo, hi] (just [hi] when n == 1)."""
    return np.array([hi]) if n == 1 else np.linspace(lo, hi, n)


# ----------------------------------------------------------------------------- families


def separated(d: int, rng: np.random.Generator, *, cond: float = 10.0) -> _Draw:
    """Well conditioned: λ_i = 1/cond + (i−1)/(d−1)·(1 − 1/cond), i = 1..d (``np.linspace``).

    Default cond = 10; relative gaps ≈ (1 − 1/cond)/(d − 1). Needs cond > 1 (distinct values).
    """
    cond = _real("separated", "cond", cond, gt=1.0)
    lam = np.linspace(1.0 / cond, 1.0, d)
    if not (np.diff(lam) > 0).all():
        raise InputError(f"separated: cond={cond!r} is too close to 1 for {d} distinct float64 eigenvalues")
    return _Draw(lam, None, {"cond": cond})


def cluster(d: int, rng: np.random.Generator, *, k: int = 2, delta: float = 1e-6) -> _Draw:
    """k eigenvalues λ_c·(1 + j·delta), j = 0..k−1, the other d − k separated.

    Grid g = linspace(0.1, 1, d − k + 1) (just [1] when k = d); λ_c = g[c], c = (d − k)//2 (the
    middle), and the other grid points are the remaining eigenvalues, so the cluster sits
    mid-spectrum with its consecutive gaps λ_c·delta — delta is relative, the absolute gap is λ_c·delta
    — up to the rounding of each member (≤ ulp(λ_c) per gap: delta down to 1e-14 still gives k distinct
    float64 values). Defaults k = 2, delta = 1e-6. Needs 2 <= k <= d
    and 0 < delta, and the cluster width (k−1)·delta·λ_c below half the grid spacing.
    """
    k = _int("cluster", "k", k, 2, d, why=f" for d={d}")
    delta = _real("cluster", "delta", delta, gt=0.0)
    grid = _even(0.1, 1.0, d - k + 1)
    c = (d - k) // 2
    lam_c = grid[c]
    limit = 0.5 * (grid[1] - grid[0]) / ((k - 1) * lam_c) if d > k else 1.0 / (k - 1)
    if not delta < limit:
        raise InputError(
            f"cluster: delta={delta!r} is too large: the cluster would reach its neighbours "
            f"(need delta < {limit:.3g} for d={d}, k={k})"
        )
    members = lam_c + lam_c * delta * np.arange(k)
    if not (np.diff(members) > 0).all():
        raise InputError(f"cluster: delta={delta!r} is too small for {k} distinct float64 eigenvalues")
    lam = np.concatenate([grid[:c], members, grid[c + 1:]])
    return _Draw(lam, None, {"k": k, "delta": delta})


def degenerate(d: int, rng: np.random.Generator, *, m: int = 2) -> _Draw:
    """One eigenvalue of exact multiplicity m, the others separated.

    Grid g = linspace(0.1, 1, d − m + 1) (just [1] when m = d); the middle point g[(d − m)//2] is
    repeated m times (bit-identical before the matrix is formed). Default m = 2; needs 2 <= m <= d.
    """
    m = _int("degenerate", "m", m, 2, d, why=f" for d={d}")
    grid = _even(0.1, 1.0, d - m + 1)
    c = (d - m) // 2
    lam = np.concatenate([grid[:c], np.full(m, grid[c]), grid[c + 1:]])
    return _Draw(lam, None, {"m": m})


def rank_deficient(d: int, rng: np.random.Generator, *, r: int | None = None, n: int | None = None) -> _Draw:
    """d − r exact zero eigenvalues and r positive separated ones, linspace(0.1, 1, r) ([1] if r = 1).

    Default r = d//2; needs 1 <= r <= d. With ``n`` (1 <= n < d, and r not given) it is instead a
    sample covariance of n standard Gaussian samples in d dimensions, rank n, *not* rescaled: its
    eigenvalues are s²/n (s the singular values of a d×n Gaussian X) plus d − n exact zeros, and it
    is built as Q diag(λ) Qᵀ with a fresh Haar Q. That has exactly the distribution of X Xᵀ/n (the
    left singular vectors of a Gaussian matrix are Haar and independent of its singular values),
    but its zero eigenvalues are exact and recorded. ``params`` then has r = n.
    """
    if n is not None:
        if r is not None:
            raise InputError("rank_deficient: give r (a built spectrum) or n (a sample covariance), not both")
        n = _int("rank_deficient", "n", n, 1, d - 1, why=f" for d={d}: fewer samples than dimensions")
        X = rng.standard_normal((d, n))
        s = np.linalg.svd(X, compute_uv=False)
        lam = np.concatenate([np.zeros(d - n), np.sort(s * s / n)])
        return _Draw(lam, None, {"r": n, "n": n}, derived=("r",))
    r = d // 2 if r is None else _int("rank_deficient", "r", r, 1, d, why=f" for d={d}")
    lam = np.concatenate([np.zeros(d - r), _even(0.1, 1.0, r)])
    return _Draw(lam, None, {"r": r, "n": None})


def lapack(d: int, rng: np.random.Generator, *, mode: int = 3, cond: float = 1e4) -> _Draw:
    """The eigenvalue modes of LAPACK's xLATMS (via xLATM1), for i = 1..n (n = d):

    1: D(1) = 1, D(2:n) = 1/cond;        2: D(1:n−1) = 1, D(n) = 1/cond;
    3: D(i) = cond^(−(i−1)/(n−1));       4: D(i) = 1 − (i−1)/(n−1)·(1 − 1/cond);
    5: D(i) = exp(−u_i·ln cond), u_i ~ U(0,1): random in (1/cond, 1] with uniform logarithms;
    6: D(i) = 1/cond + (1 − 1/cond)·(1 − u_i), u_i ~ U[0,1): uniform(0,1) mapped affinely into
       (1/cond, 1] (LAPACK draws mode 6 from the matrix's own distribution and ignores cond; here
       that distribution is uniform(0,1), scaled into the range the other modes share).

    Defaults mode = 3, cond = 1e4 (cond >= 1). Returned ascending (positive, max 1 for modes 1–4).
    These are xLATM1's D with IRSIGN = 0 (no random signs; LAPACK's negative modes, the same values
    reversed, are not needed once sorted). Unlike xLATMS, mode 5 is *not* rescaled to max |D| = DMAX
    (xLATMS scales every mode but 0 and ±6): its largest value is exp(−u_min·ln cond) < 1, and the
    realised condition number max/min is below cond; modes 1–3 have it exactly (max 1 = DMAX, min
    1/cond); so does mode 4, in LAPACK's order of operations, (n−i)·(1 − 1/cond)/(n−1) + 1/cond
    (written as 1 − (i−1)/(n−1)·(1 − 1/cond) it cancelled: 9.999999999998899e-05 for 1e-4 at cond = 1e4,
    and 0, a singular matrix, for cond >= 2^54).
    """
    mode = _int("lapack", "mode", mode, 1, 6)
    cond = _real("lapack", "cond", cond, ge=1.0)
    # modes 3 and 4 elementwise in Python floats (C pow): mode 3 is 1 and 1/cond at its ends exactly
    if mode == 1:
        D = np.full(d, 1.0 / cond)
        D[0] = 1.0
    elif mode == 2:
        D = np.ones(d)
        D[-1] = 1.0 / cond
    elif mode == 3:
        D = np.array([cond ** (-i / (d - 1)) for i in range(d)])  # i is (i − 1) above
    elif mode == 4:
        D = np.array([(d - 1 - i) * (1.0 - 1.0 / cond) / (d - 1) + 1.0 / cond for i in range(d)])
    elif mode == 5:
        D = np.exp(-rng.random(d) * math.log(cond))
    else:
        D = 1.0 / cond + (1.0 - 1.0 / cond) * (1.0 - rng.random(d))
    return _Draw(np.sort(D), None, {"mode": mode, "cond": cond})


def wishart(d: int, rng: np.random.Generator, *, aspect: float = 0.5) -> _Draw:
    """Sample covariance A = X Xᵀ/n, X a d×n standard Gaussian, n = ceil(d/aspect) (aspect = d/n).

    Default aspect = 0.5. Not rescaled: for large d the spectrum fills the Marchenko–Pastur support
    [(1 − √aspect)², (1 + √aspect)²] (plus d − n zeros when aspect > 1). Sampled, not built from a
    spectrum: ``eigenvalues`` and ``basis`` are None. ``params`` records n too.
    """
    aspect = _real("wishart", "aspect", aspect, gt=0.0)
    ratio = d / aspect * (1 - 1e-12)  # 1e-12: no extra sample from d/aspect's rounding
    n = max(1, math.ceil(ratio)) if d * ratio <= MAX_ENTRIES else ratio  # ceil(inf) (aspect=1e-310) raises
    if d * n > MAX_ENTRIES:
        raise InputError(f"wishart: aspect={aspect!r} is too small for d={d} (it needs n={n} samples)")
    X = rng.standard_normal((d, n))
    return _Draw(None, X @ X.T / n, {"aspect": aspect, "n": n})


def powerlaw(d: int, rng: np.random.Generator, *, alpha: float = 1.0) -> _Draw:
    """λ_i = i^−alpha, i = 1..d (max 1 at i = 1), returned ascending. Default alpha = 1 (> 0)."""
    alpha = _real("powerlaw", "alpha", alpha, gt=0.0)
    if alpha * math.log(d) > 700:
        raise InputError(f"powerlaw: alpha={alpha!r} is too large for d={d}: d^-alpha underflows float64")
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    if not (np.diff(lam) < 0).all():  # as separated and cluster refuse: not the family's distinct values
        raise InputError(f"powerlaw: alpha={alpha!r} is too small for {d} distinct float64 eigenvalues")
    return _Draw(lam[::-1].copy(), None, {"alpha": alpha})


#: each family's generator: the function of its name above (the names: ``stabkit._choices``)
FAMILIES: dict[str, Callable[..., _Draw]] = {name: globals()[name] for name in FAMILY_NAMES}

#: The family-specific third word of the seed: SeedSequence([seed, d, FAMILY_STREAMS[family]]).
FAMILY_STREAMS: dict[str, int] = {name: i for i, name in enumerate(FAMILIES, start=1)}


# --------------------------------------------------------------------------------- make


def haar_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed d×d orthogonal matrix: Q from the QR of a standard Gaussian matrix, each
    column multiplied by the sign of R's diagonal entry (so that R has a positive diagonal and the
    factorization is unique, which makes Q Haar; Mezzadri 2007)."""
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    signs = np.sign(np.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs


def _dtype(dtype) -> np.dtype:
    """The dtype ``validation.dtype_name`` takes (a name, np.float32/np.float64 or their np.dtype)."""
    try:
        return np.dtype(dtype_name(dtype))
    except InputError:
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None


_blas = None
#: one make's BLAS section at a time: threadpoolctl lets one Python thread at a time set OpenBLAS's
#: process-wide thread count, so overlapping makes in two threads undid each other's setting
_BLAS_SECTION = threading.Lock()


def _one_blas_thread():
    """A context with numpy's BLAS on one thread. The controller is made once: ``threadpool_limits``
    scans the loaded libraries on every call (0.5 ms, half of a d = 8 ``make``); this costs 0.01 ms."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def make(family: str, d: int, seed: int = 0, dtype: str = "float64", **params) -> Spectrum:
    """The ``family`` matrix of size d for ``seed``, rounded to ``dtype`` ("float32"/"float64").

    InputError (a ValueError; one line, naming the problem) for an unknown family or parameter, d < 2, a
    negative or non-integer seed, a dtype other than float32/float64, or impossible parameters.
    """
    if not isinstance(family, str) or family not in FAMILIES:
        raise InputError(f"unknown spectrum family {family!r} (allowed: {', '.join(FAMILIES)})")
    fn = FAMILIES[family]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("d", "rng")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(
            f"unknown parameter {unknown[0]!r} for spectrum family {family!r} (allowed: {', '.join(allowed)})"
        )
    d = _int(family, "d", d, 2, math.isqrt(MAX_ENTRIES), f": a d×d matrix of at most {MAX_ENTRIES} entries, 1 GiB")
    seed = _int(family, "seed", seed, 0)
    dt = _dtype(dtype)

    rng = np.random.default_rng(np.random.SeedSequence([seed, d, FAMILY_STREAMS[family]]))
    # One BLAS thread: OpenBLAS's QR, SVD and matrix product round differently with the thread count
    # at some sizes (d = 300, 500, 700 on 2 threads), so a caller's thread setting changed the bits;
    # the studies' cells already run with one BLAS thread, so their matrices are these.
    with _BLAS_SECTION, _one_blas_thread():
        draw = fn(d, rng, **params)
        if draw.matrix is not None:
            A, lam, Q = draw.matrix, None, None
        else:
            lam = np.asarray(draw.eigenvalues, dtype=np.float64)
            Q = haar_orthogonal(d, rng)
            A = (Q * lam) @ Q.T
    A = (A + A.T) / 2  # exactly symmetric: IEEE addition commutes
    if dt != A.dtype:
        A = A.astype(dt)
    return Spectrum(family=family, params={"d": d, "seed": seed, **draw.params}, matrix=A, eigenvalues=lam, basis=Q,
                    derived=draw.derived)
