"""What every command shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys

import typer

from stabkit._assign import split_assignments

#: Exceptions that mean "the user asked for something impossible", not a bug.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, IsADirectoryError, PermissionError)


def user_errors(func):
    """Turn user errors raised by ``func`` into ``error: <message>`` and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


def parse_params(items: list[str] | None, what: str = "--param") -> dict:
    """``["k=2", "delta=1e-8"]`` → {"k": 2, "delta": 1e-08} (ints stay ints, else floats, else text)."""
    return {key: _number(value) for key, value in split_assignments(items or [], what).items()}


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
