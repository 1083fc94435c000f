"""The on-disk cache of ground truths: where entries live, their keys, and checksummed reads/writes.

Entries live in ``$STABKIT_CACHE`` (default ``~/.cache/stabkit/reference``): an eigendecomposition
per input (sha256 of the float64 bytes and shape), engine and precision (``eig_key``), a gradient per
(input, engine, loss name, sha of weight, sha of w, precision) (``grad_key``).  Every key carries
``CACHE_VERSION`` and the engine's algorithm version (``ENGINE_VERSIONS``), so results of an older
algorithm are never reused.  The entry formats belong to their producers (the API writes gradients,
each engine its eigendecompositions); this module only stores bytes.

Each file is ``MAGIC + sha256(name NUL payload) + NL + payload``, written atomically (``stabkit._io``).
An entry that fails its checksum (edited, truncated, corrupted), cannot be read or cannot be parsed
is recomputed with a ``ReferenceCacheWarning`` naming the file; a read-only or full cache directory
only warns.  A bad cache never fails a computation.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from .._io import write_bytes_atomic

CACHE_VERSION = "v3"  # v3: checksummed entries
# Algorithm version of each engine, part of every cache key: bump when an engine's results change,
# so that truths computed by an older algorithm are never reused.
# flint 2: exact cluster test in the refinement, repeated Rayleigh–Ritz on sub-clusters, and the
#          group (invariant-subspace) certificate for overlapping eigenvalue enclosures.
# mpmath 2: precision covers the condition; digits capped by it.
# flint 3: pairs outside the Newton region (large correction) are refined as one cluster and
#          resolved by Rayleigh–Ritz (exactly repeated eigenvalues split by rounding cycled).
# flint 4: the certificate's float64 bound arithmetic runs in units scaled to O(1) (its error terms
#          underflowed for tiny ∂L/∂A, e.g. a weight of 1e-285: 60 digits certified, 45 right).
# mpmath 3: digits capped by the cancellation too (a gradient far below max|D|·‖G_sym‖_F, e.g. an
#          exact 0 at both precisions where the truth is 1e-61, certified 28 digits); the weights w and
#          G enter exactly at a forced dps ≤ 15 (they were rounded to it).
# flint 5: no rigorous bound for a weighted loss whose weights differ inside a group of overlapping
#          enclosures (the bound read D⁰ at one entry per block: at a forced dps 3, 12.4 digits for 0 right).
# arb 1: reverse mode of power iteration with deflation (``iterated_truth``), P and 2P bits.
# arb 3: digits capped by the cancellation too (a weight entry of 1e-100 beside 1 is lost alike at P and
#        2P bits: both returned exactly 0 where the truth is 4e-101, and 60 digits were certified).
# arb 4: the cancellation rule shared with mpmath (``_common.cancellation_digits``): an exact 0 whose
#        terms are all 0 (an antisymmetric weight) is certified; it was charged ∞ digits (0 certified).
ENGINE_VERSIONS = {"mpmath": "3", "flint": "5", "arb": "4"}

MAGIC = b"stabkit-reference-cache 1 sha256="

T = TypeVar("T")


class ReferenceCacheWarning(UserWarning):
    """A reference cache file was bad (recomputed) or could not be written (not cached)."""


def _warn(msg: str) -> None:
    # stacklevel 3: the warning points at the caller of read/write/path_for
    warnings.warn(msg, ReferenceCacheWarning, stacklevel=3)


def cache_dir() -> Path:
    """The cache directory (created if missing): ``$STABKIT_CACHE`` or ``~/.cache/stabkit/reference``."""
    p = Path(os.environ.get("STABKIT_CACHE") or Path.home() / ".cache" / "stabkit" / "reference")
    p.mkdir(parents=True, exist_ok=True)
    return p


def path_for(name: str, cache: bool) -> Path | None:
    """The cache file ``name``, or None when caching is off or the directory cannot be made."""
    if not cache:
        return None
    try:
        return cache_dir() / name
    except OSError as e:
        _warn(f"reference cache directory unusable ({e}); going on without caching")
        return None


def _checksum(name: str, payload: bytes) -> bytes:
    """sha256 over the file name (the key: input, engine, loss, precision) and the payload."""
    return hashlib.sha256(name.encode() + b"\0" + payload).hexdigest().encode()


def read(path: Path, parse: Callable[[bytes], T]) -> T | None:
    """parse(payload) of a cache entry, or None when the file is missing; a file that cannot be
    read, fails its checksum or cannot be parsed gives a warning naming it and None (recompute)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        _warn(f"reference cache file {path} cannot be read ({e}); recomputing")
        return None
    try:
        head, sep, payload = raw.partition(b"\n")
        if not sep or not head.startswith(MAGIC):
            raise ValueError("no checksum header (truncated, or not written by stabkit)")
        if head[len(MAGIC):] != _checksum(path.name, payload):
            raise ValueError("checksum mismatch (edited or corrupted)")
        return parse(payload)
    except Exception as e:  # noqa: BLE001 - a bad cache file must never fail the computation
        _warn(f"reference cache file {path} is bad ({type(e).__name__}: {e}); recomputing it")
        return None


def write(path: Path, payload: bytes) -> None:
    """Write a checksummed entry atomically; a read-only or full directory only warns.

    Not fsynced (``durable=False``): an entry lost in a crash is recomputed, a torn one fails its
    checksum."""
    path = Path(path)
    try:
        write_bytes_atomic(path, MAGIC + _checksum(path.name, payload) + b"\n" + payload, durable=False)
    except OSError as e:
        _warn(f"reference cache file {path} cannot be written ({e}); going on without caching it")


# ----------------------------------------------------------------------------------------------
# keys


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _matrix_hash(A: np.ndarray) -> str:
    A = np.ascontiguousarray(A, dtype=np.float64)
    return _sha(repr(A.shape).encode() + A.tobytes())


def _version(engine: str) -> str:
    return f"{CACHE_VERSION}-{engine}{ENGINE_VERSIONS[engine]}"


def eig_key(A: np.ndarray, engine: str, dps) -> str:
    """Key of the eigendecomposition of A by ``engine`` at precision ``dps`` (None: automatic)."""
    return f"eig-{_version(engine)}-{_matrix_hash(A)[:32]}-{dps or 'auto'}".replace(" ", "")


def _loss_id(loss) -> str:
    parts = [loss.kind, loss.name, _matrix_hash(np.asarray(loss.weight, dtype=np.float64))]
    if loss.kind == "weighted":
        parts.append(_sha(np.ascontiguousarray(loss.w, dtype=np.float64).tobytes()))
    return _sha("|".join(parts).encode())[:24]


def grad_key(A: np.ndarray, engine: str, loss, dps) -> str:
    """Key of the gradient of ``loss`` at A by ``engine`` at precision ``dps`` (None: automatic)."""
    return f"grad-{_version(engine)}-{_matrix_hash(A)[:32]}-{_loss_id(loss)}-{dps or 'auto'}"


def iterated_key(A: np.ndarray, starts: np.ndarray, steps: int, kept: np.ndarray, loss) -> str:
    """Key of the gradient of L∘(``steps`` power-iteration steps from ``starts``) at A, ``kept`` pairs."""
    from ._power_iteration import MAX_BITS, START_BITS, TARGET_DIGITS  # the precision schedule is part of the result

    kept_hex = _sha(np.packbits(np.asarray(kept, dtype=bool)).tobytes())[:16]
    schedule = f"{START_BITS}.{MAX_BITS}.{TARGET_DIGITS:g}"
    return (f"pi-{_version('arb')}-{schedule}-{_matrix_hash(A)[:32]}-{_matrix_hash(starts)[:16]}-{steps}-{kept_hex}-"
            f"{_loss_id(loss)}")
