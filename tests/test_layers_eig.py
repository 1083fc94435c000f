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
    A = torch.tensor([[2.0, 1.0], [1.0 + 1e-15, 3.0]], dtype=torch.float64)
    lam, _ = layers.eig(A)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh((A + A.T) / 2), rtol=0, atol=1e-14)
