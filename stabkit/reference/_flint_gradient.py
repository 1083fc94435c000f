"""The certified gradient U(D∘UᵀGU)Uᵀ from a certified decomposition and its rigorous bound (the
"gradient" and "groups" items of ``_flint``'s docstring)."""

from __future__ import annotations

import math

import mpmath
import numpy as np

from . import _flint_mul
from ._flint_mul import IntMat
from ._flint_ints import _SAFE, _bits, _div_pow2, _float_exact_to_int, _shift, _to_float

MAX_DIGITS = 60.0


# ----------------------------------------------------------------------------------------------
# the bounds of the spectral divided differences: |f''|, |f'''| on [x, ∞), carried by the loss
# (``SpectralLoss.d2_bound``/``d3_bound``; a loss without them gets no rigorous bound)


def _float_or_inf(fn, x, e: int = 0, x2: bool = False) -> float:
    # fn(x)·2^e (times x² if x2) as a float64, computed on an mpf so that neither fn(x) nor the
    # product leaves the exponent range on the way (sqrt's |f''| at λ = 1e300 is 1e-450); inf where
    # the bound is not finite or fn returned a float64 that may have underflowed
    try:
        v = fn(mpmath.mpf(float(x)))
    except OverflowError:  # the derivative bound exceeds float64 (tiny λ): no float64 bound
        return math.inf
    if isinstance(v, float) and not (math.isfinite(v) and abs(v) >= 2.0 ** -1000):
        return math.inf
    with mpmath.workprec(64):
        v = mpmath.ldexp(abs(mpmath.mpf(v)) * (mpmath.mpf(float(x)) ** 2 if x2 else 1), e)
        return float(v * (1 + mpmath.mpf(2) ** -50))  # float(±huge mpf) is inf


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
    # the bound's float64 arithmetic runs in units scaled to O(1): G-like quantities times 2^gs,
    # D-like ones times 2^ds (set below); a tiny ∂L/∂A (a weight of 1e-285, zca at λ = 1e186) put its
    # error terms below the float64 range, where they vanished and 60 digits were certified
    gs = g - _bits(int(np.abs(Gint).max()))
    Gs = _to_float(Gint, g - gs)
    Xi = st["_Xint"] if "_Xint" in st else IntMat(X)  # not in a state read from the cache
    K = _flint_mul.matmul(Xi.T, Gint, Xi, sym=True)  # scale 2s + g (G_sym is symmetric)
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
        nz = (dW != 0) & (dc != 0)
        # ⌊log2 max|D|⌋ within one bit from the integers (a float quotient can overflow)
        Dbits = max((_bits(w) - sw - _bits(h) + qc for w, h in zip(dW[nz], dc[nz])), default=0)
        tD = int(target + 40 - Dbits)
        ds = tD - target - 40
        zero = (dW == 0) | (dc == 0)
        D = np.where(zero, 0, _div_pow2(dW, qc + tD - sw, np.where(zero, 1, dc)))
        want_bound = want_bound and tD > -1000  # the bound arithmetic is float64: |D| must fit
        # weights that differ inside a group: D⁰ is not constant on its blocks, so U(D⁰∘UᵀGU)Uᵀ depends on
        # the basis inside the group and ``_bound`` (which reads one entry per block) does not hold
        want_bound = want_bound and not (dW[grp[:, None] == grp[None, :]] != 0).any()
        evalD = np.full((d, d), math.ldexp(1.0, -(target + 40))) if want_bound else None
        if want_bound:
            se = r[:, None] + r[None, :]
            h = np.abs(dcf)
            # |D⁰_ij| ≤ (|D̃_ij| + 1)·2^-tD (floor quotient), scaled by 2^ds
            D0 = _to_float(np.abs(D) + 1, tD - ds) * (1 + 2.0 ** -50)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                dD0 = np.where(dWf == 0, 0.0, np.where(h > se, D0 * (se / (h - se)), np.inf))
    else:
        mags = np.maximum(np.abs(lamf), 1e-300)
        with mpmath.workprec(64):  # f'(λ) can exceed the float64 range (zca at λ = 1e-300)
            dfmax = max(abs(loss.df_mp(mpmath.mpf((int(ci), -qc)))) for ci in c)
            dbits = int(mpmath.floor(mpmath.log(dfmax, 2))) if dfmax > 0 else 0
        tD = int(target + 40 - dbits)
        ds = tD - target - 40
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
            with np.errstate(divide="ignore", over="ignore", under="ignore"):  # 0 or inf: see the module doc
                evalerr = (math.ldexp(1.0, -(target + 40))
                           + np.where(near, 0.0, np.ldexp(4.0 / np.where(near, 1.0, h), ds - tF)))
            d2, d3 = loss.d2_bound, loss.d3_bound
            lo = lamf * (1 - 1e-15) - r
            low = np.minimum(lo[:, None], lo[None, :])
            if d2 is None or d3 is None or (low <= 0).any():
                want_bound = False
            else:
                with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: no bound
                    # the tabulated bounds decrease on (0, inf): at min(lo_i, lo_j) they are the
                    # larger of their values at lo_i and lo_j
                    f2v = np.array([_float_or_inf(d2, x, ds) for x in lo])  # |f''|·2^ds
                    q3v = np.array([_float_or_inf(d3, x, ds, x2=True) for x in lo])  # x² |f'''|·2^ds
                    f2 = np.maximum(f2v[:, None], f2v[None, :])
                    # q3v at low = min(lo_i, lo_j); h² |f'''(low)| = (h / low)² · q3
                    q3 = np.where(lo[:, None] <= lo[None, :], q3v[:, None], q3v[None, :])
                    dD0 = (r[:, None] + r[None, :]) / 2 * f2 * _SAFE
                    hr = (h / low) * (1 + 2.0 ** -50)
                    evalD = (np.where(near & (h > 0), hr * hr / 24 * q3, 0.0) + evalerr) * _SAFE
    # M = D̃ ∘ K̃, rounded to scale tM
    Mfull = D * K  # scale tD + qK
    Mtop = int(np.abs(Mfull).max())
    tM = int(target + 40 - (_bits(Mtop) - 1 - tD - qK if Mtop else 0))
    Mint = _shift(Mfull, tM - tD - qK)
    # D̃ and K̃ are symmetric (divided differences of exact ints, floor quotients of negated
    # pairs agree), hence M̃; checked, as the product's symmetric reconstruction relies on it
    gnum = _flint_mul.matmul(Xi, Mint, Xi.T, sym=bool((Mint == Mint.T).all()))  # scale 2s + tM
    gscale = 2 * s + tM
    bound = None
    # radii that underflowed (max|A| ≲ 1e-250) cannot bound anything
    if want_bound and np.isfinite(st["eps"]).all() and (r >= 2.0 ** -1000).all():
        bound = _bound(st, grp, bounds, Gs, K, qK - gs, D, tD - ds, Mint, tM - ds - gs, dD0, evalD)
        if bound is not None:
            with mpmath.workprec(64):
                bound = mpmath.ldexp(mpmath.mpf(bound), -(ds + gs))
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
