"""stabkit.torch as a drop-in for torch.linalg: forward, gradients, transforms, compile, input contract."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst

import stabkit.torch as sk
from stabkit import methods
from stabkit.errors import InputError
from stabkit.losses import make_loss
from stabkit.methods.power_iteration import start_vectors
from stabkit.reference import ground_truth

from .conftest import build

F64 = torch.float64
EIG_METHODS = methods.NAMES
SVD_METHODS = sk.SVD_METHODS
SMALL = {m: {"steps": 3} for m in ("pi", "pi-forward", "pi-authors", "pi-legacy")}  # short power iterations keep the traced graphs small


def sym(X):
    return (X + X.mT) / 2


def separated(d=5, batch=(), seed=0, dtype=F64):
    """Batch of symmetric matrices with eigenvalues 1, 2, …, d (well separated)."""
    mats = [build(np.arange(1.0, d + 1), seed=seed + i) for i in range(int(np.prod(batch, dtype=int)))]
    return torch.tensor(np.array(mats).reshape(*batch, d, d), dtype=dtype)


def general(m, n, batch=(), seed=0, dtype=F64):
    """Real (…, m, n) with singular values 1.0, 1.7, 2.4, … (separated) and seeded factors."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    out = []
    for _ in range(int(np.prod(batch, dtype=int))):
        U, _ = np.linalg.qr(rng.standard_normal((m, m)))
        V, _ = np.linalg.qr(rng.standard_normal((n, n)))
        out.append((U[:, :k] * (1.0 + 0.7 * np.arange(k))) @ V[:, :k].T)
    return torch.tensor(np.array(out).reshape(*batch, m, n), dtype=dtype)


def eig_loss(lam, U):
    """Sign-invariant: weighted squares of eigenvector entries plus a weighted eigenvalue sum."""
    d = U.shape[-1]
    W = torch.arange(1.0, d * d + 1, dtype=U.dtype).reshape(d, d).cos()
    return (U * U * W).sum() + (lam * torch.arange(1.0, d + 1, dtype=lam.dtype)).sum()


def svd_loss(U, S, Vh):
    k = S.shape[-1]
    Wu = torch.arange(1.0, U.shape[-2] * k + 1, dtype=U.dtype).reshape(-1, k).sin()
    Wv = torch.arange(1.0, k * Vh.shape[-1] + 1, dtype=U.dtype).reshape(k, -1).cos()
    return (U[..., :, :k] ** 2 * Wu).sum() + (Vh[..., :k, :] ** 2 * Wv).sum() + (S * S.new_tensor(range(1, k + 1))).sum()


def grad_of(fn, X):
    leaf = X.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(leaf), leaf)
    return g


# ------------------------------------------------------------------ forward and return types

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_eigh_eigvalsh_forward_and_types_match_torch(dtype):
    A = separated(5, (2, 3), dtype=dtype)
    for method in ("analytic", "taylor", "pi"):
        res = sk.eigh(A, method=method)
        ref = torch.linalg.eigh(A)
        assert type(res) is type(ref)
        assert res.eigenvalues.dtype == dtype and res.eigenvectors.shape == (2, 3, 5, 5)
        torch.testing.assert_close(res.eigenvalues, ref.eigenvalues, rtol=0, atol=0)
        torch.testing.assert_close(res.eigenvectors, ref.eigenvectors, rtol=0, atol=0)
        torch.testing.assert_close(sk.eigvalsh(A, method=method), torch.linalg.eigvalsh(A))


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
@pytest.mark.parametrize("full", [True, False])
def test_svd_svdvals_forward_and_types_match_torch(shape, full):
    X = general(*shape, batch=(2,))
    res = sk.svd(X, full, method="taylor")
    ref = torch.linalg.svd(X, full_matrices=full)
    assert type(res) is type(ref)
    for a, b in zip(res, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(sk.svdvals(X), torch.linalg.svdvals(X))
    # S is what general() put in, descending
    torch.testing.assert_close(res.S[0], torch.tensor([1.0 + 0.7 * i for i in range(min(shape))], dtype=F64).flip(0))


def test_uplo_reads_the_named_triangle_like_torch():
    A = separated(4, seed=2)
    upper_only = torch.triu(A)
    for uplo in ("U", "u"):
        ours = sk.eigh(upper_only, uplo, check=False)
        ref = torch.linalg.eigh(upper_only, UPLO="U")
        torch.testing.assert_close(ours.eigenvalues, ref.eigenvalues)
        torch.testing.assert_close(ours.eigenvectors.abs(), ref.eigenvectors.abs())
    torch.testing.assert_close(sk.eigvalsh(torch.tril(A), UPLO="L", check=False), torch.linalg.eigvalsh(A))
    # the gradient through UPLO="U" is the full symmetric one
    g_u = grad_of(lambda a: eig_loss(*sk.eigh(sym(a), "U")), A)
    g_l = grad_of(lambda a: eig_loss(*sk.eigh(sym(a), "L")), A)
    torch.testing.assert_close(g_u, g_l)


def test_method_second_positional_still_works():
    A = separated(4)
    g_old = grad_of(lambda a: eig_loss(*sk.eigh(a, "taylor", K=3)), A)
    g_new = grad_of(lambda a: eig_loss(*sk.eigh(a, method="taylor", K=3)), A)
    torch.testing.assert_close(g_old, g_new, rtol=0, atol=0)
    with pytest.raises(ValueError, match="UPLO must be 'L' or 'U'"):
        sk.eigh(A, "X")


def test_method_may_be_a_spec_made_once_and_passed_unchanged(monkeypatch):
    """A Spec goes into the autograd Function as is: no parse or bind in the forward or backward;
    text + keywords give the same Spec (made once, at the call's top); keywords replace a Spec's."""
    A, X = separated(4), general(5, 4)
    spec = methods.spec("taylor:K=3")
    g_text = grad_of(lambda a: eig_loss(*sk.eigh(a, method="taylor", K=3)), A)
    g_svd_text = grad_of(lambda x: svd_loss(*sk.svd(x, False, method="taylor", K=3)), X)
    g_kwargs = grad_of(lambda a: eig_loss(*sk.eigh(a, method=methods.spec("taylor"), K=3)), A)
    from stabkit.methods import _spec

    calls = []
    for name in ("parse", "bind"):
        original = getattr(_spec, name)
        monkeypatch.setattr(_spec, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    seen = []
    forward = sk._Eigh.forward
    monkeypatch.setattr(sk._Eigh, "forward", staticmethod(lambda a, s: seen.append(s) or forward(a, s)))
    g_spec = grad_of(lambda a: eig_loss(*sk.eigh(a, method=spec)), A)
    g_second = grad_of(lambda a: eig_loss(*sk.eigh(a, spec)), A)  # the older spelling, method second
    g_svd = grad_of(lambda x: svd_loss(*sk.svd(x, False, method=spec)), X)
    lam, U, kept = sk.eigh_kept(A, spec)
    assert calls == [] and seen and all(s is spec for s in seen)
    for g in (g_spec, g_second, g_kwargs):
        torch.testing.assert_close(g, g_text, rtol=0, atol=0)
    torch.testing.assert_close(g_svd, g_svd_text, rtol=0, atol=0)
    assert kept.all()
    torch.testing.assert_close(sk.eigh(A, method=methods.spec(methods.NAMES[0]))[0], torch.linalg.eigh(A)[0])


def test_a_spec_compiles_with_fullgraph(one_torch_thread):
    torch._dynamo.reset()
    A = separated(4, (2,))
    spec = methods.spec("clip:tau=10")
    f = lambda a: eig_loss(*sk.eigh(a, method=spec))
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(A), f(A), rtol=1e-13, atol=0)
    torch.testing.assert_close(grad_of(compiled, A), grad_of(f, A), rtol=1e-13, atol=0)


def test_bad_input_is_an_input_error():
    A = separated(3)
    for call in (lambda: sk.eigh(A.int()), lambda: sk.eigh(A[:2]), lambda: sk.eigh(A + torch.triu(A, 1)),
                 lambda: sk.eigvalsh(A * float("nan")), lambda: sk.svd(A, out=(A, A, A)), lambda: sk.eigh(A, "X")):
        with pytest.raises(InputError):
            call()
    with pytest.raises(methods.MethodSpecError, match="has no SVD rule"):
        sk.svd(A, method="pi")


def test_out_and_bad_methods_refused():
    A = separated(3)
    for call in (lambda: sk.eigh(A, out=(A, A)), lambda: sk.eigvalsh(A, out=A),
                 lambda: sk.svd(A, out=(A, A, A)), lambda: sk.svdvals(A, out=A)):
        with pytest.raises(ValueError, match="out= is not supported"):
            call()
    with pytest.raises(ValueError, match="has no SVD rule"):
        sk.svd(A, method="pi")
    with pytest.raises(ValueError, match="unknown method"):
        sk.svdvals(A, method="nope")
    with pytest.raises(ValueError, match="no parameter 'K'"):
        sk.svd(A, method="clip", K=3)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_eigh_analytic_gradient_equals_torch(dtype):
    A = separated(6, (3,), seed=4, dtype=dtype)
    tol = 1e-12 if dtype == F64 else 2e-5
    for fn_ours, fn_ref in [(lambda a: eig_loss(*sk.eigh(sym(a))), lambda a: eig_loss(*torch.linalg.eigh(sym(a)))),
                            (lambda a: (sk.eigvalsh(sym(a)) ** 3).sum(), lambda a: (torch.linalg.eigvalsh(sym(a)) ** 3).sum())]:
        g, ref = grad_of(fn_ours, A), grad_of(fn_ref, A)
        assert g.dtype == dtype
        torch.testing.assert_close(g, ref, rtol=0, atol=tol * ref.abs().max().item())


def test_eigh_analytic_matches_certified_truth():
    A = build([0.5, 1.0, 2.0, 3.5, 5.0], seed=7)
    loss = make_loss("eigvec", 5, seed=1)
    truth = ground_truth(A, loss)
    assert truth.certified
    leaf = torch.tensor(A, requires_grad=True)
    lam, U = sk.eigh(leaf)
    (g,) = torch.autograd.grad(loss.value(U, lam).sum(), leaf)
    assert np.linalg.norm(g.numpy() - truth.grad) <= 1e-10 * np.linalg.norm(truth.grad)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_svd_analytic_gradient_equals_torch(shape, full, dtype):
    X = general(*shape, batch=(2,), seed=5, dtype=dtype)
    g = grad_of(lambda x: svd_loss(*sk.svd(x, full)), X)
    ref = grad_of(lambda x: svd_loss(*torch.linalg.svd(x, full_matrices=full)), X)
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(g, ref, rtol=0, atol=tol * ref.abs().max().item())
    gs = grad_of(lambda x: (sk.svdvals(x) ** 3).sum(), X)
    torch.testing.assert_close(gs, grad_of(lambda x: (torch.linalg.svdvals(x) ** 3).sum(), X), rtol=0, atol=tol * 10)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_svd_analytic_gradient_equals_finite_differences(shape):
    X = general(*shape, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: svd_loss(*sk.svd(x, False)), (X,))


@pytest.mark.parametrize("method", [m for m in SVD_METHODS if m not in ("torch", "pade", "taylor-song")])
@pytest.mark.parametrize("side", ["V", "U"])
def test_svd_rule_is_the_eigh_rule_on_squared_singular_values(method, side):
    """The SVD kernel rule on σ² gaps = the same method's eigh rule on XᵀX (V side) or XXᵀ (U side),
    chained by hand: for a loss of (σ, V) only, ∂L/∂X = 2X·∂L/∂(XᵀX); of (σ, U), 2·∂L/∂(XXᵀ)·X.
    (pade and taylor-song: their F is not antisymmetric at ties by design; skipped.)"""
    X = general(5, 5, seed=9) * 0.9
    k = 5
    W = torch.arange(1.0, k * k + 1, dtype=F64).reshape(k, k).cos()
    c = torch.arange(1.0, k + 1, dtype=F64)
    params = {"K": 5} if method == "taylor" else {}

    def via_svd(x):
        U, S, Vh = sk.svd(x, method=method, **params)
        Q = Vh.mT if side == "V" else U
        return (Q * Q * W).sum() + (S * S * c).sum()

    def via_eigh(x):
        gram = x.mT @ x if side == "V" else x @ x.mT
        lam, Q = sk.eigh(sym(gram), method=method, **params)  # ascending: flip to σ's descending order
        return (Q.flip(-1) ** 2 * W).sum() + (lam.flip(-1) * c).sum()

    torch.testing.assert_close(grad_of(via_svd, X), grad_of(via_eigh, X), rtol=0, atol=1e-11)


def test_taylor_svd_gradient_differs_from_exact_and_converges_with_K():
    """The chosen backward really is used: taylor's SVD gradient departs from the exact one at small K
    and approaches it as K grows (σ² ratios ≤ (2.4/3.1)² here)."""
    X = general(5, 4, seed=3)
    exact = grad_of(lambda x: svd_loss(*torch.linalg.svd(x, full_matrices=False)), X)
    errs = [(grad_of(lambda x: svd_loss(*sk.svd(x, False, method="taylor", K=K)), X) - exact).norm().item()
            for K in (1, 9, 60)]
    assert errs[0] > 1e-2 * exact.norm().item()
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6 * exact.norm().item()


# ------------------------------------------------------------------ torch.func and torch.compile

@pytest.mark.parametrize("method", EIG_METHODS)
def test_eigh_under_vmap_grad_jacrev(method, one_torch_thread):
    A = separated(4, (3,), seed=1)
    p = SMALL.get(method, {})
    batched = sk.eigh(A, method=method, **p)
    mapped = torch.func.vmap(lambda a: sk.eigh(a, method=method, **p))(A)
    torch.testing.assert_close(mapped.eigenvalues, batched.eigenvalues, rtol=0, atol=1e-14)
    torch.testing.assert_close(mapped.eigenvectors, batched.eigenvectors, rtol=0, atol=1e-14)
    f = lambda a: eig_loss(*sk.eigh(sym(a), method=method, **p))  # noqa: E731
    g = torch.func.grad(f)(A[0])
    torch.testing.assert_close(g, grad_of(f, A[0]), rtol=0, atol=1e-13)
    gv = torch.func.vmap(torch.func.grad(f))(A)
    torch.testing.assert_close(gv[2], grad_of(f, A[2]), rtol=0, atol=1e-13)
    J = torch.func.jacrev(lambda a: sk.eigvalsh(sym(a), method=method, **p))(A[0])
    rows = torch.stack([grad_of(lambda a: sk.eigvalsh(sym(a), method=method, **p)[i], A[0]) for i in range(4)])
    torch.testing.assert_close(J, rows, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", SVD_METHODS)
def test_svd_under_vmap_grad_jacrev(method, one_torch_thread):
    X = general(5, 3, batch=(3,), seed=2)
    mapped = torch.func.vmap(lambda x: sk.svd(x, False, method=method))(X)
    for a, b in zip(mapped, torch.linalg.svd(X, full_matrices=False)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    f = lambda x: svd_loss(*sk.svd(x, False, method=method))  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(X[1]), grad_of(f, X[1]), rtol=0, atol=1e-13)
    J = torch.func.jacrev(lambda x: sk.svdvals(x, method=method))(X[0])
    assert J.shape == (3, 5, 3)
    torch.testing.assert_close(J[0], grad_of(lambda x: sk.svdvals(x, method=method)[0], X[0]), rtol=0, atol=1e-13)


def test_fullgraph_compile_every_method(one_torch_thread):
    """Dynamo traces every method's forward in one graph: no numpy, no data-dependent Python."""
    torch._dynamo.reset()
    A, X = separated(4, (2,)), general(5, 4, batch=(2,))

    def f(A, X):
        total = 0
        for m in EIG_METHODS:
            total = total + eig_loss(*sk.eigh(A, method=m, **SMALL.get(m, {})))
        for m in SVD_METHODS:
            total = total + svd_loss(*sk.svd(X, False, method=m)) + sk.svdvals(X, method=m).sum()
        return total

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(A, X), f(A, X), rtol=1e-13, atol=0)


def test_fullgraph_compile_model_forward_and_backward(one_torch_thread):
    """A small model (covariance → eigh → whitening, then an SVD) compiled with fullgraph and
    AOT autograd: same loss and same parameter gradients as eager."""
    torch._dynamo.reset()

    class Whiten(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, dtype=F64)

        def forward(self, x):
            h = self.lin(x)
            h = h - h.mean(0)
            cov = h.mT @ h / h.shape[0] + 1e-3 * torch.eye(4, dtype=F64)
            lam, U = sk.eigh(cov, method="taylor", check=False)
            white = h @ U @ torch.diag_embed(lam.rsqrt()) @ U.mT
            return white.pow(3).mean() + sk.svdvals(h, method="clip").sum()

    torch.manual_seed(0)
    model, x = Whiten(), torch.randn(32, 4, dtype=F64)
    eager = model(x)
    g_eager = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    g_comp = torch.autograd.grad(out, list(model.parameters()))
    torch.testing.assert_close(out, eager, rtol=1e-12, atol=0)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", EIG_METHODS)
def test_compiled_backward_matches_eager_for_every_method(method, one_torch_thread):
    """fullgraph with AOT autograd traces each rule's backward too (a numpy context in it used to stop
    Dynamo for pi and analytic-trunc)."""
    torch._dynamo.reset()
    A = separated(4, (2,)).requires_grad_()

    def f(A):
        return eig_loss(*sk.eigh(A, method=method, **SMALL.get(method, {})))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(torch.autograd.grad(compiled(A), A)[0], torch.autograd.grad(f(A), A)[0],
                               rtol=1e-10, atol=1e-13)


def compiled(fn):
    """``fn`` under torch.compile with AOT autograd, which materializes an unused output's cotangent as zeros."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def block_tie():
    """diag(2, 1, 1): eigenvalues (1, 1, 2) exactly from every eigensolver (a diagonal input), with an
    eigenvector basis that is not the identity (the sorted U is a cyclic permutation); u₃ = ±e₁
    belongs to the untied λ₃ = 2. (A rotated block ties exactly only on some LAPACKs.)"""
    A = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=F64))
    lam = torch.linalg.eigvalsh(A)
    assert lam[0] == lam[1] and lam[2] == 2.0  # the premise of the tests below
    return A


@pytest.mark.parametrize("method", EIG_METHODS)
def test_eigenvalue_gradient_is_finite_at_exact_ties(method, one_torch_thread):
    """L = Σλ + 3 λ_max at diag(1, 1, 2) (an exact tie): ∂L/∂A = U diag(w ∘ kept) Uᵀ, w = (1, 1, 4),
    whatever F is at the tie — also compiled, where the unused U's cotangent arrives as zeros (∞ · 0 = NaN
    before ``_xp.kernel_product``). A method that differentiates its own iteration (19 steps from
    random starts) is that close, not exact; its rule is not a kernel, so it is checked eagerly."""
    exact = methods.spec(method).method.exact_state
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=F64)).requires_grad_()
    w = torch.tensor([1.0, 1.0, 4.0], dtype=F64)
    _, _, kept = sk.eigh_kept(A.detach(), method=method)
    lam, U = torch.linalg.eigh(A.detach())
    expected = (U * (w * kept)) @ U.mT
    lam_ofs = [lambda A: sk.eigvalsh(A, method=method), lambda A: sk.eigh(A, method=method)[0]]
    if exact:
        lam_ofs.append(compiled(lambda A: sk.eigh(A, method=method)[0]))
    for lam_of in lam_ofs:
        g = torch.autograd.grad((w * lam_of(A)).sum(), A)[0]
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-12 if exact else 1e-6)


def test_eigenvector_gradient_through_the_untied_column_is_exact_at_a_tie(one_torch_thread):
    """L = u₃ᵀ B u₃ + Σλ at an exact tie λ₁ = λ₂ = 1 < λ₃ = 2: Uᵀ∂L/∂U is exactly 0 at the tied pair,
    and ∂L/∂A = sym(2 R B u₃ u₃ᵀ) + I with R = (I − u₃u₃ᵀ)/(λ₃ − 1) the reduced resolvent (first-order
    perturbation of a simple eigenvector), eager and compiled. A loss of a tied column (u₁) still has
    no derivative: the analytic rule gives ±∞ there."""
    A = block_tie().requires_grad_()
    B = torch.arange(1.0, 10.0, dtype=F64).reshape(3, 3).cos()
    B = B + B.mT
    u3 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    R = torch.eye(3, dtype=F64) - torch.outer(u3, u3)
    G = 2 * R @ B @ torch.outer(u3, u3)
    expected = (G + G.mT) / 2 + torch.eye(3, dtype=F64)

    def loss(A):
        lam, U = sk.eigh(A)
        return U[:, 2] @ B @ U[:, 2] + lam.sum()

    for fn in (loss, compiled(loss)):
        torch.testing.assert_close(torch.autograd.grad(fn(A), A)[0], expected, rtol=0, atol=1e-12)
    lam, U = sk.eigh(A)
    assert not torch.isfinite(torch.autograd.grad(U[:, 0] @ B @ U[:, 0], A)[0]).all()


@pytest.mark.parametrize("method", SVD_METHODS)
@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 4)])
def test_singular_value_gradient_is_finite_at_exact_ties(method, shape, one_torch_thread):
    """L = Σσ + 3 σ_max with σ = (2, 1, 1) exactly (and σ = 0 rows/columns beyond): U diag(w) Vᵀ,
    as torch.linalg.svdvals gives it — also compiled, where the unused U, Vh arrive as zeros."""
    X = torch.zeros(shape, dtype=F64)
    X[0, 0], X[1, 1], X[2, 2] = 2.0, 1.0, 1.0
    X.requires_grad_()
    w = torch.tensor([4.0, 1.0, 1.0], dtype=F64)
    expected = torch.autograd.grad((w * torch.linalg.svdvals(X)).sum(), X)[0]
    for sigma_of in (lambda X: sk.svdvals(X, method=method), lambda X: sk.svd(X, False, method=method)[1],
                     compiled(lambda X: sk.svd(X, False, method=method)[1])):
        g = torch.autograd.grad((w * sigma_of(X)).sum(), X)[0]
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 4)])
def test_singular_vector_gradient_through_the_untied_pair_is_exact_at_a_tie(shape, one_torch_thread):
    """L = u₁ᵀ B u₁ + v₁ᵀ C v₁ at σ = (2, 1, 1) exactly: u₁ (v₁) is the simple top eigenvector of
    XXᵀ (XᵀX), so with b = R_u B u₁, R_u = pinv(4I − XXᵀ) (c = R_v C v₁ likewise),
    ∂L/∂X = 2 (b u₁ᵀ + u₁ bᵀ) X + 2 X (c v₁ᵀ + v₁ cᵀ), eager and compiled."""
    m, n = shape
    X = torch.zeros(shape, dtype=F64)
    X[0, 0], X[1, 1], X[2, 2] = 2.0, 1.0, 1.0
    B = torch.arange(1.0, m * m + 1, dtype=F64).reshape(m, m).sin()
    C = torch.arange(1.0, n * n + 1, dtype=F64).reshape(n, n).cos()
    B, C = B + B.mT, C + C.mT
    Xn = X.numpy()
    u1, v1 = np.eye(m)[0], np.eye(n)[0]
    b = np.linalg.pinv(4 * np.eye(m) - Xn @ Xn.T) @ B.numpy() @ u1
    c = np.linalg.pinv(4 * np.eye(n) - Xn.T @ Xn) @ C.numpy() @ v1
    expected = 2 * (np.outer(b, u1) + np.outer(u1, b)) @ Xn + 2 * Xn @ (np.outer(c, v1) + np.outer(v1, c))

    def loss(X):
        U, _, Vh = sk.svd(X, False)
        return U[:, 0] @ B @ U[:, 0] + Vh[0] @ C @ Vh[0]

    X.requires_grad_()
    for fn in (loss, compiled(loss)):
        np.testing.assert_allclose(torch.autograd.grad(fn(X), X)[0].numpy(), expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ input contract

@pytest.mark.parametrize("method", [m for m in SVD_METHODS if not methods.spec(m).method.native])
@pytest.mark.parametrize("wide", [False, True])
def test_svd_gradient_is_finite_at_a_zero_singular_value(method, wide):
    """X with a zero column (a dead channel), L = ⟨G, U diag(σ²) Uᵀ⟩ = ⟨G, X Xᵀ⟩: ∂L/∂X = (G + Gᵀ) X,
    although u for σ = 0 is arbitrary (its D term used to divide 0 by 0; torch's own still does).
    Exact for the analytic F; an approximate F (taylor) is off by its truncation, ≈ 1e-6 here."""
    X = general(5, 3, seed=4)
    X[:, 1] = 0.0
    X = (X.mT if wide else X).clone().requires_grad_()
    G = torch.arange(1.0, 1 + X.shape[0] ** 2, dtype=F64).reshape(X.shape[0], -1).sin()
    U, S, Vh = sk.svd(X, False, method=method)
    g = torch.autograd.grad((G * ((U * S * S) @ U.mT)).sum(), X)[0]
    torch.testing.assert_close(g, (G + G.mT) @ X.detach(), rtol=0, atol=1e-12 if method == "analytic" else 1e-4)


@pytest.mark.parametrize("method", ["analytic", "taylor"])
def test_an_empty_batch_gives_empty_results_as_torch_does(method):
    A, X = torch.zeros(0, 4, 4, dtype=F64), torch.zeros(0, 3, 2, dtype=F64)
    lam, U = sk.eigh(A, method=method)
    assert lam.shape == (0, 4) and U.shape == (0, 4, 4) and sk.eigvalsh(A, method=method).shape == (0, 4)
    assert [t.shape for t in sk.svd(X, False, method=method)] == [t.shape for t in torch.linalg.svd(X, False)]
    assert sk.svdvals(X, method=method).shape == (0, 2)


@pytest.mark.parametrize("fn", [sk.eigh, sk.eigvalsh])
def test_eigh_input_contract(fn):
    A = separated(4)
    bad_nan, bad_inf = A.clone(), A.clone()
    bad_nan[1, 2] = float("nan")
    bad_inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite entries \(1 NaN of 16\)"):
        fn(bad_nan)
    with pytest.raises(ValueError, match=r"non-finite entries \(1 Inf of 16\)"):
        fn(bad_inf)
    skew = A.clone()
    skew[0, 3] += 1e-3 * A.abs().max()
    with pytest.raises(ValueError, match="not symmetric"):
        fn(skew)
    fn(skew, check=False)  # opt-out: torch's reading of the lower triangle
    for dtype in (torch.float32, F64):  # rounding-level asymmetry (what X Xᵀ may leave) passes
        noisy = A.to(dtype).clone()
        noisy[0, 3] += 50 * torch.finfo(dtype).eps * A.abs().max().item()
        fn(noisy)
    for bad, needle in [(torch.eye(3, dtype=torch.int64), "unsupported dtype"), (torch.zeros(3, 4), "square"),
                        (torch.zeros(0, 0), "non-empty"), (np.eye(3), "torch.Tensor")]:
        with pytest.raises(ValueError, match=needle):
            fn(bad)


def test_svd_input_contract():
    X = general(4, 3)
    X[2, 1] = float("nan")
    for fn in (sk.svd, sk.svdvals):
        with pytest.raises(ValueError, match="non-finite"):
            fn(X)
        with pytest.raises(ValueError, match="non-empty"):
            fn(torch.zeros(3, 0))
    torch.testing.assert_close(sk.svdvals(general(4, 3)), torch.tensor([2.4, 1.7, 1.0], dtype=F64))


@pytest.mark.parametrize("given", ["taylor", None, 1, np.True_])
def test_svd_full_matrices_must_be_a_bool(given):
    """svd(X, "taylor") (eigh's older method-second spelling) ran bool("taylor"): the analytic rule
    with full matrices, without a word; None gave the thin SVD. torch.linalg.svd refuses them all
    (TypeError): an InputError naming full_matrices now, while True/False keep their meaning."""
    X = general(4, 3)
    with pytest.raises(InputError, match=f"svd: full_matrices must be True or False, got {given!r}"):
        sk.svd(X, given)
    for full, rows in ((True, 4), (False, 3)):
        U, S, Vh = sk.svd(X, full)
        assert U.shape == (4, rows) and Vh.shape == (3, 3)
        torch.testing.assert_close(S, torch.tensor([2.4, 1.7, 1.0], dtype=F64), rtol=0, atol=1e-14)


def test_symmetrize_refuses_what_is_not_a_batch_of_square_matrices():
    """symmetrize raised IndexError ("Dimension out of range") for a vector or a scalar, RuntimeError
    ("The size of tensor a (4) must match…") for a 3 × 4 matrix, AttributeError for a list; it is the
    symmetric part (A + Aᵀ)/2 of any batch of square matrices, checked entrywise here."""
    for bad, what in ((torch.ones(3), r"Tensor \(3,\)"), (torch.ones(3, 4), r"Tensor \(3, 4\)"),
                      (torch.tensor(1.0), r"Tensor \(\)"), ([[1.0, 2.0], [3.0, 4.0]], r"list \(\)")):
        with pytest.raises(InputError, match=rf"symmetrize: expected square matrices \(\.\.\., d, d\), got {what}"):
            sk.symmetrize(bad)
    A = torch.arange(18.0, dtype=F64).reshape(2, 3, 3)
    S = sk.symmetrize(A)
    for b, i, j in np.ndindex(2, 3, 3):
        assert S[b, i, j] == (A[b, i, j] + A[b, j, i]) / 2  # exact: sums of small integers, halved


def test_check_is_skipped_under_transforms():
    """Under vmap the value check cannot run (documented): a non-symmetric input is not refused there."""
    A = separated(3, (2,))
    A[:, 0, 2] += 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        sk.eigh(A)
    torch.func.vmap(sk.eigh)(A)


@pytest.mark.parametrize("fn", [sk.eigh, sk.eigvalsh, sk.svd, sk.svdvals])
def test_a_sparse_tensor_is_refused_by_name(fn):
    """A sparse input failed inside the value check with NotImplementedError ("Could not run
    'aten::ne.Scalar' with arguments from the 'SparseCPU' backend"), a message naming no input."""
    A = torch.eye(3, dtype=F64)
    for sparse in (A.to_sparse(), A.to_sparse_csr()):
        with pytest.raises(ValueError, match=f"expected a dense tensor, got layout {sparse.layout}: use A.to_dense"):
            fn(sparse, method="taylor")


def test_a_meta_tensor_passes_the_check_as_torch_linalg_takes_it():
    """Deferred initialisation runs a model on meta tensors (shapes, no values): torch.linalg.eigh and svd
    return meta results, while the value check here raised NotImplementedError ("Cannot copy out of
    meta tensor"). A meta tensor has no value to check; dtype and shape are still checked."""
    A = torch.randn(2, 3, 3, dtype=F64, device="meta")
    lam, U = sk.eigh(A, method="taylor")
    assert lam.is_meta and (lam.shape, U.shape) == ((2, 3), (2, 3, 3))
    assert sk.svdvals(A[..., :2], method="clip").shape == (2, 2)
    with pytest.raises(ValueError, match="square"):
        sk.eigh(A[..., :2])


# ------------------------------------------------------------------ pi-forward's start vectors

@settings(max_examples=25, deadline=None)
@given(d=hst.integers(1, 12), seed=hst.integers(0, 2**40))
def test_start_vectors_identical_in_numpy_and_torch(d, seed):
    s_np = start_vectors(np.zeros((2, d, d)), seed)
    s_t = start_vectors(torch.zeros(3, d, d, dtype=F64), seed)
    assert s_np.shape == (2, d, d) and s_t.shape == (3, d, d)
    np.testing.assert_array_equal(s_t[0].numpy(), s_np[0])
    np.testing.assert_array_equal(s_np[0], s_np[1])  # the same for every batch member
    np.testing.assert_allclose(np.linalg.norm(s_np[0], axis=0), 1.0, rtol=1e-15)
    if d > 1:
        assert np.linalg.matrix_rank(s_np[0]) == d  # linearly independent: no eigenvector missed


@settings(max_examples=15, deadline=None)
@given(seed=hst.integers(0, 10**6), full=hst.booleans(), m=hst.integers(1, 5), n=hst.integers(1, 5))
def test_svd_analytic_gradient_equals_torch_property(seed, full, m, n):
    X = general(m, n, seed=seed)
    torch.testing.assert_close(grad_of(lambda x: svd_loss(*sk.svd(x, full)), X),
                               grad_of(lambda x: svd_loss(*torch.linalg.svd(x, full_matrices=full)), X),
                               rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("method", [m for m in EIG_METHODS if methods.get(m).kernel is not None])
def test_eigh_jvp_is_the_transpose_of_the_backward(method):
    """jacfwd (the op's jvp) = jacrev (its backward) for every kernel rule, clipping active for clip."""
    A = separated(4, seed=3)
    p = {"tau": 0.5} if method == "clip" else {"K": 2} if method == "taylor" else {}
    f = lambda a: tuple(sk.eigh(sym(a), method=method, **p))  # noqa: E731
    for jf, jr in zip(torch.func.jacfwd(f)(A), torch.func.jacrev(f)(A)):
        torch.testing.assert_close(jf, jr, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", [m for m in EIG_METHODS if methods.get(m).kernel is None and not methods.get(m).native])
def test_eigh_jvp_of_a_rule_without_a_kernel_is_refused_by_type(method):
    """Forward mode of a rule without a kernel (power iteration, analytic-trunc) is refused by design:
    that is UnsupportedDerivativeError (stabkit.errors), not a bare RuntimeError as it was. Reverse
    mode still gives λ's derivative, tr(U diag(e_k) Uᵀ dA) = dA_kk at a diagonal A."""
    from stabkit.errors import UnsupportedDerivativeError

    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    p = {"steps": 200} if methods.get(method).approximate_forward else SMALL.get(method, {})  # random starts: converge
    f = lambda a: sk.eigvalsh(a, method=method, **p)  # noqa: E731
    with pytest.raises(UnsupportedDerivativeError, match=f"method='{method}'.*forward-mode AD"):
        torch.func.jvp(f, (A,), (torch.eye(4, dtype=F64),))
    J = torch.func.jacrev(f)(A)
    torch.testing.assert_close(J[-1], torch.diag(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)), rtol=0, atol=1e-12)


def test_eigh_jvp_is_finite_at_an_exact_tie_the_tangent_does_not_split():
    """At diag(1, 1, 2) with dA[0, 1] = 0 (M = Uᵀ dA U is 0 at the tied pair): dλ = diag(dA) and
    du_j = Σ_{k: λ_k ≠ λ_j} u_k u_kᵀ dA u_j / (λ_j − λ_k) (first-order perturbation theory; no
    component inside the tie), not ∞ · 0 = NaN."""
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=F64))
    dA = torch.tensor([[0.3, 0.0, -0.7], [0.0, 1.1, 0.4], [-0.7, 0.4, 0.9]], dtype=F64)
    (lam, U), (dlam, dU) = torch.func.jvp(lambda a: tuple(sk.eigh(a)), (A,), (dA,))
    assert lam[0] == lam[1]
    u3 = U[:, 2:]
    expected = torch.cat([-(u3 @ u3.mT) @ dA @ U[:, :2], (torch.eye(3, dtype=F64) - u3 @ u3.mT) @ dA @ u3], -1)
    torch.testing.assert_close(dlam, torch.diagonal(dA), rtol=0, atol=1e-15)
    torch.testing.assert_close(dU, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", SVD_METHODS)
@pytest.mark.parametrize("shape,full", [((5, 3), False), ((3, 5), True), ((4, 4), True)])
def test_svd_jvp_is_the_transpose_of_the_backward(method, shape, full):
    X = general(*shape, seed=4)
    k = min(shape)
    f = lambda x: (lambda U, S, Vh: (U[..., :, :k], S, Vh[..., :k, :]))(*sk.svd(x, full, method=method))  # noqa: E731
    for jf, jr in zip(torch.func.jacfwd(f)(X), torch.func.jacrev(f)(X)):
        torch.testing.assert_close(jf, jr, rtol=0, atol=1e-12)


@pytest.mark.parametrize("wide", [False, True])
def test_svd_jvp_equals_backward_at_an_exactly_rank_deficient_matrix(wide):
    """X (5×3, or its 3×5 transpose) with a zero column (row), so σ₃ = 0 exactly; the loss does not
    depend on the zero σ's arbitrary u₃ (v₃ when wide). Forward and reverse mode are transposes,
    ⟨jvp(dX), (gU, gS, gVh)⟩ = ⟨dX, vjp(gU, gS, gVh)⟩, both finite (the jvp's D term used to divide
    by σ₃ = 0: inf/NaN), and the vjp is the derivative a central difference gives (σ₃'s cotangent
    zeroed there: σ₃ = |O(h)| has a kink)."""
    X = general(5, 3, seed=4)
    X[:, 1] = 0.0
    X = X.mT.contiguous() if wide else X
    f = lambda x: tuple(sk.svd(x, False))  # noqa: E731
    U, S, Vh = f(X)
    assert S[-1] == 0  # exactly rank-deficient
    gen = torch.Generator().manual_seed(7)
    dX = torch.randn(X.shape, generator=gen, dtype=F64)
    gU, gS, gVh = (torch.randn(t.shape, generator=gen, dtype=F64) for t in (U, S, Vh))
    if wide:
        gVh[-1] = 0.0  # v₃ is any unit vector in the null space of X
    else:
        gU[:, -1] = 0.0  # u₃ is any unit vector orthogonal to range(X)
    _, (dU, dS, dVh) = torch.func.jvp(f, (X,), (dX,))
    _, vjp = torch.func.vjp(f, X)
    forward = (dU * gU).sum() + (dS * gS).sum() + (dVh * gVh).sum()
    reverse = (dX * vjp((gU, gS, gVh))[0]).sum()
    assert torch.isfinite(forward) and torch.isfinite(reverse)
    torch.testing.assert_close(forward, reverse, rtol=1e-12, atol=1e-12)

    gS[-1] = 0.0

    def loss(x):
        """⟨gU, U⟩ + ⟨gS, σ⟩ + ⟨gVh, Vh⟩ with each pair's sign aligned to the factors at X."""
        Ux, Sx, Vhx = torch.linalg.svd(x, full_matrices=False)
        su = torch.sign((Ux * U).sum(-2))
        sv = torch.sign((Vhx * Vh).sum(-1))
        return (Ux * su * gU).sum() + (Sx * gS).sum() + (Vhx * sv[:, None] * gVh).sum()

    h = 1e-6
    central = (loss(X + h * dX) - loss(X - h * dX)) / (2 * h)
    torch.testing.assert_close((dX * vjp((gU, gS, gVh))[0]).sum(), central, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("shape", [(6, 4), (4, 4)])
def test_svd_gradient_matches_certified_truth(shape):
    """SVD gradient against the certified truth: for a loss L(V, σ²) = ℓ(eigenvectors, eigenvalues
    of A = XᵀX) (ℓ the gauge-invariant eigvec probe), ∂L/∂X = 2X·∂ℓ/∂A with ∂ℓ/∂A certified."""
    m, n = shape
    rng = np.random.default_rng(11)
    U0, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V0, _ = np.linalg.qr(rng.standard_normal((n, n)))
    X = (U0 * np.array([3.0, 2.2, 1.5, 0.8])) @ V0.T
    loss = make_loss("eigvec", n, seed=2)
    truth = ground_truth(X.T @ X, loss)
    assert truth.certified
    expected = 2 * X @ truth.grad
    leaf = torch.tensor(X, requires_grad=True)
    _, S, Vh = sk.svd(leaf, full_matrices=False)
    (g,) = torch.autograd.grad(loss.value(Vh.mT.flip(-1), (S * S).flip(-1)).sum(), leaf)  # ascending order
    assert np.linalg.norm(g.numpy() - expected) <= 1e-12 * np.linalg.norm(expected)


WIDE = [1.0, 3.0, 9.0, 27.0, 81.0]
#: methods whose forward keeps every pair of WIDE (``pi`` always drops the smallest: it computes another
#: function, checked against autograd through its truncated forward in test_power_iteration)
UNTRUNCATED_ON_WIDE = [m for m in EIG_METHODS
                       if methods.spec(m).kept_of(np.array(WIDE)).all()]


def test_only_truncating_methods_are_left_out_of_the_wide_spectrum_check():
    left_out = set(EIG_METHODS) - set(UNTRUNCATED_ON_WIDE)
    assert left_out and all(methods.get(m).kept_rule is not None for m in left_out)


@pytest.mark.parametrize("method", UNTRUNCATED_ON_WIDE)
def test_every_eigh_method_equals_torch_on_a_widely_separated_spectrum(method):
    """λ = 1, 3, 9, 27, 81: ratios ≤ 1/3, so every approximation is exact to ~1e-8 (taylor's
    (1/3)^10, power iteration's (1/3)^19 per step count) and the gradients must agree with torch's."""
    A = torch.tensor(build(WIDE, seed=12), dtype=F64)
    g = grad_of(lambda a: eig_loss(*sk.eigh(sym(a), method=method)), A)
    ref = grad_of(lambda a: eig_loss(*torch.linalg.eigh(sym(a))), A)
    assert (g - ref).norm() <= 1e-6 * ref.norm()


@pytest.mark.parametrize("method", SVD_METHODS)
@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_every_svd_method_equals_torch_on_a_widely_separated_spectrum(method, shape):
    rng = np.random.default_rng(13)
    m, n = shape
    U0, _ = np.linalg.qr(rng.standard_normal((m, 4)))
    V0, _ = np.linalg.qr(rng.standard_normal((n, 4)))
    X = torch.tensor((U0 * np.array([27.0, 9.0, 3.0, 1.0])) @ V0.T)
    g = grad_of(lambda x: svd_loss(*sk.svd(x, False, method=method)), X)
    ref = grad_of(lambda x: svd_loss(*torch.linalg.svd(x, full_matrices=False)), X)
    assert (g - ref).norm() <= 1e-8 * ref.norm()


@settings(max_examples=30, deadline=None)
@given(seed=hst.integers(0, 10**6), d=hst.integers(2, 8), log_rel=hst.floats(-16, 0),
       dtype=hst.sampled_from([torch.float32, F64]))
def test_symmetry_check_threshold_property(seed, d, log_rel, dtype):
    """An off-diagonal asymmetry δ is refused iff |δ| > √eps·max|A| (up to a factor 2 margin)."""
    rng = np.random.default_rng(seed)
    A = torch.tensor(build(rng.uniform(0.5, 5.0, d), seed=seed), dtype=dtype)
    rel = 10.0**log_rel
    tol_rel = torch.finfo(dtype).eps ** 0.5
    B = A.clone()
    B[0, d - 1] += rel * A.abs().max()
    if rel > 2 * tol_rel:
        with pytest.raises(ValueError, match="not symmetric"):
            sk.eigh(B)
    elif rel < tol_rel / 2:
        sk.eigh(B)


@pytest.mark.parametrize("method", ["analytic", "taylor", "taylor-authors"])
def test_eigenvalue_gradient_at_two_zero_eigenvalues_is_the_identity(method):
    """∂(Σλ)/∂A = I at diag(0, 0, 3) and at the covariance of data with two all-zero channels (the
    Taylor series' ε = 0 default met 0/0 there: all NaN); a used eigenvector of the zero pair gives
    the analytic rule's non-finite gradient."""
    X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    X = torch.cat([X, torch.zeros(4, 1, dtype=F64)], 1)[:, [0, 3, 1, 2]]  # channels 1 and 3 all zero
    for A in (torch.diag(torch.tensor([0.0, 0.0, 3.0], dtype=F64)), X.mT @ X):
        A = A.requires_grad_()
        g = torch.autograd.grad(sk.eigvalsh(A, method=method).sum(), A)[0]
        torch.testing.assert_close(g, torch.eye(A.shape[-1], dtype=F64), rtol=0, atol=1e-12)
    A = torch.diag(torch.tensor([0.0, 0.0, 3.0], dtype=F64)).requires_grad_()
    g, exact = (torch.autograd.grad(U[1, 0] + lam.sum(), A)[0] for lam, U in (sk.eigh(A, method=m) for m in (method, "analytic")))
    assert not torch.isfinite(exact).all()
    torch.testing.assert_close(g, exact, rtol=0, atol=0, equal_nan=True)
