"""``torch``: torch.linalg.eigh's own backward, as shipped (the baseline every model gets).

Mathematically the analytic rule; kept separate because what matters is what the library does
with ties and float32 in practice. The gradient is symmetrized like every other method's.
"""

import numpy as np

from .. import _xp
from .._xp import Array
from ._base import Method


def forward(A: Array, **_) -> tuple[Array, Array, dict]:
    import torch

    is_numpy = isinstance(A, np.ndarray)
    leaf = (torch.from_numpy(np.ascontiguousarray(A)) if is_numpy else A.detach()).clone().requires_grad_(True)
    with torch.enable_grad():
        lam, U = torch.linalg.eigh(leaf)
    state = {"A": leaf, "lam": lam, "U": U, "numpy": is_numpy}
    if is_numpy:
        return lam.detach().numpy(), U.detach().numpy(), state
    return lam.detach(), U.detach(), state


def backward(state: dict, gU: Array, glam: Array) -> Array:
    import torch

    to_t = (lambda x: torch.from_numpy(np.ascontiguousarray(x))) if state["numpy"] else (lambda x: x)
    (gA,) = torch.autograd.grad((state["lam"], state["U"]), state["A"], (to_t(glam), to_t(gU)))
    gA = _xp.sym(gA)
    return gA.numpy() if state["numpy"] else gA


METHOD = Method("torch", backward, {}, forward=forward, paper="PyTorch torch.linalg.eigh autograd", summary="torch's own eigh backward",
                native=True)
