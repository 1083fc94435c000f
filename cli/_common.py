"""What every command shares: user errors become one line on stderr and exit code 2.

Kept light on purpose (typer and the standard library only): every ``--help`` imports this module,
so numpy, torch, pandas and the rest are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import importlib
import sys

import typer
from typer.core import TyperGroup

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
            fail(str(message))

    return wrapper


def fail(message: str, code: int = 2):
    """Print ``error: message`` (one line) on stderr and exit with ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise typer.Exit(code=code)


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


# Typer ≥ 0.16 vendors click (typer._click), older Typer uses click itself: take the classes from
# where Typer's own BadParameter lives.
_CLICK = sys.modules[typer.BadParameter.__module__]
_NO_ARGS = getattr(_CLICK, "NoArgsIsHelpError", ())


def _wrap_at_spaces_only() -> None:
    """Help text wraps at spaces only: click's wrapper (and the copy of click that newer Typer
    versions carry) splits a method name such as ``pi-forward`` at its hyphen, and a reader who
    copies ``pi-`` from the help gets no method."""
    for name in ("click._textwrap", "typer._click._textwrap"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # a version without this module wraps its own way
            continue
        base = module.TextWrapper
        if getattr(base, "whole_hyphenated_words", False):
            continue

        class WholeWords(base):
            whole_hyphenated_words = True

            def __init__(self, *args, **kwargs):
                kwargs.setdefault("break_on_hyphens", False)
                super().__init__(*args, **kwargs)

        module.TextWrapper = WholeWords


_wrap_at_spaces_only()


class OneLineErrors(TyperGroup):
    """The command group of ``stabkit``: a usage error (bad option value, unknown option, missing
    argument, unreadable file) is one ``error:`` line and exit 2, never Typer's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _CLICK.ClickException as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            print(f"error: {one_line(exc.format_message())}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("Aborted.", file=sys.stderr)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def given(ctx, name: str) -> bool:
    """Whether the user gave option ``name`` (its source is not the default): an option that does not
    apply to the rest of the command line is refused rather than silently ignored."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def given_options(ctx, options) -> list[str]:
    """The flags among ``options`` ((flag text, parameter name) pairs) that the user gave (:func:`given`)."""
    return [flag for flag, name in options if given(ctx, name)]


def reports_root(out: str):
    """The ``--out`` folder of ``run``/``report`` as a Path (:func:`folder_option`)."""
    return folder_option(out, "--out", "the reports folder", "reports")


def folder_option(text: str, flag: str, what: str, example: str):
    """A folder option's text as a Path; an empty one (an unset shell variable; ``Path('')`` is the
    current folder) is refused, naming ``flag``."""
    from pathlib import Path

    if not text.strip():
        raise ValueError(f"{flag} is empty: name {what}, e.g. {flag} {example}")
    return Path(text)


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
