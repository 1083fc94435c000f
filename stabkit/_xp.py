"""Array-namespace helpers so one formula serves numpy arrays and torch tensors alike.

Formula code receives ``xp`` (the ``numpy`` or ``torch`` module) and uses only operations the
two share, plus the helpers below for the few that are spelled differently.
"""

from __future__ import annotations

import contextlib

import numpy as np


def namespace(x):
    """The module (numpy or torch) that owns array ``x``."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def is_torch(xp) -> bool:
    return xp is not np


def T(x):
    """Transpose of the last two axes."""
    return x.swapaxes(-1, -2)


def sym(x):
    """Symmetric part (X + Xᵀ)/2 of the last two axes."""
    return (x + T(x)) / 2


def diagonal(x):
    """The diagonals of a batch of square matrices, shape (..., d)."""
    if isinstance(x, np.ndarray):
        return np.diagonal(x, axis1=-2, axis2=-1)
    return x.diagonal(dim1=-2, dim2=-1)


def diag_embed(v):
    """Batch of diagonal matrices with diagonals v (..., d)."""
    xp = namespace(v)
    d = v.shape[-1]
    eye = xp.eye(d, dtype=v.dtype) if xp is np else xp.eye(d, dtype=v.dtype, device=v.device)
    return v[..., :, None] * eye


def eye_like(x):
    """Identity of the matrix size, dtype and device of x (..., d, d)."""
    xp = namespace(x)
    d = x.shape[-1]
    if xp is np:
        return np.eye(d, dtype=x.dtype)
    return xp.eye(d, dtype=x.dtype, device=x.device)


def index_sign(x):
    """S_ij = sign(j - i): +1 above the diagonal, -1 below, 0 on it, shaped like x (..., d, d)."""
    xp = namespace(x)
    d = x.shape[-1]
    if xp is np:
        idx = np.arange(d)
        return np.sign(idx[None, :] - idx[:, None]).astype(x.dtype)
    idx = xp.arange(d, device=x.device)
    return xp.sign(idx[None, :] - idx[:, None]).to(x.dtype)


def errstate(x=None):
    """Silence numpy's divide/invalid warnings: infinities are a result here, not an accident.

    A no-op when ``x`` is a torch tensor: torch does not warn, and a numpy context manager on the
    torch path would stop ``torch.compile(fullgraph=True)``.
    """
    if x is not None and is_torch(namespace(x)):
        return contextlib.nullcontext()
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def is_traced(x) -> bool:
    """True when ``x`` is seen by ``torch.compile`` or a ``torch.func`` transform (vmap, grad, …).

    Python control flow on tensor values (``if t.any()``, ``int(t.max())``) is not allowed there;
    code that takes such a shortcut in eager mode takes the value-independent route instead.
    """
    if not is_torch(namespace(x)):
        return False
    import torch

    if torch.compiler.is_compiling():
        return True
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


def finfo_eps(dtype) -> float:
    """Machine epsilon of a numpy or torch floating dtype (no numpy call for a torch dtype)."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)
