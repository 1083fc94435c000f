"""Layer invariants as properties over generated inputs (float64): the matrix-function layers are the
matrix functions scipy computes by other algorithms (Schur-based logm/sqrtm/fractional_matrix_power);
the projector is an orthogonal projector onto the range; covariance pooling is a symmetric function of
the centred covariance, blind to per-channel constants and pixel order, equivariant to channel order."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import layers
from stabkit.layers import CovariancePooling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = st.integers(0, 2**31 - 1)


def _orthonormal(rng, n, k):
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diagonal(R))


def _scipy(fn, p, M):
    if fn == "log":
        return np.real(scipy.linalg.logm(M))
    if fn == "sqrt":
        return np.real(scipy.linalg.sqrtm(M))
    return np.real(scipy.linalg.fractional_matrix_power(M, p))


FUNCTION = st.one_of(st.sampled_from([("log", None), ("sqrt", None)]),
                     st.tuples(st.just("power"), st.floats(-1.5, 2.5)))


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 6), log_lam=st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6), seed=SEEDS,
       fn_p=FUNCTION, eps=st.sampled_from([0.0, 0.1]))
def test_eig_matrix_function_is_scipys(d, log_lam, seed, fn_p, eps):
    """U g(Λ + εI) Uᵀ = scipy's g(A + εI) for SPD A, λ ∈ [0.1, 10] (condition ≤ 100), ties allowed."""
    fn, p = fn_p
    lam = 10.0 ** np.array(log_lam[:d])
    Q = _orthonormal(np.random.default_rng(seed), d, d)
    A = (Q * lam) @ Q.T
    A = (A + A.T) / 2
    got = layers.eig_matrix_function(torch.from_numpy(A), fn, eps=eps, p=p).numpy()
    expected = _scipy(fn, p, A + eps * np.eye(d))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 5), extra=st.integers(-2, 3), log_sigma=st.lists(st.floats(-0.5, 0.5), min_size=5, max_size=5),
       seed=SEEDS, fn_p=FUNCTION, route=st.sampled_from(["svd", "svd-dk"]))
def test_svd_matrix_functions_are_scipys_on_the_gram_matrix(d, extra, log_sigma, seed, fn_p, route):
    """V g(ΣᵀΣ + εI) Vᵀ = scipy's g(FᵀF + εI), F (n × d) with σ ∈ [0.3, 3.2]; a wide F (n < d) has a
    singular FᵀF, so it gets ε = 0.1 (the layers refuse it without a ridge for log and x^p, p < 0)."""
    fn, p = fn_p
    n = max(1, d + extra)
    k = min(n, d)
    eps = 0.1 if n < d else 0.0
    rng = np.random.default_rng(seed)
    F = (_orthonormal(rng, n, k) * 10.0 ** np.array(log_sigma[:k])) @ _orthonormal(rng, d, k).T
    layer = layers.svd_matrix_function if route == "svd" else layers.svd_dk_matrix_function
    got = layer(torch.from_numpy(F), fn, eps=eps, p=p).numpy()
    expected = _scipy(fn, p, F.T @ F + eps * np.eye(d))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 7), n=st.integers(1, 7), r=st.integers(0, 7), given_rank=st.booleans(), seed=SEEDS)
def test_projector_is_the_orthogonal_projector_onto_the_range(m, n, r, given_rank, seed):
    """A = P diag(σ) Rᵀ of rank r (σ ∈ [0.5, 2], P, R orthonormal): Π_A = P Pᵀ — so Π² = Π = Πᵀ,
    trace r, Π A = A — with the rank detected or given; a smaller given rank k gives a rank-k
    orthogonal projector inside range(A)."""
    r = min(r, m, n)
    rng = np.random.default_rng(seed)
    P, R = _orthonormal(rng, m, r), _orthonormal(rng, n, r)
    A = (P * rng.uniform(0.5, 2.0, r)) @ R.T
    Pi = layers.projector(torch.from_numpy(A), rank=r if given_rank else None).numpy()
    np.testing.assert_allclose(Pi, P @ P.T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Pi @ A, A, rtol=0, atol=1e-12)
    k = int(rng.integers(0, r + 1))
    Pk = layers.projector(torch.from_numpy(A), rank=k).numpy()
    np.testing.assert_allclose(Pk @ Pk, Pk, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(Pk, Pk.T)
    assert np.trace(Pk) == pytest.approx(k, abs=1e-12)
    np.testing.assert_allclose(Pi @ Pk, Pk, rtol=0, atol=1e-12)  # range(Π_k) ⊆ range(A)


@settings(max_examples=25, deadline=None)
@given(C=st.integers(1, 5), H=st.integers(1, 4), W=st.integers(1, 4), seed=SEEDS,
       function=st.sampled_from(["sqrt", "log"]), method=st.sampled_from([None, "analytic", "taylor"]),
       eps=st.floats(0.01, 1.0))
def test_covariance_pooling_invariances(C, H, W, seed, function, method, eps):
    """g(Σ + εI) is symmetric with eigenvalues ≥ g(ε) (Σ ⪰ 0), and is unchanged by a constant added to
    each channel or by reordering the pixels; reordering the channels reorders its rows and columns."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((2, C, H, W)))
    pool = CovariancePooling(function, method=method, eps=eps)
    out = pool(x)
    np.testing.assert_allclose(out.numpy(), out.transpose(1, 2).numpy(), rtol=0, atol=1e-13)
    floor = np.sqrt(eps) if function == "sqrt" else np.log(eps)
    assert (np.linalg.eigvalsh(out.numpy()) >= floor - 1e-10).all()
    tol = dict(rtol=0, atol=1e-10 / min(eps, np.sqrt(eps)))
    shift = torch.from_numpy(rng.uniform(-10, 10, (2, C, 1, 1)))
    np.testing.assert_allclose(pool(x + shift).numpy(), out.numpy(), **tol)
    pixels = torch.from_numpy(rng.permutation(H * W))
    np.testing.assert_allclose(pool(x.flatten(2)[..., pixels].reshape(x.shape)).numpy(), out.numpy(), **tol)
    perm = rng.permutation(C)
    np.testing.assert_allclose(pool(x[:, perm]).numpy(), out.numpy()[:, perm][:, :, perm], **tol)
