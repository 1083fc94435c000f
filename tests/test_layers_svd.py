"""The SVD layer (Prop. 1) where σ = 0: the D term's 1/σ must not turn an unused ∂L/∂U into NaN."""

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
