"""``stabkit report``: rebuild a study's README.md (and the reports index) from its results."""

from __future__ import annotations

import typer

from ._common import reports_root, user_errors


@user_errors
def report_command(
    name: str = typer.Argument(..., help="Study name: the folder under --out holding results.parquet."),
    out: str = typer.Option("reports", "--out", help="Root folder of the reports."),
):
    """Rebuild reports/NAME/README.md and reports/README.md from results.parquet alone."""
    from stabkit.studies import publish

    out_root = reports_root(out)
    readme = publish.build_report(name, out_root)  # a full disk: a StorageError, one line and exit 2
    print(readme)
