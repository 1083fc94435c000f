"""Projector layer (Lemma 1): input contract, first derivatives only."""

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
