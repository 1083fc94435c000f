"""Ionescu et al. (ICCV 2015) layers: SVD (Prop. 1), EIG (Prop. 2), matrix functions (Props. 3–4,
DeepO2P), projector (Lemma 1), normalized cuts (Props. 5–6, low-rank affinity) — each backward against an
mpmath finite-difference ground truth (≤ 1e-10 relative in float64) and torch autograd."""

import mpmath as mp
import numpy as np
import pytest
import torch

from stabkit import layers
from tests.conftest import build
from tests._helpers import (
    DPS, mp_grad, mp_inner, mp_matfun, mp_range_projector, mp_sym, rel, to_mp,
)

RNG = np.random.default_rng(7)
G1 = RNG.standard_normal((6, 6))
G2 = RNG.standard_normal((4, 4))


def _t(x, dtype=torch.float64, grad=True):
    return torch.tensor(np.asarray(x), dtype=dtype).requires_grad_(grad)


def _grad(loss_fn, x_np, dtype=torch.float64):
    x = _t(x_np, dtype)
    (g,) = torch.autograd.grad(loss_fn(x), x)
    return g.double().numpy()


# ----------------------------------------------------------------------------- SVD, Prop. 1

def _svd_loss_torch(U, S, V):
    G1t, G2t = (torch.as_tensor(G, dtype=S.dtype) for G in (G1, G2))
    PU = (U * torch.sin(S)[..., None, :]) @ U.mT          # needs the D term (m > n)
    PV = (V * S[..., None, :] ** 2) @ V.mT
    return (G1t * PU).sum() + (G2t * PV).sum() + (S ** 3).sum()


def _svd_loss_mp(X):
    U, S, V = mp.svd_r(X, full_matrices=False)         # X = U diag(S) V
    n = len(S)
    PU = U * mp.diag([mp.sin(S[i]) for i in range(n)]) * U.T
    PV = V.T * mp.diag([S[i] ** 2 for i in range(n)]) * V
    return mp_inner(to_mp(G1), PU) + mp_inner(to_mp(G2), PV) + mp.fsum(S[i] ** 3 for i in range(n))


def _tall(m=6, n=4, seed=3, sigmas=(3.0, 2.2, 1.5, 0.8)):
    rng = np.random.default_rng(seed)
    P, _ = np.linalg.qr(rng.standard_normal((m, n)))
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (P * np.array(sigmas)) @ Q.T


def test_svd_backward_matches_mpmath_and_autograd():
    X = _tall()
    g = _grad(lambda x: _svd_loss_torch(*layers.svd(x)), X)
    truth = mp_grad(_svd_loss_mp, X)
    assert rel(g, truth) < 1e-10

    def auto(x):
        U, S, Vh = torch.linalg.svd(x, full_matrices=False)
        return _svd_loss_torch(U, S, Vh.mT)

    assert rel(g, _grad(auto, X)) < 1e-12


def test_svd_square_batched_float32():
    X = np.stack([_tall(4, 4, seed=s, sigmas=(4.0, 3.0, 2.0, 1.0)) for s in range(6)]).reshape(2, 3, 4, 4)
    Xt = _t(X)
    U, S, V = layers.svd(Xt)
    assert U.shape == (2, 3, 4, 4) and S.shape == (2, 3, 4) and V.shape == (2, 3, 4, 4)
    assert torch.allclose(U @ torch.diag_embed(S) @ V.mT, Xt, atol=1e-12)
    loss = lambda x: ((layers.svd(x)[0][..., :2] ** 2).sum(-1) * torch.arange(4.0, dtype=x.dtype)).sum() + (layers.svd(x)[1] ** 2).sum()
    g64 = _grad(loss, X)
    g32 = _grad(loss, X, torch.float32)
    assert rel(g32, g64) < 1e-4
    # (σ²) part alone: ∂Σσ²/∂X = 2X exactly
    assert rel(_grad(lambda x: (layers.svd(x)[1] ** 2).sum(), X), 2 * X) < 1e-13


# ----------------------------------------------------------------------------- EIG, Prop. 2

@pytest.mark.parametrize("method", ["analytic", "lorentzian"])
def test_eig_layer_is_prop2_through_registry(method):
    A = build([0.3, 1.1, 2.0, 3.7, 5.0], seed=4)
    B = RNG.standard_normal((5, 5))
    w = np.array([0.5, -1.0, 2.0, 0.3, 1.5])

    def loss(a):
        lam, U = layers.eig(a, method=method)
        return ((U * (torch.as_tensor(B) @ U)).sum(-2) * torch.as_tensor(w)).sum() + (lam ** 2).sum()

    def loss_mp(M):
        S = mp_sym(M)
        E, Q = mp.eigsy(S)
        order = sorted(range(5), key=lambda i: E[i])
        Bm = to_mp(B)
        return mp.fsum(w[k] * (Q[:, i].T * Bm * Q[:, i])[0] for k, i in enumerate(order)) + mp.fsum(e ** 2 for e in E)

    g = _grad(loss, A)
    tol = 1e-10 if method == "analytic" else 1e-9   # Lorentzian ε = 1e-12 broadening: error ~ ε/gap²
    assert rel(g, mp_grad(loss_mp, A)) < tol

    def auto(a):
        lam, U = torch.linalg.eigh((a + a.mT) / 2)
        return ((U * (torch.as_tensor(B) @ U)).sum(-2) * torch.as_tensor(w)).sum() + (lam ** 2).sum()

    assert rel(g, _grad(auto, A)) < tol


# ----------------------------------------------------------------------------- matrix functions, Props. 3–4

FUNS = {"log": (dict(fn="log"), mp.log), "sqrt": (dict(fn="sqrt"), mp.sqrt),
        "power": (dict(fn="power", p=-0.5), lambda x: x ** mp.mpf(-0.5))}


@pytest.mark.parametrize("name", list(FUNS))
def test_matrix_functions_svd_and_eig_routes_match_mpmath(name):
    kw, g_mp = FUNS[name]
    eps = 1e-2
    F = _tall(6, 4, seed=5, sigmas=(2.0, 1.4, 1.0, 0.5))
    Gt = torch.as_tensor(G2)

    def truth_fun(M):
        return mp_inner(to_mp(G2), mp_matfun(M.T * M + eps * mp.eye(4), g_mp))

    truth = mp_grad(truth_fun, F)
    g_svd = _grad(lambda f: (Gt * layers.svd_matrix_function(f, eps=eps, **kw)).sum(), F)
    g_eig = _grad(lambda f: (Gt * layers.eig_matrix_function(f.mT @ f, eps=eps, **kw)).sum(), F)
    g_dk = _grad(lambda f: (Gt * layers.svd_dk_matrix_function(f, eps=eps, **kw)).sum(), F)
    assert rel(g_svd, truth) < 1e-10
    assert rel(g_eig, truth) < 1e-10
    assert rel(g_dk, truth) < 1e-10
    # values: both routes equal g(FᵀF + εI) computed in mpmath
    with mp.workdps(DPS):
        C_true = np.array(mp_matfun(to_mp(F).T * to_mp(F) + eps * mp.eye(4), g_mp).tolist(), dtype=float)
    Ft = torch.as_tensor(F)
    assert rel(layers.svd_matrix_function(Ft, eps=eps, **kw).numpy(), C_true) < 1e-13
    assert rel(layers.eig_matrix_function(Ft.mT @ Ft, eps=eps, **kw).numpy(), C_true) < 1e-13
    assert rel(layers.svd_dk_matrix_function(Ft, eps=eps, **kw).numpy(), C_true) < 1e-13


@pytest.mark.parametrize("name", list(FUNS))
def test_divided_differences_are_cancellation_free(name):
    from stabkit.layers.divided_differences import divided_differences
    kw, g_mp = FUNS[name]
    sig = np.array([1.0, 1.0 - 1e-9, 1e-3, 1e-3 * (1 + 1e-12), 0.0])
    eps = 1e-6
    mu = sig ** 2 + eps
    D = divided_differences(torch.as_tensor(mu), torch.as_tensor(sig), kw["fn"], kw.get("p")).numpy()
    with mp.workdps(DPS):
        s_mp = [mp.mpf(float(x)) for x in sig]
        m_mp = [x ** 2 + mp.mpf(eps) for x in s_mp]
        for i in range(5):
            for j in range(5):
                if i == j:
                    ref = mp.diff(g_mp, m_mp[i])
                else:
                    ref = (g_mp(m_mp[i]) - g_mp(m_mp[j])) / (m_mp[i] - m_mp[j])
                assert abs(D[i, j] - float(ref)) <= 1e-13 * abs(float(ref))


def test_o2p_rank_deficient_square_F_svd_dk_accurate():
    # FᵀF with two exactly-zero eigenvalues: SVD-DK stays at rounding level against mpmath
    rng = np.random.default_rng(12)
    P, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    F = (P * np.sqrt([0.0, 0.0, 0.3, 0.6, 1.0])) @ Q.T
    eps = 1e-3
    G = G1[:5, :5]
    truth = mp_grad(lambda M: mp_inner(to_mp(G), mp_matfun(M.T * M + eps * mp.eye(5), mp.log)), F)
    g = _grad(lambda f: (torch.as_tensor(G) * layers.o2p(f, eps=eps, route="svd-dk")).sum(), F)
    assert rel(g, truth) < 1e-10


def test_o2p_routes_agree_values_and_gradients_including_wide_F():
    eps = 1e-3
    for shape, seed in (((7, 5), 0), ((3, 5), 1)):       # tall and wide (rank-deficient FᵀF) features
        F = np.random.default_rng(seed).standard_normal(shape)
        Gt = torch.as_tensor(G1[:5, :5])
        vals, grads = {}, {}
        for route in ("svd", "eig", "svd-dk"):
            f = _t(F)
            C = layers.o2p(f, eps=eps, route=route)
            (g,) = torch.autograd.grad((Gt * C).sum(), f)
            vals[route], grads[route] = C.detach().numpy(), g.numpy()
        truth = mp_grad(lambda M: mp_inner(to_mp(G1[:5, :5]), mp_matfun(M.T * M + eps * mp.eye(5), mp.log)), F)
        assert rel(vals["svd"], vals["eig"]) < 1e-12
        assert rel(grads["svd"], truth) < 1e-10
        assert rel(grads["svd-dk"], truth) < 1e-10
        assert rel(vals["svd-dk"], vals["eig"]) < 1e-12
        if shape[0] >= shape[1]:
            assert rel(grads["eig"], truth) < 1e-10
        # wide F: FᵀF has a (numerically) repeated zero eigenvalue, where the EIG route's
        # 1/(λ_j − λ_i) is ill-conditioned — the instability studied in o2p_stability; the
        # SVD route stays accurate (asserted above)


def test_o2p_float32_and_batch():
    F = np.random.default_rng(3).standard_normal((2, 3, 8, 4))
    G = torch.as_tensor(G2)
    for route in ("svd", "eig", "svd-dk"):
        g64 = _grad(lambda f: (G * layers.o2p(f, eps=1e-2, route=route)).sum(), F)
        g32 = _grad(lambda f: (G * layers.o2p(f, eps=1e-2, route=route)).sum(), F, torch.float32)
        assert g64.shape == (2, 3, 8, 4)
        assert rel(g32, g64) < 1e-4


# ----------------------------------------------------------------------------- projector, Lemma 1

def test_projector_full_column_rank_matches_mpmath():
    A = _tall(6, 3, seed=8, sigmas=(2.0, 1.0, 0.7))
    G = G1
    g = _grad(lambda a: (torch.as_tensor(G) * layers.projector(a)).sum(), A)
    truth = mp_grad(lambda M: mp_inner(to_mp(G), mp_range_projector(M)), A)
    assert rel(g, truth) < 1e-10
    assert rel(layers.projector(torch.as_tensor(A)).numpy(), A @ np.linalg.pinv(A)) < 1e-13


def test_projector_rank_deficient_symmetric_psd_on_fixed_rank_manifold():
    # A = B Bᵀ (6×6, rank 2): the derivative exists along rank-preserving directions; test via B.
    B = np.random.default_rng(9).standard_normal((6, 2))
    G = G1

    def loss(b):
        return (torch.as_tensor(G) * layers.projector(b @ b.mT, rank=2)).sum()

    truth = mp_grad(lambda M: mp_inner(to_mp(G), mp_range_projector(M)), B)
    assert rel(_grad(loss, B), truth) < 1e-10
    # batched float32
    Bb = np.random.default_rng(10).standard_normal((4, 6, 2))
    g32 = _grad(lambda b: (torch.as_tensor(G, dtype=b.dtype) * layers.projector(b @ b.mT, rank=2)).sum(), Bb, torch.float32)
    g64 = _grad(lambda b: (torch.as_tensor(G) * layers.projector(b @ b.mT, rank=2)).sum(), Bb)
    assert rel(g32, g64) < 1e-3


# ----------------------------------------------------------------------------- normalized cuts

M_PTS, D_FEAT = 7, 3
E_IND = np.zeros((M_PTS, 2))
E_IND[:4, 0] = 1
E_IND[4:, 1] = 1


def _ncut_inputs(seed=11):
    rng = np.random.default_rng(seed)
    F = rng.uniform(0.2, 1.0, (M_PTS, D_FEAT))
    lam = np.array([1.5, 0.8, 0.4])
    return F, lam


def _j_mp(which, F, lam):
    W = F * mp.diag(lam) * F.T
    E = to_mp(E_IND)
    if which == 2:
        P = mp_range_projector(F) - mp_range_projector(E)
    else:
        deg = [mp.fsum(W[i, j] for j in range(M_PTS)) for i in range(M_PTS)]
        S = mp.diag([1 / mp.sqrt(x) for x in deg])
        T = mp.diag([mp.sqrt(x) for x in deg])
        P = mp_range_projector(S * F) - mp_range_projector(T * E)
    return mp_inner(P, P) / 2


@pytest.mark.parametrize("which", [1, 2])
def test_ncuts_gradients_for_F_and_Lambda_match_mpmath(which):
    F, lam = _ncut_inputs()
    Et = torch.as_tensor(E_IND)
    fn = layers.ncut_j1 if which == 1 else layers.ncut_j2
    f, l = _t(F), _t(lam)
    J = fn(layers.low_rank_affinity(f, l), Et, rank=D_FEAT)
    gF, gl = torch.autograd.grad(J, (f, l))
    with mp.workdps(DPS):
        lam_mp = [mp.mpf(x) for x in lam]
        assert abs(float(J.detach()) - float(_j_mp(which, to_mp(F), lam_mp))) < 1e-13
    truth_F = mp_grad(lambda M: _j_mp(which, M, [mp.mpf(x) for x in lam]), F)
    truth_l = mp_grad(lambda v: _j_mp(which, to_mp(F), [v[0, i] for i in range(D_FEAT)]), lam)
    assert rel(gF.numpy(), truth_F) < 1e-10
    if which == 2:
        # Prop. 6: Π_W does not depend on Λ, so ∂J₂/∂Λ = 0 (up to rounding)
        assert np.abs(gl.numpy()).max() < 1e-13 * np.abs(gF.numpy()).max()
        assert np.abs(truth_l).max() < 1e-20
    else:
        assert rel(gl.numpy(), truth_l) < 1e-10
        assert np.abs(truth_l).max() > 1e-6          # J₁ does depend on Λ (through the degrees)


def test_ncuts_batched_float32():
    F = np.stack([_ncut_inputs(s)[0] for s in range(3)])
    lam = np.array([1.5, 0.8, 0.4])
    Et = torch.as_tensor(E_IND)
    for fn in (layers.ncut_j1, layers.ncut_j2):
        def loss(f):
            return fn(layers.low_rank_affinity(f, torch.as_tensor(lam, dtype=f.dtype)), Et, rank=D_FEAT).sum()
        g64 = _grad(loss, F)
        g32 = _grad(loss, F, torch.float32)
        assert g64.shape == (3, M_PTS, D_FEAT)
        assert rel(g32, g64) < 1e-3
