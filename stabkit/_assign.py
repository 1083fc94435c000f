"""The one ``KEY=VALUE`` grammar of the project: method specs (``taylor:K=19,eps=1e-4``), spectrum
parameters (``-p delta=1e-8``) and study overrides (``--set d=[4,8]``) all split their items here.

Each caller then decides what a value means (a method parameter checked against its domain, a
number, a TOML literal); the splitting rules and the error message are the same everywhere. A
caller may name the exception class to raise (a subclass of ValueError, e.g. a study file's
:class:`stabkit.errors.StudyFileError`), so its own users can tell the source by type.
"""

from __future__ import annotations

from typing import Iterable


def split_assignment(item: str, what: str, error: type[ValueError] = ValueError) -> tuple[str, str]:
    """``"K = 19"`` → ("K", "19"); ``error`` (a ValueError) naming ``what`` when there is no ``=`` or no key."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise error(f"{what}: expected KEY=VALUE, got {item.strip()!r}")
    return key, value.strip()


def split_assignments(items: Iterable[str], what: str, error: type[ValueError] = ValueError) -> dict[str, str]:
    """Several items (blank ones skipped) → {key: value text}; a key given twice is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        if not item.strip():
            continue
        key, value = split_assignment(item, what, error)
        if key in pairs:
            raise error(f"{what}: {key!r} given twice")
        pairs[key] = value
    return pairs
