"""EIG layer A = U diag(λ) Uᵀ for symmetric A, backward by Ionescu et al. (ICCV 2015) Prop. 2.

Prop. 2 is exactly the registry's ``analytic`` method (``stabkit.methods._base.assemble`` with
F_ij = 1/(λ_j − λ_i)); the layer routes through :func:`stabkit.torch.eigh`, so ``method=`` swaps
in any registry backward (``taylor``, ``pi``, ``clip``, …) without touching the model. Input:
stabkit.torch's contract — a matrix that is not symmetric within √eps·max|A| is an InputError;
within it, its symmetric part is decomposed.
"""

from __future__ import annotations

import torch

import stabkit.torch
from ._checks import check_matrix, method_params
from ..methods import DEFAULT, Spec


def eig(A: torch.Tensor, method: str | Spec = DEFAULT, **params):
    """(λ ascending, U) of the symmetric part of A (..., d, d); gradient by ``method`` (a Spec, or a
    registry name / spec text with ``params``, made a Spec once inside ``stabkit.torch.eigh``)."""
    check_matrix(A, "eig", symmetric=True)
    params = method_params(params, "eig")
    return stabkit.torch.eigh(stabkit.torch.symmetrize(A), method=method, check=False, **params)
