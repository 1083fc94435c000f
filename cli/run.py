"""``stabkit run``: run (or resume) a study file, then build its report."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Optional

import typer

from ._common import user_errors


@user_errors
def run_command(
    study: Path = typer.Argument(..., help="A study TOML file, e.g. studies/gradient-accuracy.toml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a grid key, value as a TOML literal (repeatable), e.g. --set d=[4,8]."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Local worker processes (default: number of cores; 1 runs inline)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask distributed scheduler address (runs the cells there instead)."),
    out: Path = typer.Option(Path("reports"), "--out", help="Root folder of the reports."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
):
    """Run every cell of STUDY not already finished; write results.parquet/csv and README.md."""
    from rich.console import Console

    from stabkit.studies import runner

    overrides = dict(runner.parse_override(item) for item in set_ or [])
    command = ["stabkit", "run", str(study), *(f"--set={item}" for item in set_ or [])]
    if jobs is not None:
        command.append(f"--jobs={jobs}")
    if scheduler is not None:
        command.append(f"--scheduler={scheduler}")
    if out != Path("reports"):
        command.append(f"--out={out}")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the workers too, like Ctrl-C
    try:
        table = runner.run_study(study, overrides, jobs=jobs, scheduler=scheduler, out_root=out,
                                 progress=not no_progress, command=shlex.join(command))
    except KeyboardInterrupt:
        Console(stderr=True).print(f"interrupted: finished cells are kept; run `{shlex.join(command)}` again to resume")
        raise typer.Exit(code=130) from None
    readme = runner.build_report(table.attrs["study_name"], out)
    failed = table["error"].fillna("").str.startswith("cell failed:").sum() if "error" in table else 0
    Console(stderr=True).print(f"{len(table)} rows ({failed} failed cells) → {readme}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt
