"""Array-namespace helpers so one formula serves numpy arrays and torch tensors alike.

Formula code receives ``xp`` (the ``numpy`` or ``torch`` module) and uses only operations the
two share, plus the helpers below for the few that are spelled differently.
"""

from __future__ import annotations

import contextlib
import math
import types
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch

#: A numpy array or a torch tensor: what formula code receives and returns.
Array = Union[np.ndarray, "torch.Tensor"]
#: The numpy or the torch module, as returned by :func:`namespace`.
Namespace = types.ModuleType
#: A numpy or a torch dtype (``np.float64``, ``torch.float32``, …).
DType = Any


def namespace(x: Array) -> Namespace:
    """The module (numpy or torch) that owns array ``x``."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def eigh(A: Array) -> tuple[Array, Array]:
    """(λ ascending, U) of symmetric A, lower triangle read. For torch the aten op, not
    ``torch.linalg.eigh``: the library's own decompositions (a method's forward, a backward that
    rebuilds its state) are then neither logged nor swapped by ``stabkit.monitor.watch``."""
    if type(A).__module__.startswith("torch"):
        import torch

        return torch.ops.aten.linalg_eigh(A, "L")
    return np.linalg.eigh(A)


def is_torch(xp: Namespace) -> bool:
    """Whether ``xp`` is the torch module (not numpy)."""
    return xp is not np


def T(x: Array) -> Array:
    """Transpose of the last two axes."""
    return x.swapaxes(-1, -2)


def sym(x: Array) -> Array:
    """Symmetric part (X + Xᵀ)/2 of the last two axes."""
    return (x + T(x)) / 2


def diagonal(x: Array) -> Array:
    """The diagonals of a batch of square matrices, shape (..., d)."""
    if isinstance(x, np.ndarray):
        return np.diagonal(x, axis1=-2, axis2=-1)
    return x.diagonal(dim1=-2, dim2=-1)


def diag_embed(v: Array) -> Array:
    """Batch of diagonal matrices with diagonals v (..., d)."""
    xp = namespace(v)
    d = v.shape[-1]
    eye = xp.eye(d, dtype=v.dtype) if xp is np else xp.eye(d, dtype=v.dtype, device=v.device)
    return v[..., :, None] * eye


def eye_like(x: Array) -> Array:
    """Identity of the matrix size, dtype and device of x (..., d, d)."""
    xp = namespace(x)
    d = x.shape[-1]
    if xp is np:
        return np.eye(d, dtype=x.dtype)
    return xp.eye(d, dtype=x.dtype, device=x.device)


def index_sign(x: Array) -> Array:
    """S_ij = sign(j - i): +1 above the diagonal, -1 below, 0 on it, shaped like x (..., d, d)."""
    xp = namespace(x)
    d = x.shape[-1]
    if xp is np:
        idx = np.arange(d)
        return np.sign(idx[None, :] - idx[:, None]).astype(x.dtype)
    idx = xp.arange(d, device=x.device)
    return xp.sign(idx[None, :] - idx[:, None]).to(x.dtype)


def errstate(x: Array | None = None) -> contextlib.AbstractContextManager:
    """Silence numpy's divide/invalid warnings: infinities are a result here, not an accident.

    A no-op when ``x`` is a torch tensor: torch does not warn, and a numpy context manager on the
    torch path would stop ``torch.compile(fullgraph=True)``.
    """
    if x is not None and is_torch(namespace(x)):
        return contextlib.nullcontext()
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def kernel_product(F: Array, J: Array) -> Array:
    """F ∘ J for a kernel F ≈ 1/(λ_j − λ_i) and a projected gradient or tangent J (Uᵀ ∂L/∂U, Uᵀ dA U),
    with 0 where J = 0 and F = ±∞ (an exact tie): the term of Prop. 2 (Ionescu et al., ICCV 2015)
    is then absent, not ∞ · 0 = NaN. A nonzero J at a tie still gives ±∞. One ``where``, no branch
    on values (``torch.compile``-friendly); F is zeroed before the product, so a derivative of the
    product through J stays finite there too."""
    xp = namespace(F)
    tie = (J == 0) & xp.isinf(F)
    return xp.where(tie, xp.zeros_like(F), F) * J


def is_traced(x: Array) -> bool:
    """True when ``x`` is seen by ``torch.compile`` or a ``torch.func`` transform (vmap, grad, …).

    Python control flow on tensor values (``if t.any()``, ``int(t.max())``) is not allowed there;
    code that takes such a shortcut in eager mode takes the value-independent route instead.
    """
    if not is_torch(namespace(x)):
        return False
    import torch

    return torch.compiler.is_compiling() or is_func_transformed(x)


def is_func_transformed(x) -> bool:
    """True when the torch tensor ``x`` is seen by a ``torch.func`` transform (vmap, grad, …) outside
    ``torch.compile``, where it cannot answer layout queries (``is_contiguous``: vmap raises NYI)."""
    import torch

    return not torch.compiler.is_compiling() and bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


def finfo_eps(dtype: DType) -> float:
    """Machine epsilon of a numpy or torch floating dtype (no numpy call for a torch dtype)."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


# --- operations the two namespaces spell differently ---------------------------------------------


def vector_norm(x: Array) -> Array:
    """The Euclidean norm over the last axis, kept as a length-1 axis."""
    xp = namespace(x)
    if xp is np:
        return np.linalg.norm(x, axis=-1, keepdims=True)
    return xp.linalg.vector_norm(x, dim=-1, keepdim=True)


def unit_scale(x: Array, axes: tuple[int, ...] = (-2, -1)) -> Array:
    """c = 2^−e per matrix (``axes``: per vector, e.g. (-1,) for singular values), those axes kept as 1,
    without gradient, where max|x| over them = m·2^e, m ∈ [½, 1): max|c·x| is in [½, 1), exactly (a power
    of two). e is kept ≥ log2(tiny) so that c is finite; c = 1 for x = 0 (and where x holds inf or NaN)."""
    xp = namespace(x)
    kept = tuple(1 if i - x.ndim in axes else n for i, n in enumerate(x.shape))
    empty = any(x.shape[a] == 0 for a in axes)
    if xp is np:
        if empty:
            return np.ones(kept, x.dtype)
        _, e = np.frexp(np.abs(x).max(axis=axes, keepdims=True))
        return np.ldexp(np.ones((), x.dtype), -np.maximum(e, np.finfo(x.dtype).minexp))
    if empty:
        return xp.ones(kept, dtype=x.dtype, device=x.device)
    _, e = xp.frexp(x.detach().abs().amax(dim=axes, keepdim=True))
    return xp.exp2(-e.clamp_min(int(math.log2(xp.finfo(x.dtype).tiny))).to(x.dtype))


def flip(x: Array) -> Array:
    """``x`` with its last axis reversed."""
    xp = namespace(x)
    if xp is np:
        return np.flip(x, -1)
    return xp.flip(x, (-1,))


def cumall(ok: Array) -> Array:
    """Running AND over the last axis of a bool array: out[..., i] = ok[..., 0] & … & ok[..., i]."""
    xp = namespace(ok)
    if xp is np:
        return np.logical_and.accumulate(ok, -1)
    return xp.cumprod(ok.to(xp.float32), -1) > 0


def true_like(x: Array) -> Array:
    """An all-True bool array of the shape (and device) of ``x``."""
    xp = namespace(x)
    if xp is np:
        return np.ones(x.shape, dtype=bool)
    return xp.ones_like(x, dtype=xp.bool)


def arange(n: int, like: Array, dtype: DType) -> Array:
    """0, 1, …, n − 1 of ``dtype`` in the namespace (and on the device) of ``like``."""
    xp = namespace(like)
    if xp is np:
        return np.arange(n, dtype=dtype)
    return xp.arange(n, dtype=dtype, device=like.device)


def astype(x: Array, dtype: DType) -> Array:
    """``x`` converted to ``dtype`` (a dtype of its own namespace)."""
    if namespace(x) is np:
        return x.astype(dtype)
    return x.to(dtype)


def amax(x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
    """Maximum over ``axis`` (the reduced axes kept with length 1 unless ``keepdims`` is False)."""
    if namespace(x) is np:
        return x.max(axis=axis, keepdims=keepdims)
    return x.amax(dim=axis, keepdim=keepdims)


def amin(x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
    """Minimum over ``axis`` (the reduced axes kept with length 1 unless ``keepdims`` is False)."""
    if namespace(x) is np:
        return x.min(axis=axis, keepdims=keepdims)
    return x.amin(dim=axis, keepdim=keepdims)


def as_like(a: np.ndarray, like: Array) -> Array:
    """The numpy constant ``a`` as an array of ``like``'s namespace, dtype and device."""
    if namespace(like) is np:
        return a.astype(like.dtype, copy=False)
    return namespace(like).as_tensor(a, dtype=like.dtype, device=like.device)
