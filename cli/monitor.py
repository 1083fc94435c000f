"""``stabkit monitor report DIR``: Markdown + PNG per call site from the logs of ``stabkit watch``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import folder_option, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Read the instability monitor's logs.")


@app.command("report")
@user_errors
def report_command(
    folder: Path = typer.Argument(..., help="The --log folder of `stabkit watch` (eig-rank*.csv) or any folder of monitor logs."),
    out: Optional[str] = typer.Option(None, "--out", metavar="<path>", help="Where report.md and the PNGs go (default: FOLDER)."),
):
    """Timelines per call site (gap, max|K̃|, λ_min, gradient norms, events) and what to do."""
    import warnings

    from stabkit.monitor.report import EmptyLogWarning, build_report

    out = folder_option(out, "--out", "the report's folder", "report") if out is not None else None
    with warnings.catch_warnings(record=True) as caught:  # a full disk: the library's StorageError, exit 2
        warnings.simplefilter("always", EmptyLogWarning)
        path = build_report(folder, out)
    for w in caught:
        if issubclass(w.category, EmptyLogWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(path)
