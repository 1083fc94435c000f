"""The computations of the projector_rank kind: Lemma 1 (the projector gradient, against an mpmath
directional derivative and against every method's eigenvector route), Lemma 2 (projector distance
and rank of random pairs) and gradient descent on J₂ (see the package docstring)."""

from __future__ import annotations

import math

import mpmath
import numpy as np

from ... import methods
from .. import _specs

#: Descent "methods" that are not registry methods: Π_W = W W⁺ with the Lemma 1 gradient.
PSEUDO = ("lemma1",)


# ---------------------------------------------------------------- Lemma 1


def _orth(M):
    Q, _ = np.linalg.qr(M)
    return Q


def random_rank_r(d: int, r: int, rng):
    """(A, V, s): A = V diag(s) Vᵀ symmetric PSD of rank r, s ∈ [1, 2]."""
    V = _orth(rng.standard_normal((d, r)))
    s = rng.uniform(1, 2, r)
    A = (V * s) @ V.T
    return (A + A.T) / 2, V, s


def lemma1_gradient(A, G, rcond: float = 1e-10):
    """2 (I − Π) G_sym A⁺ with Π = A A⁺ (Ionescu et al. 2015, Lemma 1)."""
    Ap = np.linalg.pinv(A, rcond=rcond, hermitian=True)
    P = A @ Ap
    return 2 * (np.eye(A.shape[0]) - P) @ ((G + G.T) / 2) @ Ap, P


def _mp_loss(G, V, X, t):
    """⟨G, Y (YᵀY)⁻¹ Yᵀ⟩ with Y = (I + tX) V, in mpmath at the current precision."""
    d = V.shape[0]
    M = mpmath.eye(d) + t * mpmath.matrix(X.tolist())
    Y = M * mpmath.matrix(V.tolist())
    P = Y * mpmath.inverse(Y.T * Y) * Y.T
    Gm = mpmath.matrix(G.tolist())
    return mpmath.fsum(Gm[i, j] * P[i, j] for i in range(d) for j in range(d))


def mp_directional_derivative(G, V, X, dps: int = 50, h: str = "1e-15"):
    with mpmath.workdps(dps):
        hh = mpmath.mpf(h)
        return float((_mp_loss(G, V, X, hh) - _mp_loss(G, V, X, -hh)) / (2 * hh))


def _f64_loss(G, V, X, t):
    Y = (np.eye(V.shape[0]) + t * X) @ V
    return float((G * (Y @ np.linalg.solve(Y.T @ Y, Y.T))).sum())


def lemma1_rows(cell):
    from ... import losses

    d, r = cell["d"], cell["r"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, r, 0x1E1]))
    A, V, _ = random_rank_r(d, r, rng)
    G = rng.standard_normal((d, d))
    g, _ = lemma1_gradient(A, G)
    rows = []
    for k in range(cell["directions"]):
        X = rng.standard_normal((d, d))
        Adot = X @ A + A @ X.T
        pred = float((g * Adot).sum())
        truth = mp_directional_derivative(G, V, X)
        h = 1e-6
        fd64 = (_f64_loss(G, V, X, h) - _f64_loss(G, V, X, -h)) / (2 * h)
        rows.append({"part": "lemma1", "check": "directional", "d": d, "r": r, "seed": cell["seed"], "direction": k,
                     "method": "lemma1", "value": pred, "truth": truth, "rel_err": abs(pred - truth) / abs(truth),
                     "fd64_rel_err": abs(fd64 - truth) / abs(truth)})
    ref = (g + g.T) / 2
    loss = losses.make_loss("projector", d, k=r, weight=G)
    for label, spec in zip(cell["methods"], _specs.specs(cell["methods"])):  # parsed once per cell
        rows.append({"part": "lemma1", "check": "eigen-route", "d": d, "r": r, "seed": cell["seed"], "direction": -1,
                     "method": label, "value": math.nan, "truth": math.nan, "fd64_rel_err": math.nan,
                     **_eigen_route(spec, A, loss, ref, d, r)})
    return rows


def _rel(g, ref) -> float:
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def _eigen_route(spec, A, loss, ref, d: int, r: int) -> dict:
    """The method's projector-loss gradient scored against the function its forward computes:
    ``scored`` is "Lemma 1" (sym(Lemma 1)), "own function" (L∘forward for an approximate forward,
    ``compare.iterated_truth``), "not scored" or "failed" (``note``: why); ``full_rel_err`` is
    the distance to sym(Lemma 1) whatever the function."""
    from ... import compare

    out = {"scored": "failed", "rel_err": math.nan, "full_rel_err": math.nan, "note": ""}
    try:
        gm, _, _, kept = spec.evaluate(A, loss)
    except Exception as exc:  # a method may refuse this input; that is a result
        return {**out, "note": f"{type(exc).__name__}: {exc}"[:120]}
    if not np.isfinite(gm).all():
        return {**out, "note": "non-finite gradient"}
    kept = np.asarray(kept, dtype=bool)
    out["full_rel_err"] = _rel(gm, ref)
    if spec.method.approximate_forward:
        try:
            own = compare.iterated_truth(A, loss, spec, kept)
        except ValueError as exc:
            return {**out, "scored": "not scored", "note": f"no truth for its own function: {exc}"[:120]}
        if not own.digits >= 12:
            return {**out, "scored": "not scored", "note": f"its own function's truth has {own.digits:.3g} digits"}
        return {**out, "scored": "own function", "rel_err": _rel(gm, own.grad),
                "note": "approximate forward: scored against L∘forward"}
    if not kept[d - r:].all():
        return {**out, "scored": "not scored",
                "note": "truncating forward: drops some of the top r pairs, another function"}
    return {**out, "scored": "Lemma 1", "rel_err": out["full_rel_err"]}


# ---------------------------------------------------------------- Lemma 2


def _rank_split(M):
    """(λ / (d·eps·λ_max), U, kept mask) of symmetric PSD matrices M (..., d, d)."""
    lam, U = np.linalg.eigh(M)
    tol = M.shape[-1] * np.finfo(np.float64).eps * np.abs(lam).max(-1, keepdims=True)
    return lam / tol, U, lam > tol


def projector_and_rank(M):
    """(Π, rank) of symmetric PSD matrices M (..., d, d): eigenvectors with λ > d·eps·λ_max."""
    _, U, keep = _rank_split(M)
    P = (U * keep[..., None, :]) @ U.swapaxes(-1, -2)
    return P, keep.sum(-1).astype(int)


def _margins(M):
    """(smallest kept λ, largest dropped |λ|) per matrix, in units of the threshold d·eps·λ_max."""
    ratio, _, keep = _rank_split(M)
    return np.where(keep, ratio, np.inf).min(-1), np.where(keep, 0, np.abs(ratio)).max(-1)


def lemma2_rows(cell):
    d, n = cell["d"], cell["pairs"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, cell["chunk"], 0x1E2]))
    ra = rng.integers(1, d, n)
    rb = np.clip(ra + rng.integers(-2, 3, n), 1, d - 1)
    sigma = 10 ** rng.uniform(-4, 0, n)
    A = np.empty((n, d, d))
    B = np.empty((n, d, d))
    for i in range(n):
        Q = _orth(rng.standard_normal((d, d)))
        Va = Q[:, :ra[i]]
        Vb = _orth(Q[:, :rb[i]] + sigma[i] * rng.standard_normal((d, rb[i])))
        A[i] = (Va * rng.uniform(0.5, 2, ra[i])) @ Va.T
        B[i] = (Vb * rng.uniform(0.5, 2, rb[i])) @ Vb.T
    A = (A + A.swapaxes(1, 2)) / 2
    B = (B + B.swapaxes(1, 2)) / 2
    PA, rank_a = projector_and_rank(A)
    PB, rank_b = projector_and_rank(B)
    norms = np.linalg.norm(PA - PB, ord=2, axis=(1, 2))
    (ka, da), (kb, db) = _margins(A), _margins(B)
    kept, dropped = np.minimum(ka, kb), np.maximum(da, db)
    return [{"part": "lemma2", "chunk": cell["chunk"], "pair": i, "d": d, "rank_a": int(rank_a[i]), "rank_b": int(rank_b[i]),
             "sigma": float(sigma[i]), "proj_dist": float(norms[i]), "kept_over_tol": float(kept[i]),
             "dropped_over_tol": float(dropped[i])} for i in range(n)]


# ---------------------------------------------------------------- descent


def _target(d, r, seed):
    rng = np.random.default_rng(np.random.SeedSequence([seed, d, r, 0xDE5]))
    E = rng.standard_normal((d, r))
    F0 = rng.standard_normal((d, 16))
    return E, F0


def _proj_lemma1(W):
    Wp = np.linalg.pinv(W, rcond=1e-10, hermitian=True)
    return W @ Wp, Wp


def _lemma1_step(F, P_psi, d):
    """(J₂, ∂J₂/∂F, number of projector directions) with Π_W = W W⁺ and the Lemma 1 gradient."""
    W = F @ F.T
    W = (W + W.T) / 2
    P, Wp = _proj_lemma1(W)
    J = 0.5 * float(((P - P_psi) ** 2).sum())
    G = P - P_psi  # ∂J/∂Π
    gW = 2 * (np.eye(d) - P) @ ((G + G.T) / 2) @ Wp
    return J, (gW + gW.T) @ F, int(round(float(np.trace(P))))


def _method_step(F, P_psi, d, spec):
    """The same through ``stabkit.torch.eigh(W, method)``: Π_W from the eigenvectors of the
    numerically nonzero eigenvalues, the gradient by the method's backward."""
    import torch

    from ...torch import eigh

    Ft = torch.tensor(F, dtype=torch.float64, requires_grad=True)
    Wt = Ft @ Ft.T
    Wt = (Wt + Wt.T) / 2
    lam, U = eigh(Wt, spec)
    tol = d * np.finfo(np.float64).eps * float(lam.detach().abs().max())
    mask = (lam > tol).to(torch.float64)
    P = (U * mask) @ U.T
    J_t = 0.5 * ((P - torch.as_tensor(P_psi)) ** 2).sum()
    J_t.backward()
    return float(J_t.detach()), Ft.grad.numpy(), int(mask.sum())


def descent_rows(cell):
    d, r, k, steps, lr = cell["d"], cell["r"], cell["k"], cell["steps"], cell["lr"]
    E, F0 = _target(d, r, cell["seed"])
    F = F0[:, :k].copy()
    P_psi, _ = projector_and_rank(E @ E.T)
    spec = None if cell["method"] in PSEUDO else methods.spec(cell["method"])  # parsed once per cell
    rows = []
    for step in range(steps + 1):
        W = F @ F.T
        rank = int(projector_and_rank((W + W.T) / 2)[1])
        J, gF, proj_rank = _lemma1_step(F, P_psi, d) if spec is None else _method_step(F, P_psi, d, spec)
        finite = bool(np.isfinite(gF).all() and math.isfinite(J))
        rows.append({"part": "descent", "method": cell["method"], "k": k, "seed": cell["seed"], "d": d, "target_rank": r,
                     "step": step, "J2": J, "rank_w": rank, "proj_rank": proj_rank, "grad_norm": float(np.linalg.norm(gF)) if finite else math.nan,
                     "finite": finite})
        if not finite or step == steps:
            break
        F = F - lr * gF
    return rows
