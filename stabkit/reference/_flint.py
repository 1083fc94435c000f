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

Files: this one (the engine: precision choice, cached states, the condition loop), ``_flint_refine``
(refinement), ``_flint_certify`` (enclosures and sin θ bounds), ``_flint_gradient`` (the gradient
and its bound), ``_flint_ints`` (exact integer ↔ float conversions), ``_flint_mul`` (the exact
products).
"""

from __future__ import annotations

import io
import json
import math

import mpmath
import numpy as np

from . import _cache
from ._flint_certify import _certify
from ._flint_gradient import MAX_DIGITS, _digits_from, _gradient
from ._flint_ints import _shift, _to_float
from ._flint_refine import _Pass, _refine





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
