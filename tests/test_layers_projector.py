"""Projector layer (Lemma 1): input contract, first derivatives only."""

import numpy as np
import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices, second_derivative


@pytest.mark.parametrize("label, A, match", bad_matrices(3), ids=[c[0] for c in bad_matrices(3)])
def test_bad_input_raises_input_error(label, A, match):
    with pytest.raises(InputError, match=match):
        layers.projector(A)


def test_second_derivative_is_refused():
    A = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="differentiate twice"):
        second_derivative(layers.projector, A)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_default_rank_is_the_numerical_rank(dtype, rtol):
    # A = B Bᵀ with B 6 × 2: rank 2, its other four σ rounding-level, not 0. The default rule (σ >
    # max(m, n)·eps·σ_max) keeps two and Π_A is the projector onto range(B), here from B's QR (in
    # float32 the rounding of A tilts its range by ~eps₃₂/0.09, σ₂/σ₁ ≈ 0.09 here)
    g = torch.Generator().manual_seed(7)
    B = torch.randn(6, 2, dtype=torch.float64, generator=g) @ torch.diag(torch.tensor([1.0, 0.3], dtype=torch.float64))
    Q, _ = torch.linalg.qr(B)
    A = (B @ B.mT).to(dtype)
    P = layers.projector(A)
    torch.testing.assert_close(P.double(), Q @ Q.mT, rtol=0, atol=rtol)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 1.5}, "rank must be an integer"), ({"rank": True}, "rank must be an integer"),
    ({"rank": -1}, r"rank must be an integer in \[0, 3\]"), ({"rank": 4}, r"in \[0, 3\]"),
    ({"rtol": -1.0}, "rtol must be a finite number"), ({"rtol": float("nan")}, "rtol"), ({"rtol": float("inf")}, "rtol"),
    ({"rtol": "1e-6"}, "rtol")])
def test_a_rank_or_rtol_outside_its_domain_is_named(kwargs, match):
    """A fractional rank used to keep ⌈rank⌉ singular values and a negative or NaN rtol every or no σ, silently."""
    with pytest.raises(InputError, match=match):
        layers.projector(torch.eye(3, dtype=torch.float64), **kwargs)


def test_eps_and_rtol_share_one_rule_across_the_layers():
    """ZCAWhitening's eps and the projector's rtol re-wrote check_eps (which refused a numpy float32 ε
    that they took): one rule, a finite real number ≥ 0, numpy numbers included, bools refused."""
    from stabkit.train.zca import ZCAWhitening

    A = torch.eye(3, dtype=torch.float64)
    small = np.float32(0.25)
    torch.testing.assert_close(layers.eig_matrix_function(A, "sqrt", eps=small), 1.25 ** 0.5 * A)
    assert ZCAWhitening(4, d=2, eps=small).eps == 0.25
    torch.testing.assert_close(layers.projector(A, rtol=small), A)
    for call in (lambda: layers.eig_matrix_function(A, "sqrt", eps=True), lambda: ZCAWhitening(4, d=2, eps=True),
                 lambda: layers.projector(A, rtol=True)):
        with pytest.raises(InputError, match=r"(eps|rtol) must be a finite number ≥ 0, got True"):
            call()


@pytest.mark.parametrize("A, rank", [(torch.zeros(3, 2, dtype=torch.float64), 1),
                                     (torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64), 2)],
                         ids=["zero-rank-1", "rank-1-rank-2"])
def test_a_rank_above_the_rank_of_A_is_an_input_error(A, rank):
    """A given rank keeps a σ that is exactly 0: A⁺ took 1/0, Π_A gained an arbitrary direction and the
    gradient was NaN everywhere, silently. At its true rank A = 2e₁e₁ᵀ has Π_A = e₁e₁ᵀ and, by Lemma 1
    with A⁺ = ½e₁e₁ᵀ, ∂⟨G, Π_A⟩/∂A = (I − e₁e₁ᵀ)(G + Gᵀ)e₁e₁ᵀ/2."""
    a = A.clone().requires_grad_()
    with pytest.raises(InputError, match=f"projector: rank={rank} exceeds the rank of A"):
        layers.projector(a, rank=rank)
    if rank == 2:
        G = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
        P = layers.projector(a, rank=1)
        e1 = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
        torch.testing.assert_close(P.detach(), e1 @ e1.T, rtol=0, atol=1e-15)
        (g,) = torch.autograd.grad((G * P).sum(), a)
        expected = ((torch.eye(3, dtype=torch.float64) - e1 @ e1.T) @ (G + G.T) @ e1 / 2) @ e1[:2].T
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-14)


def test_a_rank_below_the_numerical_rank_refuses_its_backward():
    """rank=2 on a full-rank 4 × 4 A (σ = 3.6, 2.7, 1.4, 0.26) gives the projector onto the top two
    singular vectors, and Lemma 1 with the truncated A⁺ is not its derivative: along a random direction it
    gave −0.601 where a central difference of the forward gives −0.728, silently. The backward now raises;
    the forward still returns the top-2 projector, and a full-rank A at its own rank still differentiates."""
    from stabkit.errors import UnsupportedDerivativeError

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    G = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    X = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    U, S, Vh = torch.linalg.svd(A)
    P2 = U[:, :2] @ U[:, :2].T
    loss = lambda a: (G * layers.projector(a, rank=2)).sum()  # noqa: E731
    h = 1e-6
    central = float((loss(A + h * X) - loss(A - h * X)) / (2 * h))
    pinv2 = Vh[:2].T @ torch.diag(1 / S[:2]) @ U[:, :2].T
    lemma1 = float((2 * (torch.eye(4, dtype=torch.float64) - P2) @ ((G + G.T) / 2) @ pinv2.T * X).sum())
    assert abs(lemma1 - central) > 0.1 * abs(central)        # why it is refused: not the derivative
    a = A.clone().requires_grad_()
    P = layers.projector(a, rank=2)
    torch.testing.assert_close(P.detach(), P2, rtol=0, atol=1e-13)
    with pytest.raises(UnsupportedDerivativeError, match="projector backward: rank=2 is below the numerical rank 4"):
        (G * P).sum().backward()
    (g,) = torch.autograd.grad((G * layers.projector(a[:, :3], rank=3)).sum(), a)   # 4 × 3 of rank 3: Lemma 1
    full = lambda b: (G * layers.projector(b, rank=3)).sum()  # noqa: E731
    B, Y = A[:, :3], X[:, :3]
    assert float((g[:, :3] * Y).sum()) == pytest.approx(float((full(B + h * Y) - full(B - h * Y)) / (2 * h)), rel=1e-6)


@pytest.mark.parametrize("dtype, big", [(torch.float64, 1e308), (torch.float32, 3e38)], ids=["float64", "float32"])
def test_entries_near_the_dtype_maximum_keep_their_range(dtype, big):
    """B = big·[[1, 1], [1, 1], [0, 1]] is finite but its σ_max = 2.1·big overflows: the rank rule kept no σ and
    Π_B was the zero matrix, silently. range(B) = span{(1, 1, 0), (0, 0, 1)}, so Π_B is that closed form. In
    float32, W = 3e38·[[1, 1], [1, 0.5]] (full rank, Π_W = I) gave J₂ = 1 against E = I instead of 0."""
    B = torch.tensor([[big, big], [big, big], [0.0, big]], dtype=dtype)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(layers.projector(B), expected, rtol=0, atol=1e3 * torch.finfo(dtype).eps)
    W = torch.tensor([[big, big], [big, big / 2]], dtype=dtype)
    assert float(layers.ncut_j2(W, torch.eye(2, dtype=dtype))) < 1e3 * torch.finfo(dtype).eps
