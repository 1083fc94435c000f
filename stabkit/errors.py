"""The exceptions stabkit raises on purpose, so callers (and the CLI's one-line errors) can tell a
user's mistake from a numerical event from a bug by type, never by matching message text.

Each subclasses the builtin a caller would expect (ValueError for bad input, RuntimeError for a
computation that could not finish), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from .methods._spec import MethodSpecError


class InputError(ValueError):
    """A matrix or array the computation cannot accept: NaN/Inf, not square, not symmetric, wrong
    dtype or shape. The message names the argument and what is wrong with it."""


class StudyFileError(ValueError):
    """A study file or ``--set`` override that names an unknown key, kind or value, or a study's results
    table holding text where its kind needs numbers."""


class StorageError(ValueError):
    """Output that cannot be written (disk full, read-only, permissions). The message names the path,
    the cause, what is kept and how to finish (:func:`stabkit._io.storage_errors` builds it)."""


class EigensolverError(RuntimeError):
    """An eigendecomposition did not converge or returned non-finite values (LAPACK / cuSOLVER
    failure, or a NaN/Inf that reached the solver) — a numerical event, recorded by training."""


class UnsupportedDerivativeError(RuntimeError):
    """A derivative stabkit refuses by design rather than return a wrong number: a third derivative
    of the Daleckii–Krein layers, or a forward-mode tangent differentiated again (jacfwd of jacfwd),
    where the saved factors would be treated as constants, or the projector layers' backward at a given
    rank below the matrix's (Lemma 1 is not that derivative). The message names the alternative."""


__all__ = ["InputError", "MethodSpecError", "StudyFileError", "StorageError", "EigensolverError", "UnsupportedDerivativeError"]
