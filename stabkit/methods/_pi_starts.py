"""The seeded start vectors of ``pi-forward`` / ``pi-authors`` (power iteration from random starts).

They come from a small integer hash of (row, column, seed), so they are bit-identical in numpy and
torch, the same for every matrix of a batch (``vmap`` and a batched call agree), and made without
numpy calls on the torch path (``torch.compile(fullgraph=True)``).
"""

from __future__ import annotations

from .. import _xp
from .._xp import Array


def start_vectors(A: Array, seed: int) -> Array:
    """Unit start vectors (columns of a d×d matrix, broadcast to A's shape) from an integer hash of
    (row·d + column, seed) — an LCG step then xor-shift-multiply rounds, all exact in int64 below
    2^62 — mapped to [−½, ½) before normalising."""
    xp = _xp.namespace(A)
    d = A.shape[-1]
    modulus = 2**31
    x = _xp.arange(d * d, like=A, dtype=xp.int64).reshape(d, d)
    x = (x * 1103515245 + (int(seed) % modulus) * 2531011 + 0x91) % modulus
    for multiplier in (0x2C1B3C6D, 0x297A2D39):  # xor-shift-multiply rounds: not affine in the index
        x = x ^ (x >> 15)
        x = (x * multiplier) % modulus
    x = x ^ (x >> 15)
    s = _xp.astype(x, xp.float64) / modulus - 0.5
    s = s / _xp.vector_norm(_xp.T(s))[..., 0]
    return xp.broadcast_to(_xp.astype(s, A.dtype), A.shape)
