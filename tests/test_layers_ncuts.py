"""Normalized-cuts losses: input contract (degrees, E's shape), tensors saved for backward so
in-place edits are caught, first derivatives only."""

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices

D = torch.float64
E = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D)


def _W(seed=0):
    F = torch.rand(3, 2, dtype=D, generator=torch.Generator().manual_seed(seed)) + 0.2
    return F @ F.T


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
@pytest.mark.parametrize("label, W, match", bad_matrices(3, n=4), ids=[c[0] for c in bad_matrices(3, n=4)])
def test_bad_affinity_raises_input_error(fn, label, W, match):
    with pytest.raises(InputError, match=match):
        fn(W, E)


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_indicators_of_the_wrong_shape_raise_input_error(fn):
    with pytest.raises(InputError, match="indicators E"):
        fn(_W(), E[:2])


def test_zero_degree_node_raises_input_error():
    W = _W()
    W[2, :] = W[:, 2] = 0
    with pytest.raises(InputError, match="zero or negative degree"):
        layers.ncut_j1(W, E)


def test_in_place_edit_of_W_after_forward_is_caught():
    w = _W().requires_grad_()
    W = w * 1.0
    J = layers.ncut_j1(W, E, rank=2)
    W.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        J.backward()


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_second_derivative_is_refused(fn):
    w = _W().requires_grad_()
    (g,) = torch.autograd.grad(fn(w, E, rank=2) ** 2, w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (g * torch.ones_like(g)).sum().backward()


def test_indicators_and_weights_must_be_real_and_on_the_inputs_device():
    """A complex E was cast to its real part (torch's warning only); an E or λ on another device (here
    'meta') failed inside torch ('Cannot copy out of meta tensor')."""
    W = torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.5, 0.2], [0.1, 0.2, 1.0]], dtype=torch.float64)
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    for bad in (E.to(torch.complex128), E.to("meta")):
        for fn in (layers.ncut_j1, layers.ncut_j2):
            with pytest.raises(ValueError, match="expected real indicators E on W's device cpu"):
                fn(W, bad)
    with pytest.raises(ValueError, match="on cpu"):
        layers.low_rank_affinity(E, torch.ones(2, dtype=torch.float64, device="meta"))
    assert torch.isfinite(layers.ncut_j1(W, E.long()))  # integer indicators stay accepted
