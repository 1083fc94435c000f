"""LESS and IED (PMaF): principal vector = eigh's top eigenvector, implicit backward = the analytic
gradient and the mpmath ground truth on separated spectra; batch, float32, k > 1, power solver."""

import importlib

import mpmath as mp
import numpy as np
import pytest
import torch

from stabkit import layers
from stabkit import torch as sktorch
from stabkit.errors import EigensolverError
from stabkit.layers.ied import fix_sign
from tests.conftest import build
from tests._helpers import mp_grad, mp_sym, rel, to_mp

LAM = [0.2, 0.9, 1.7, 2.4, 4.0]
B = np.random.default_rng(21).standard_normal((5, 5))
W = np.random.default_rng(22).standard_normal(5)


def _loss_y(y, lam):
    # sign-invariant loss of the principal pair
    Bt = torch.as_tensor(B, dtype=y.dtype)
    return (y * (Bt @ y[..., None])[..., 0]).sum() + ((torch.as_tensor(W, dtype=y.dtype) * y).sum(-1) ** 2).sum() + (lam ** 2).sum()


def _loss_mp(M):
    S = mp_sym(M)
    E, Q = mp.eigsy(S)
    i = max(range(S.rows), key=lambda j: E[j])
    y = Q[:, i]
    return (y.T * to_mp(B) * y)[0] + mp.fsum(W[j] * y[j] for j in range(S.rows)) ** 2 + E[i] ** 2


LAYERS = {
    "less": lambda a: layers.less(a),
    "ied-eigh": lambda a: (lambda r: (r[0][..., 0], r[1][..., 0]))(layers.ied(a)),
    "ied-power": lambda a: (lambda r: (r[0][..., 0], r[1][..., 0]))(layers.ied(a, solver="power")),
}


def _analytic(a):
    lam, U = sktorch.eigh(a, method="analytic")
    return fix_sign(U[..., -1:])[..., 0], lam[..., -1]


@pytest.mark.parametrize("name", list(LAYERS))
def test_principal_vector_and_gradient_match_eigh_analytic_and_mpmath(name):
    A = build(LAM, seed=5)
    truth = mp_grad(_loss_mp, A)
    a = torch.tensor(A, requires_grad=True)
    y, lam = LAYERS[name](a)
    (g,) = torch.autograd.grad(_loss_y(y, lam), a)
    a2 = torch.tensor(A, requires_grad=True)
    y2, lam2 = _analytic(a2)
    (g2,) = torch.autograd.grad(_loss_y(y2, lam2), a2)
    assert rel(y.detach().numpy(), y2.detach().numpy()) < 1e-12
    assert abs(float(lam.detach()) - LAM[-1]) < 1e-12
    assert rel(g.numpy(), g2.numpy()) < 1e-10
    assert rel(g.numpy(), truth) < 1e-10
    # torch autograd of torch.linalg.eigh on the distinct spectrum
    a3 = torch.tensor(A, requires_grad=True)
    lam3, U3 = torch.linalg.eigh(a3)
    (g3,) = torch.autograd.grad(_loss_y(fix_sign(U3[..., -1:])[..., 0], lam3[..., -1]), a3)
    assert rel(g.numpy(), g3.numpy()) < 1e-10


@pytest.mark.parametrize("name", list(LAYERS))
def test_batch_and_float32(name):
    A = np.stack([build(np.array(LAM) * (1 + 0.1 * s), seed=s) for s in range(6)]).reshape(2, 3, 5, 5)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        a = torch.tensor(A, dtype=dtype, requires_grad=True)
        y, lam = LAYERS[name](a)
        assert y.shape == (2, 3, 5) and lam.shape == (2, 3)
        (grads[dtype],) = torch.autograd.grad(_loss_y(y, lam), a)
    a = torch.tensor(A, requires_grad=True)
    y2, lam2 = _analytic(a)
    (g2,) = torch.autograd.grad(_loss_y(y2, lam2), a)
    assert rel(grads[torch.float64].numpy(), g2.numpy()) < 1e-10
    assert rel(grads[torch.float32].double().numpy(), g2.numpy()) < 1e-4


@pytest.mark.parametrize("solver", ["eigh", "power"])
def test_ied_top_k_matches_analytic(solver):
    A = build([0.1, 0.5, 1.2, 2.6, 3.9, 6.0], seed=8)        # PSD: power iteration's top-|λ| = top-λ
    Bk = torch.as_tensor(np.random.default_rng(3).standard_normal((6, 6)))
    a = torch.tensor(A, requires_grad=True)
    Y, lam = layers.ied(a, k=3, solver=solver)
    assert np.allclose(lam.detach().numpy(), [6.0, 3.9, 2.6], atol=1e-12)
    loss = (Y * (Bk @ Y)).sum() + (lam ** 3).sum()
    (g,) = torch.autograd.grad(loss, a)
    a2 = torch.tensor(A, requires_grad=True)
    lam2, U = sktorch.eigh(a2)
    Y2 = fix_sign(U[..., -3:].flip(-1))
    (g2,) = torch.autograd.grad((Y2 * (Bk @ Y2)).sum() + (lam2[-3:] ** 3).sum(), a2)
    assert rel(Y.detach().numpy(), Y2.detach().numpy()) < 1e-11
    assert rel(g.numpy(), g2.numpy()) < 1e-10


def test_less_recovers_principal_vector_of_larger_indefinite_matrix():
    rng = np.random.default_rng(4)
    lam = np.concatenate([rng.uniform(-3, 2, 39), [3.0]])
    A = build(lam, seed=6)
    y, l = layers.less(torch.as_tensor(A))
    ref = np.linalg.eigh(A)[1][:, -1]
    assert abs(abs(float(y.numpy() @ ref)) - 1) < 1e-12
    assert abs(float(l) - 3.0) < 1e-12


def test_cholesky_path_d80_matches_analytic():
    # d ≥ 64 takes the Cholesky branch of the implicit backward
    lam = np.linspace(0.1, 3.0, 80)
    lam[-1] = 4.0
    A = build(lam, seed=13)
    Bk = torch.as_tensor(np.random.default_rng(5).standard_normal((80, 80)))

    def loss(y):
        return (y * (Bk @ y)).sum()

    a = torch.tensor(A, requires_grad=True)
    y2 = fix_sign(sktorch.eigh(a)[1][..., -1:])[..., 0]
    (g2,) = torch.autograd.grad(loss(y2), a)
    for fn in (lambda x: layers.less(x)[0], lambda x: layers.ied(x)[0][..., 0]):
        a = torch.tensor(A, requires_grad=True)
        (g,) = torch.autograd.grad(loss(fn(a)), a)
        assert rel(g.numpy(), g2.numpy()) < 1e-10


@pytest.mark.parametrize("dtype, e", [(torch.float64, 600), (torch.float64, -600), (torch.float32, 80), (torch.float32, -80)],
                         ids=["f64-big", "f64-small", "f32-big", "f32-small"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_extreme_scales_give_the_scaled_value_and_gradient(name, dtype, e):
    """y(2^e·A) = y(A), λ(2^e·A) = 2^e·λ(A), and ∂L/∂A of a loss of y scales by 2^−e. At these scales
    ‖A‖_F² over- or underflows (2^±1200 in float64, 2^±160 in float32): the power solver took its
    first iterate for converged (|⟨y, u₁⟩| ≈ 0.05), LESS raised 'not the principal one', and the
    backward's shift c = ‖A‖_F (inf or clamped to tiny) gave NaN or gradients 20% off. Reference:
    eigh's analytic gradient of the unscaled float64 A."""
    A = build(LAM, seed=5)
    b = torch.as_tensor(W)
    a = torch.tensor(A, requires_grad=True)
    (g_ref,) = torch.autograd.grad((_analytic(a)[0] * b).sum(), a)
    u = np.linalg.eigh(A)[1][:, -1]
    s = 2.0 ** e
    a = torch.tensor(A * s, dtype=dtype, requires_grad=True)
    y, lam = LAYERS[name](a)
    (g,) = torch.autograd.grad((y * b.to(dtype)).sum(), a)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(abs(float(y.detach().double() @ torch.as_tensor(u))) - 1) < tol
    assert abs(float(lam.detach()) / s - LAM[-1]) < tol * LAM[-1]
    assert rel(g.double().numpy() * s, g_ref.numpy()) < (1e-10 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("A", [np.diag([1.0, 2.0, 2.0]), np.zeros((3, 3))], ids=["diag-tie", "zero"])
def test_backward_at_an_exact_tie_is_an_eigensolver_error(name, A):
    """A top eigenvalue repeated exactly (diag(1, 2, 2); A = 0) has no eigenvector derivative: λI − A +
    c yyᵀ is exactly singular. torch's LinAlgError escaped from the backward; it is EigensolverError, the
    type the training loop records. A forward whose vector lands off the tie's basis by rounding (LESS; the
    power solver, depending on the machine's kernels: exact on an AMD EPYC, 4.9e-15 off on a Xeon with
    AVX-512) makes that matrix singular only up to rounding: the backward then returns 1/eps-sized entries."""
    a = torch.tensor(A, requires_grad=True)
    y, _ = LAYERS[name](a)
    try:
        (g,) = torch.autograd.grad((y * torch.as_tensor(W[:3])).sum(), a)
    except EigensolverError as exc:
        assert f"{name.split('-')[0]} backward: λI − A + c yyᵀ is singular" in str(exc)
    else:
        assert float(g.abs().max()) > 1e10


@pytest.mark.parametrize("dtype, a", [(torch.float64, 1.5e308), (torch.float32, 3e38)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_entries_near_the_dtype_maximum_are_not_lost_to_the_symmetrization(name, dtype, a):
    """[[a, a/15], [a/15, −a/1.5]] with a near the largest float: (A + Aᵀ)/2 overflowed to inf on the
    diagonal, and the layers returned NaN (ied) or 'not the principal one (λ = nan)' (less) for a finite,
    symmetric input. Reference: the closed-form top eigenpair of the 2 × 2 A / a."""
    A = torch.tensor([[a, a / 15], [a / 15, -a / 1.5]], dtype=torch.float64).to(dtype)
    p, b, q = (float(x) / a for x in (A[0, 0], A[0, 1], A[1, 1]))
    lam = (p + q) / 2 + np.hypot((p - q) / 2, b)
    v = np.array([b, lam - p]) / np.hypot(b, lam - p)
    y, l = LAYERS[name](A)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    assert abs(float(l) / a - lam) < tol * lam
    assert abs(abs(float(y.double().numpy() @ v)) - 1) < tol


def _sym_input(fn, k):
    """fn of the symmetric part (gradcheck perturbs single entries; the layers refuse asymmetry), the
    top-k pairs as one flat tuple."""
    return lambda x: tuple(t[..., :k] for t in fn((x + x.transpose(-1, -2)) / 2))


GRADCHECK_LAYERS = {
    "less": (lambda a: (lambda r: (r[0][..., None], r[1][..., None]))(layers.less(a)), [1]),
    "ied-eigh": (lambda a: layers.ied(a, k=3), [1, 2, 3]),
    "ied-power": (lambda a: layers.ied(a, k=3, solver="power"), [1, 2, 3]),
}


@pytest.mark.parametrize("spectrum", [[0.0, 0.9, 1.7, 2.4, 4.0], [-3.1, -0.4, 0.0, 1.8, 4.0]], ids=["psd-rank-4", "indefinite"])
@pytest.mark.parametrize("name", list(GRADCHECK_LAYERS))
def test_gradient_passes_gradcheck_in_float64(name, spectrum):
    """The implicit backward against central finite differences (torch.autograd.gradcheck), batched,
    top-k for k = 1..3 (distinct magnitudes, so the power solver's top-|λ| pairs are the same ones)."""
    fn, ks = GRADCHECK_LAYERS[name]
    A = torch.tensor(np.stack([build(spectrum, seed=s) for s in (11, 12)]), requires_grad=True)
    for k in ks:
        assert torch.autograd.gradcheck(_sym_input(fn, k), (A,))


@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_reuses_the_forward_scale_and_norm(name, monkeypatch):
    """The backward's shift c = ‖A‖_F comes from the forward (which has A's power-of-two scale and
    ‖A/s‖_F): the backward recomputed both. Here any call to them during the backward fails."""
    ied_module = importlib.import_module("stabkit.layers.ied")   # the package's ``ied`` is the function
    a = torch.tensor(build(LAM, seed=5), requires_grad=True)
    y, lam = LAYERS[name](a)
    a_ref = torch.tensor(build(LAM, seed=5), requires_grad=True)
    y2, lam2 = _analytic(a_ref)
    (g_ref,) = torch.autograd.grad(_loss_y(y2, lam2), a_ref)

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed in the backward")

    monkeypatch.setattr(ied_module, "pow2_scale", refuse)
    monkeypatch.setattr(torch.linalg, "matrix_norm", refuse)
    (g,) = torch.autograd.grad(_loss_y(y, lam), a)
    assert rel(g.numpy(), g_ref.numpy()) < 1e-10


@pytest.mark.parametrize("dtype, a", [(torch.float64, 1.5e308), (torch.float32, 3e38)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_gradient_near_the_dtype_maximum_is_finite_and_right(name, dtype, a):
    """The same 2 × 2 near the largest float: the backward's c = ‖A‖_F overflowed to inf and every
    gradient was NaN, that of λ too. Closed form of the 2 × 2 (eigenpairs (λ, y), (μ, u) of A/a):
    ∂λ/∂A = y yᵀ, ∂(wᵀy)/∂A = sym(u yᵀ)·(uᵀw) / (a(λ − μ)) (of order 1e-309 in float64: subnormal,
    so compared to 1e-9 of its largest entry; float32's 1e-40 holds about 5 digits)."""
    A = torch.tensor([[a, a / 15], [a / 15, -a / 1.5]], dtype=torch.float64).to(dtype)
    p, b, q = (float(x) / a for x in (A[0, 0], A[0, 1], A[1, 1]))
    lam, mu = (p + q) / 2 + np.hypot((p - q) / 2, b), (p + q) / 2 - np.hypot((p - q) / 2, b)
    y = np.array([b, lam - p]) / np.hypot(b, lam - p)
    y = y * np.sign(y[np.argmax(np.abs(y))])
    u = np.array([-y[1], y[0]])
    w = np.array([0.3, -0.8])
    G = np.outer(u, y) * (u @ w) / (lam - mu)
    want = {"y": (G + G.T) / 2 / a, "lam": np.outer(y, y)}
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for part, want_g in want.items():
        x = A.clone().requires_grad_()
        yl, l = LAYERS[name](x)
        loss = (yl * torch.as_tensor(w, dtype=dtype)).sum() if part == "y" else l
        (g,) = torch.autograd.grad(loss, x)
        assert np.abs(g.double().numpy() - want_g).max() < tol * np.abs(want_g).max()


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_loss_of_eigenvalues_alone_solves_nothing(name, monkeypatch):
    """∂λ/∂A = y yᵀ needs no solve, but the unused Y's cotangent arrived as zeros and was solved for:
    at A = diag(3, 1, 1), ied(k=2) raised 'singular' for a loss of λ₁ alone (λ₂ = λ₃ is tied, λ₁ is
    simple: ∂λ₁/∂A = e₁e₁ᵀ). Reference: y yᵀ from numpy.linalg.eigh (float64); solves made to fail."""
    x = torch.tensor(np.diag([3.0, 1.0, 1.0]), requires_grad=True)
    (g,) = torch.autograd.grad(layers.ied(x, k=2)[1][0], x)
    assert torch.equal(g, torch.tensor(np.diag([1.0, 0.0, 0.0])))
    A = build(LAM, seed=5)
    u = np.linalg.eigh(A)[1][:, -1]
    a = torch.tensor(A, requires_grad=True)
    _, lam = LAYERS[name](a)

    def refuse(*args, **kwargs):
        raise AssertionError("solved in the backward of a loss of λ alone")

    monkeypatch.setattr(torch.linalg, "solve_ex", refuse)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", refuse)
    (g,) = torch.autograd.grad(lam, a)
    assert np.abs(g.numpy() - np.outer(u, u)).max() < 1e-13
