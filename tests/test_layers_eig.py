"""EIG layer (Prop. 2): stabkit.torch's input contract, symmetry included."""

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices, nonsymmetric

CASES = bad_matrices(3, n=4) + [("non-symmetric", nonsymmetric(), "not symmetric"),
                                ("int32", torch.eye(3, dtype=torch.int32), "dtype")]


@pytest.mark.parametrize("label, A, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_input_error(label, A, match):
    with pytest.raises(InputError, match=match):
        layers.eig(A)


def test_symmetric_up_to_rounding_is_accepted_and_symmetrised():
    # an asymmetry of 1e-9, inside the √eps·max|A| ≈ 4.5e-8 the check accepts, but large enough that
    # reading one triangle instead of the symmetric part moves λ by ~5e-10 (λ of [[2, 1 + δ/2], [·, 3]]
    # in closed form: (5 ± √(1 + 4(1 + δ/2)²)) / 2)
    delta = 1e-9
    A = torch.tensor([[2.0, 1.0], [1.0 + delta, 3.0]], dtype=torch.float64)
    lam, _ = layers.eig(A)
    b = 1.0 + delta / 2
    root = (1 + 4 * b * b) ** 0.5
    expected = torch.tensor([(5 - root) / 2, (5 + root) / 2], dtype=torch.float64)
    torch.testing.assert_close(lam, expected, rtol=0, atol=1e-14)


def test_the_method_and_its_params_reach_the_backward():
    # eigenvalues (1, 1.01, 2, 3): Taylor's truncated series is far from the exact rule at the close
    # pair and its degree K shows, so the gradient tells which rule (and which K) ran
    import stabkit.torch as sktorch

    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=g))
    A = Q @ torch.diag(torch.tensor([1.0, 1.01, 2.0, 3.0], dtype=torch.float64)) @ Q.mT
    B = torch.randn(4, 4, dtype=torch.float64, generator=g)

    def grad(eig, **choice):
        x = A.clone().requires_grad_(True)
        lam, U = eig(x, **choice)
        w = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)  # unequal: not the basis-free trace of B
        return torch.autograd.grad(((U * (B @ U)).sum(-2) * w).sum() + (lam ** 2).sum(), x)[0]

    grads = {}
    for choice in ({}, {"method": "taylor", "K": 1}, {"method": "taylor", "K": 5}):
        grads[str(choice)] = got = grad(layers.eig, **choice)
        torch.testing.assert_close(got, grad(sktorch.eigh, **choice), rtol=1e-10, atol=1e-12)
    a, b, c = grads.values()
    assert min((a - b).norm(), (b - c).norm(), (a - c).norm()) > 0.01 * a.norm()
