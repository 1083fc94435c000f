"""``pi`` (SVD-PI), ``pi-forward`` (PI) and ``pi-legacy``: gradients through power iteration.

Wang, Dang, Hu, Fua & Salzmann, "Backpropagation-Friendly Eigendecomposition", NeurIPS 2019, Alg. 1.
For eigenvectors in decreasing eigenvalue order k = 1, 2, …, with M_1 = A:

    v_{t+1} = M_k v_t / ‖M_k v_t‖  (t = 0 … T−1),   u_k = v_T,   λ_k = u_kᵀ M_k u_k,
    M_{k+1} = M_k − M_k u_k u_kᵀ                     (deflation, as in the authors' code),

and the gradient is back-propagated through every step (T = 19). Where M_k v_t = 0 exactly (M_k
annihilates v_t: an eigenvalue 0 of a rank-deficient A, the zero matrix, or what deflation leaves
of a rank-r matrix after r stages) the step has no direction: v_{t+1} is then the start vector
with its components along the u's already found removed, normalised, so λ_k = 0 and u_k is a
finite unit vector orthogonal to them (not 0/0 = NaN), and the backward passes nothing through
that step, so a loss of λ alone gets a finite gradient. The authors' code instead clamps
‖M v‖ ≥ 1e-5 (a zero vector u_k there, λ_k = 0 alike); this project does not clamp
(``studies/zca-cifar10-paper.toml``'s deviation table).

``pi`` (SVD-PI). v_0 = the exact eigenvector (a constant), so the forward is the exact
eigendecomposition. Going down from the largest, pair k is kept while λ_k > ε and the energy
ratio γ_k = Σ_{i≤k} λ_i / Σ_i λ_i stays below 1 − ε (γ_k includes λ_k, as in the paper's Sec. 4
and the authors' ZCANormPI, so the smallest pair is always dropped); every later pair is dropped.
The forward's state carries that ``kept`` mask (``Method.kept``): the function SVD-PI computes is
the decomposition truncated to the kept pairs (the ZCA layer whitens with W = U diag(kept·λ^-½) Uᵀ,
Alg. 1), and its backward is the reverse mode of the T iterations of the kept stages only.

Closed form of that reverse mode. From the exact start the iterates stay at u_k, ‖M_k u_k‖ = λ_k
and M_k = Σ_{i not deflated} λ_i u_i u_iᵀ, so the whole reverse pass is diagonal in the eigenbasis
and is the kernel rule ∂L/∂A = sym(U (F ∘ Uᵀ∂L/∂U + diag(kept·∂L/∂λ)) Uᵀ) with, writing
S_n(r) = Σ_{s<n} r^s and indices ascending (index i > k is iterated before k):

    F_ik =  kept_k · S_T(λ_i/λ_k) / λ_k               (i < k),
    F_ik = −kept_i kept_k · S_{T−1}(λ_k/λ_i) / λ_i       (i > k),      F_kk = 0.

It equals autograd through a plain implementation of the T iterations to ≤ 1e-12 (float64,
``tests/test_power_iteration.py``, ``benchmarks/bench_pi.py``) as long as no eigenvalue of M_k
exceeds λ_k in magnitude (true for the positive semi-definite matrices SVD-PI is meant for; on an
indefinite matrix the plain iterates leave u_k through rounding, this is their exact-arithmetic
value). For the same reason the paper's third breaking condition (a Rayleigh quotient off by
more than 10 %) cannot fire from the exact start and is not evaluated. Default ε = 1e-4, the ZCA
layer's ε in the paper. The same F is T power-iteration steps or a T-term geometric series per stage:
the authors' public SVD-PI layers (ZCANormSVDPI / ZCANormPI with ``power_iteration_once``,
github.com/cvlab-epfl/Power-Iteration-SVD, every version from 1e6a6e7 to the last) sum
num_iter + 1 = 20 terms by default (num_iter = 19), which is ``pi:steps=20`` — the ``paper``
preset's SVD-PI row; the copy in Robust-Differentiable-SVD defaults to num_iter = 9, i.e. 10 terms
(the series form equals ``pi:steps=n`` for n terms: tested).

``pi-legacy``: stabkit's ``pi`` up to commit 7f6dbbd, kept only to reproduce older results. Its
forward is the full decomposition (no ``kept``: a layer whitens with all d pairs) while its
backward drops pairs by λ ≤ ε, by an energy rule without λ_k (Σ_{i<k} λ_i ≥ (1 − ε) Σ λ) and by the
Rayleigh condition, iterating in the forward: it differentiates a different function from the
one it returns.

``pi-forward`` (the PI baseline) starts from seeded random vectors, so its forward is power
iteration too. Each stage converges to the eigenvalue of M_k largest in *magnitude*, and pair k
is stage d − k: the pairs come in ascending |λ|, which is ascending λ only where A has no
negative eigenvalue (the positive semi-definite input the method is meant for). On an indefinite A
they are not sorted (spectrum (−5, −1, 2, 3) → λ = (−1, 2, 3, −5)); they are left in that order
because the backward, the ``stop`` rule and the kept mask are all indexed by stage. ``stop=true`` adds the authors' stopping rule (ZCANormPIunstable in their public
code): after the first stage, stop at the first whose Rayleigh quotient is < ε or larger than
the previous stage's; the stopped pairs are dropped (``kept``). Default: no stopping rule. Its random start vectors come
from a small integer hash of (row, column, seed) (:mod:`._pi_starts`).

Scale. The iterating forwards (``pi-forward``, ``pi-authors``, ``pi-legacy``) iterate on c·A, c = 2^−e the
power of two that puts max|A| in [½, 1) (:func:`stabkit._xp.unit_scale`), and return λ̂/c; the backward runs
on the same c·A with c·∂L/∂U (∂L/∂A is of degree 0 in A through λ, −1 through U). The iterates, λ and
∂L/∂A are those of A itself, bit for bit wherever no number leaves the normal range, but ‖M v‖ can
neither overflow (float32 |λ| ≳ 1e19: λ̂ came out up to 2.5× off, the gradient 0) nor underflow.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _xp
from .._xp import Array
from . import taylor
from ._base import MAX_STEPS, Caveat, Method, assemble, boolean, exact_forward, integer, quiet, real
from ._pi_starts import start_vectors


def _matvec(M, v):
    """M v over a batch, in the row form vᵀMᵀ (several times faster than M @ v[..., None] in torch)."""
    return (v[..., None, :] @ _xp.T(M))[..., 0, :]


def _outer(a, b):
    return a[..., :, None] * b[..., None, :]


def _dot(a, b):
    """aᵀb over the last axis, kept as a length-1 axis."""
    return (a[..., None, :] @ b[..., :, None])[..., 0]


def _run(A, starts, steps, order):
    """Power iteration with deflation over the eigen-indices in ``order`` (largest first).

    starts[..., :, k] is the start vector of index k. Per index k it returns the iterates
    v_0 … v_T stacked as (..., T + 1, d), the norms ‖M_k v_t‖ (t < T) as (..., T, 1), the
    Rayleigh quotient λ̂_k and W_k = M_k v_T (the deflation is M_{k+1} = M_k − W_k v_Tᵀ).
    """
    xp = _xp.namespace(A)
    # The Mv = 0 fallback: on numpy only once some item needs it (until then a step is w / n, what
    # the where()s give); on torch at every stage (null.any() would sync a GPU, break torch.compile).
    eager_fallback = _xp.is_torch(xp)
    M, found = A, []
    paths, norms, lam_hat, W = {}, {}, {}, {}
    for k in order:
        s = starts[..., :, k]
        fallback = _orthogonal_start(s, found) if eager_fallback else None
        v, path, ns = s, [s], []
        for _ in range(steps):
            w = _matvec(M, v)
            n = _xp.vector_norm(w)
            null = n == 0
            if fallback is None and null.any():
                fallback = _orthogonal_start(s, found)
            v = w / n if fallback is None else xp.where(null, fallback, w / xp.where(null, xp.ones_like(n), n))
            path.append(v)
            ns.append(n)
        found.append(v)
        paths[k] = xp.stack(path, -2)
        norms[k] = xp.stack(ns, -2) if ns else None
        Mv = _matvec(M, v)
        lam_hat[k] = _dot(v, Mv)[..., 0]
        W[k] = Mv
        M = M - _outer(Mv, v)
    return paths, norms, lam_hat, W


def _orthogonal_start(s: Array, found: list) -> Array:
    """The step's result where M_k v = 0 (M_k annihilates v: an eigenvalue 0, e.g. once deflation has
    left a zero matrix): the start vector s with its components along the vectors already found
    removed (one classical Gram–Schmidt pass: two products with Q = [found], not a loop — on the
    torch path it runs at every stage), normalised — a finite unit vector, orthogonal to them as
    far as they are to each other, with Rayleigh quotient 0. The backward takes it as a constant."""
    if found:
        Q = _xp.namespace(s).stack(found, -1)                   # (..., d, k)
        s = s - (Q @ (_xp.T(Q) @ s[..., None]))[..., 0]
    return s / _xp.vector_norm(s)


def _forward(A: Array, steps: int, start: str, eps: float, seed: int, stop: bool = False) -> tuple[Array, Array, dict]:
    """Iterating forward of ``pi-legacy`` (start="exact") and ``pi-forward`` (start="random")."""
    xp = _xp.namespace(A)
    d = A.shape[-1]
    order = list(range(d - 1, -1, -1))
    if start == "exact":
        lam, U = _xp.eigh(A)  # not torch.linalg.eigh: a backward that rebuilds this state is not logged
        kept = _energy_kept(lam, eps)
        # indices dropped by the λ-only breaking conditions in every batch element contribute
        # nothing to the gradient and cannot influence larger ones: do not iterate them at all
        # (under torch.compile / vmap the count is data, not a Python int: iterate them all,
        # ``active`` masks them out of the gradient the same way)
        if not _xp.is_traced(A):
            order = order[:int(kept.sum(-1).max()) if math.prod(kept.shape) else 0]
        starts = U
    else:
        starts = start_vectors(A, seed)
    c = _xp.unit_scale(A)
    paths, norms, lam_hat, W = _run(A * c, starts, steps, order)
    lam_hat = {k: h / c[..., 0, 0] for k, h in lam_hat.items()}
    state = {"A": A * c, "scale": c, "paths": paths, "norms": norms, "lam_hat": lam_hat, "W": W, "order": order}
    if start == "exact":
        state["active"] = _rayleigh_kept(kept, lam, lam_hat, order)
    else:
        U = xp.stack([paths[k][..., -1, :] for k in range(d)], -1)
        lam = xp.stack([lam_hat[k] for k in range(d)], -1)
        if stop:
            state["active"] = state["kept"] = _stopped_kept(lam, eps)
        else:
            state["active"] = _xp.true_like(lam)
    return lam, U, state


def paper_kept(lam: Array, eps: float) -> Array:
    """SVD-PI's kept pairs (paper Sec. 4, authors' ZCANormPI) for ascending λ (..., d).

    Going down from the largest, pair k is kept while λ_k > ε and Σ_{i≤k} λ_i / Σλ < 1 − ε (γ_k
    includes λ_k), evaluated as "the smaller pairs still hold more than ε·Σλ" (a sum of the pairs
    below k, which is exactly 0 for the smallest: it is always dropped, whatever the rounding).
    """
    xp = _xp.namespace(lam)
    below = xp.cumsum(lam, -1) - lam  # Σ_{j<i} λ_j; exactly 0 at i = 0 (x − x)
    ok = (lam > eps) & (below > eps * lam.sum(-1)[..., None])
    return _xp.flip(_xp.cumall(_xp.flip(ok)))


def _stopped_kept(lam_hat, eps: float):
    """``pi-forward:stop=true``: in stage order (index d−1 first) keep the first stage, then stop at
    the first Rayleigh quotient below ε or above the previous stage's (authors' PI baseline)."""
    desc = _xp.flip(lam_hat)
    ok = desc >= eps
    ok[..., 1:] &= desc[..., 1:] <= desc[..., :-1]
    ok[..., 0] = True
    return _xp.flip(_xp.cumall(ok))


def _energy_kept(lam, eps):
    """``pi-legacy``'s λ-only breaking conditions: going down from the largest, stop at the first
    λ_k ≤ ε or once the larger ones (λ_k excluded, unlike the paper) hold ≥ 1 − ε of Σλ."""
    xp = _xp.namespace(lam)
    desc = _xp.flip(lam)
    captured_before = xp.cumsum(desc, -1) - desc
    ok = (desc > eps) & (captured_before < (1 - eps) * lam.sum(-1)[..., None])
    return _xp.flip(_xp.cumall(ok))


def _rayleigh_kept(kept, lam, lam_hat, order):
    """``kept`` further cut at the first iterated index whose Rayleigh quotient is off by > 10 %
    (the paper's third breaking condition); indices not iterated are dropped."""
    active = kept & False
    if order:
        # order = d−1, d−2, …: the iterated indices are the last len(order) ones, largest first
        xp = _xp.namespace(lam)
        lam_run = _xp.flip(lam[..., lam.shape[-1] - len(order):])
        ok = xp.abs(xp.stack([lam_hat[k] for k in order], -1) - lam_run) <= 0.1 * xp.abs(lam_run)
        active[..., lam.shape[-1] - len(order):] = kept[..., lam.shape[-1] - len(order):] & _xp.flip(_xp.cumall(ok))
    return active


def backward(state: dict, gU: Array, glam: Array, *, authors_step: bool = False, **_) -> Array:
    """Reverse-mode through the iterations and deflations of ``_run`` (no autograd needed).

    Dropped stages are skipped with ``where`` (not multiplied by 0), so a non-finite value in a
    dropped stage cannot leak into the kept stages. A step with ‖M_k v‖ = 0 passes nothing back.
    ``authors_step``: hand each step's gradient back as M h_t instead of Mᵀ h_t (``pi-authors``).
    ``state["A"]`` is the iterated c·A, so ∂L/∂U enters times c (the module docstring's Scale).
    """
    A, paths, norms, W = state["A"], state["paths"], state["norms"], state["W"]
    gU = gU * state["scale"]
    order, active = state["order"], state["active"]
    xp = _xp.namespace(A)
    zero = A[..., 0] * 0

    def keep(k, x, fallback):
        flag = active[..., k]
        return xp.where(flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim)), x, fallback)

    W_kept = {k: keep(k, W[k], zero) for k in order}
    v_kept = {k: keep(k, paths[k][..., -1, :], zero) for k in order}
    M = A
    for k in order:
        M = M - _outer(W_kept[k], v_kept[k])
    gM = A * 0
    for k in reversed(order):
        path, v = paths[k], paths[k][..., -1, :]
        M = M + _outer(W_kept[k], v_kept[k])  # M_k, rebuilt from M_{k+1}
        MT = _xp.T(M)
        step = M if authors_step else MT
        # deflation M_{k+1} = M_k − (M_k v) vᵀ
        gMv = _matvec(gM, v)
        gv = -(_matvec(_xp.T(gM), W[k]) + _matvec(MT, gMv))
        g = gM - _outer(gMv, v)
        # Rayleigh quotient λ = vᵀ M_k v, then the loss's own gradient for column k
        gl = glam[..., k]
        g = g + gl[..., None, None] * _outer(v, v)
        gv = gv + gl[..., None] * (_matvec(M, v) + _matvec(MT, v)) + gU[..., :, k]
        # the T steps v_t = M v_{t−1} / ‖M v_{t−1}‖ backwards: h_t = (I − v_t v_tᵀ) ∂v_t / ‖M v_{t−1}‖,
        # then ∂v_{t−1} = Mᵀ h_t and ∂M += h_t v_{t−1}ᵀ (summed over t in one product at the end)
        T = path.shape[-2] - 1
        if T:
            hs = []
            for t in range(T, 0, -1):
                vt = path[..., t, :]
                n = norms[k][..., t - 1, :]
                null = n == 0  # v_t is _orthogonal_start's constant: nothing flows back through it
                h = xp.where(null, n, (gv - vt * _dot(vt, gv)) / xp.where(null, xp.ones_like(n), n))
                hs.append(h)
                gv = _matvec(step, h)
            g = g + xp.stack(hs[::-1], -1) @ path[..., :-1, :]
        gM = keep(k, g, gM)
    return _xp.sym(gM)


def _series(r, n: int, xp):
    """S_n(r) = Σ_{s<n} r^s by Horner (0 for n = 0)."""
    if n <= 0:
        return r * 0
    total = xp.ones_like(r)
    for _ in range(n - 1):
        total = 1 + r * total
    return total


def kernel(lam: Array, kept: Array, steps: int) -> Array:
    """SVD-PI's F (see the module docstring) for ascending λ (..., d) and the kept mask."""
    xp = _xp.namespace(lam)
    li, lk = lam[..., :, None], lam[..., None, :]
    order = _xp.index_sign(li * lk)  # +1 where i < k (i is iterated after k), −1 where i > k
    later, earlier = order > 0, order < 0
    r = xp.where(later, li, lk) / xp.where(later, lk, li)  # λ of the later stage / λ of the earlier
    s_short = _series(r, steps - 1, xp)
    s_full = 1 + r * s_short if steps > 0 else s_short
    zero = xp.zeros_like(r)
    upper = xp.where(later & kept[..., None, :], s_full / lk, zero)
    lower = xp.where(earlier & kept[..., :, None] & kept[..., None, :], -s_short / li, zero)
    return upper + lower


def _svd_pi_forward(A, steps=19, eps=1e-4):
    lam, U, _ = exact_forward(A)
    return lam, U, {"U": U, "lam": lam, "kept": paper_kept(lam, eps)}


def _svd_pi_kept(lam, eps=1e-4, **_):
    return paper_kept(lam, eps)


def _pi_forward_kept(lam, stop=False, eps=1e-4, **_):
    return _stopped_kept(lam, eps) if stop else None


def _svd_pi_backward(state, gU, glam, steps=19, eps=1e-4, **_):
    xp = _xp.namespace(glam)
    with _xp.errstate(glam):  # no numpy context on the torch path (torch.compile fullgraph)
        kept = state["kept"] if "kept" in state else paper_kept(state["lam"], eps)
        F = kernel(state["lam"], kept, int(steps))
        return assemble(state["U"], F, gU, xp.where(kept, glam, glam * 0))


def _legacy_forward(A, steps=19, eps=1e-4):
    return _forward(A, steps, "exact", eps, 0)


def _pi_forward(A, steps=19, seed=0, stop=False, eps=1e-4):
    return _forward(A, steps, "random", eps, seed, stop=bool(stop))


def _pi_forward_iteration(A, steps=19, seed=0, **_):
    """The starts (in A's dtype, as the forward makes them, widened exactly) and step count."""
    return np.asarray(start_vectors(A, seed), dtype=np.float64), int(steps)


@quiet
def _svd_pi_bound(lam, steps=19, eps=1e-4, **_):
    """SVD-PI's own F (the closed form above, on the pairs it keeps): the monitor logs its max |F|.
    NaN throughout where λ is not finite (the kept mask would zero what cannot be computed)."""
    F = kernel(lam, paper_kept(lam, eps), int(steps))
    return F + 0 * lam.sum(-1)[..., None, None]


def _pi_forward_bound(lam, steps=19, **_):
    return taylor.kernel(lam, K=steps, eps=0.0)


#: What ``stabkit monitor report`` says where a layer runs ``pi`` or ``pi-legacy`` (README, Training).
TRUNCATION_CAVEAT = Caveat(
    "SVD-PI computes a truncated decomposition",
    "the backward is {backward} on {n}×{n} matrices: the layer's function keeps only the pairs "
    "SVD-PI's energy rule keeps (the smallest is always dropped).",
    "Nothing to fix if the truncation is intended (NeurIPS 2019, Alg. 1); if the layer should use "
    "every pair, use `taylor` instead.",
    "On the ZCA layer's step-0 covariance `pi` is 0.007° (d = 16) / 4.6° (d = 32) from the truth of "
    "its own function and 85° / 117° from full whitening (`stabkit compare`, README, Training).",
    min_n=16,
)
LEGACY_CAVEAT = Caveat(
    "SVD-PI backward of another function",
    "the backward is {backward} on {n}×{n} matrices: it whitens with every pair but "
    "differentiates the decomposition without the pairs it drops.",
    "Use `pi` (its forward returns the truncated decomposition it differentiates) or `taylor`.",
    "On the ZCA layer's step-0 covariance, `pi-legacy`'s gradient is 73.6° (d = 16) and 126° "
    "(d = 32) from the certified truth of what it returns; `pi` is 0.007° / 4.6° from the truth of "
    "its truncated function (README, Training).",
    min_n=16, warning=True,
)

SVD_PI = Method(
    "pi", _svd_pi_backward, {"steps": 19, "eps": 1e-4}, forward=_svd_pi_forward,
    paper="Wang et al., NeurIPS 2019 (SVD-PI), Alg. 1",
    summary="exact forward truncated to the kept pairs, backward of 19 PI steps with deflation",
    kept_rule=_svd_pi_kept, domains={"steps": integer(1, MAX_STEPS), "eps": real(0.0, 1.0)},
    exact_state=True, bound_kernel=_svd_pi_bound, paper_name="SVD-PI", caveat=TRUNCATION_CAVEAT,
    paper_variant="pi:steps=20",
)
PI_LEGACY = Method(
    "pi-legacy", backward, {"steps": 19, "eps": 1e-4}, forward=_legacy_forward,
    paper="stabkit's pi up to 7f6dbbd (not the paper)",
    summary="full forward, backward dropping pairs (old energy rule): differentiates another function",
    domains={"steps": integer(1, MAX_STEPS), "eps": real(0.0, 1.0)}, caveat=LEGACY_CAVEAT,
)
PI_FORWARD = Method(
    "pi-forward", backward, {"steps": 19, "seed": 0, "stop": False, "eps": 1e-4}, forward=_pi_forward,
    paper="Wang et al., NeurIPS 2019 (PI baseline)", summary="power iteration with deflation, forward and backward",
    kept_rule=_pi_forward_kept,
    domains={"steps": integer(1, MAX_STEPS), "seed": integer(0), "stop": boolean(), "eps": real(0.0, 1.0)},
    bound_kernel=_pi_forward_bound, paper_name="PI", iteration=_pi_forward_iteration, paper_variant="pi-authors:stop=true",
)
