"""The SVD layer (Prop. 1) where σ = 0: the D term's 1/σ must not turn an unused ∂L/∂U into NaN."""

import importlib

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices

D = torch.float64


def _dead_column(seed=0):
    X = torch.randn(6, 4, dtype=D, generator=torch.Generator().manual_seed(seed))
    X[:, 3] = 0                                     # a dead feature: σ_4 = 0 exactly
    return X


def test_zero_singular_value_gradient_of_sigma_is_closed_form():
    X = _dead_column()
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad((layers.svd(x)[1] ** 2).sum(), x)
    torch.testing.assert_close(g, 2 * X, rtol=0, atol=1e-13)   # ∂(Σσ²)/∂X = ∂‖X‖²_F/∂X = 2X


def test_zero_singular_value_loss_in_v_is_closed_form():
    # L = ⟨G, V diag(σ²) Vᵀ⟩ = ⟨G, XᵀX⟩, so ∂L/∂X = X (G + Gᵀ); U is unused (torch passes zeros)
    X, G = _dead_column(1), torch.randn(4, 4, dtype=D, generator=torch.Generator().manual_seed(2))
    x = X.clone().requires_grad_()
    _, S, V = layers.svd(x)
    (g,) = torch.autograd.grad((G * ((V * S ** 2) @ V.mT)).sum(), x)
    torch.testing.assert_close(g, X @ (G + G.T), rtol=1e-10, atol=1e-12)


def test_zero_matrix_gradient_is_finite():
    x = torch.zeros(3, 2, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(layers.svd(x)[1].sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("label, X, match", bad_matrices(3, n=4), ids=[c[0] for c in bad_matrices(3, n=4)])
def test_bad_input_raises_input_error(label, X, match):
    with pytest.raises(InputError, match=match):
        layers.svd(X)


def test_backward_at_a_power_of_two_scale_is_the_gradient(monkeypatch):
    """Prop. 1's backward evaluated at cσ with c·∂L/∂U, c·∂L/∂V (forced c = 2^−3 at moderate float64
    scale, as for σ ~ 1e20 in float32) is still the gradient: gradcheck of a loss in U, σ and V."""
    svd_module = importlib.import_module("stabkit.layers.svd")
    monkeypatch.setattr(svd_module, "unit_scale", lambda S, axes: torch.full_like(S[..., :1], 0.125))
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(6, 4, dtype=D, generator=gen).requires_grad_()
    A, B = torch.randn(6, 6, dtype=D, generator=gen), torch.randn(4, 4, dtype=D, generator=gen)

    def loss(x):                                        # invariant to the signs of the singular vectors
        U, S, V = layers.svd(x)
        return (A * ((U * S) @ U.T)).sum() + (B * ((V * S.sqrt()) @ V.T)).sum() + S.sum()
    assert torch.autograd.gradcheck(loss, (X,))


def test_float32_matrix_near_1e20_has_a_finite_backward():
    """σ ~ 1e20 in float32: K = 1/(σ_i² − σ_j²) was 1/(inf − inf) = NaN; now the gradient of
    ⟨B, V diag(σ/1e20) Vᵀ⟩ + Σσ is within 1e-4 of the same matrix's in float64."""
    gen = torch.Generator().manual_seed(6)
    X = (torch.randn(6, 4, dtype=D, generator=gen) * 1e20).float().double()
    B = torch.randn(4, 4, dtype=D, generator=gen)
    grads = []
    for dtype in (torch.float32, D):
        x = X.to(dtype).requires_grad_()
        _, S, V = layers.svd(x)
        loss = (B.to(dtype) * ((V * (S / 1e20)) @ V.T)).sum() + S.sum()
        grads.append(torch.autograd.grad(loss, x)[0].double())
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()).item() < 1e-4


@pytest.mark.parametrize("dtype, e", [(torch.float32, 100), (torch.float32, -70), (torch.float32, -83),
                                      (torch.float64, -540), (torch.float64, -565)],
                         ids=["f32-2^100", "f32-2^-70", "f32-2^-83", "f64-2^-540", "f64-2^-565"])
def test_gradient_through_U_and_V_at_extreme_scales_is_the_scaled_gradient(dtype, e):
    """L = ⟨R, U Vᵀ⟩ (the polar factor, degree 0 in X) at X·2^e: ∂L/∂X is 2^−e times its value at X,
    which is a normal number here. K = 1/(σ_i² − σ_j²) underflowed: NaN where σ² is subnormal (float32
    2^-70, float64 2^-540), K = 0 — a silently wrong gradient — where σ² is 0 (2^-83, 2^-565), and
    K·Uᵀ∂L/∂U underflowed to 0 at float32 2^100 though σ² did not overflow after the 2^−39 rescale."""
    gen = torch.Generator().manual_seed(7)
    X, R = torch.randn(5, 3, dtype=D, generator=gen), torch.randn(5, 3, dtype=D, generator=gen)
    X = X.to(dtype).double()                            # the reference sees the same rounded matrix
    x = X.requires_grad_()
    U, _, Vh = torch.linalg.svd(x, full_matrices=False)  # torch's own backward, float64, at scale 1
    (expected,) = torch.autograd.grad((R * (U @ Vh)).sum(), x)
    x = (X.detach() * 2.0 ** e).to(dtype).requires_grad_()
    U, _, V = layers.svd(x)
    (got,) = torch.autograd.grad((R.to(dtype) * (U @ V.mT)).sum(), x)
    got = got.double() * 2.0 ** e
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert ((got - expected).norm() / expected.norm()).item() < rtol
