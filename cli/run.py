"""``stabkit run``: run (or resume) a study file, then build its report."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import reports_root, user_errors


@user_errors
def run_command(
    study: Path = typer.Argument(..., help="A study TOML file, e.g. studies/gradient-accuracy.toml."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a grid key, value as a TOML "
                                             "literal (repeatable; default: the study file's grid), e.g. --set d=[4,8]."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Local worker processes (default: up to the number of cores, started only when the cells are long enough to repay the workers' start-up; 1 runs inline)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask distributed scheduler address, e.g. tcp://host:8786 "
                                            "(runs the cells there instead; default: none, local processes)."),
    out: str = typer.Option("reports", "--out", help="Root folder of the reports."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress (a bar on a terminal, else a line every few cells, on stderr)."),
    reuse_stale: bool = typer.Option(False, "--reuse-stale", help="Keep finished cells computed by other code (another version of the stabkit sources)."),
    recompute_stale: bool = typer.Option(False, "--recompute-stale", help="Recompute finished cells computed by other code."),
    max_cells: Optional[int] = typer.Option(None, "--max-cells", help="Compute at most N of the cells still to do "
                                            "(grid order; default: all); the others resume on a later run. 0 computes "
                                            "nothing: it checks the study and says how many cells are left. Refused where "
                                            "the published results.parquet holds cells that no cell file keeps (a fresh "
                                            "checkout): the short run's table would drop them."),
    stack: int = typer.Option(1, "--stack", help="Train up to R consecutive runs of one training cell (seeds "
                                                "apart) at once, stacked in one network by one process "
                                                "(study kinds that can; stabkit.train.stacked_loop). Default 1: one run each."),
    force: bool = typer.Option(False, "--force", help="Run even when a certified truth is estimated to take long "
                                                      "(a grid whose truth cannot fit in memory is always refused)."),
):
    """Run every cell of STUDY not already finished; write results.parquet/csv and README.md."""
    from stabkit.studies import _grid, provenance, publish, runner

    if reuse_stale and recompute_stale:
        raise ValueError("--reuse-stale and --recompute-stale exclude each other")
    out_root = reports_root(out)
    publish.check_index_target(out_root)  # before any cell: the index must not overwrite another README.md
    overrides = _grid.parse_overrides(set_)
    command = ["stabkit", "run", str(study), *(f"--set={item}" for item in set_ or [])]
    if jobs is not None:
        command.append(f"--jobs={jobs}")
    if scheduler is not None:
        command.append(f"--scheduler={scheduler}")
    if out != "reports":
        command.append(f"--out={out}")
    if reuse_stale or recompute_stale:
        command.append("--reuse-stale" if reuse_stale else "--recompute-stale")
    if stack != 1:
        command.append(f"--stack={stack}")
    if force:
        command.append("--force")
    if max_cells is not None:
        command.append(f"--max-cells={max_cells}")
    resume = shlex.join(command)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the workers too, like Ctrl-C
    try:
        table = runner.run_study(study, overrides, jobs=jobs, scheduler=scheduler, out_root=out_root,
                                 progress=not no_progress, command=shlex.join(command),
                                 stale="reuse" if reuse_stale else "recompute" if recompute_stale else "refuse",
                                 max_cells=max_cells, force=force, stack=stack)
    except KeyboardInterrupt:
        print(f"interrupted: finished cells are kept; run `{resume}` again to resume", file=sys.stderr)
        raise typer.Exit(code=130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)  # an in-process caller keeps its own handler
    left = table.attrs.get("cells_left", 0)
    finish = f"; {left} cells not computed yet: run `{provenance.finishing_command(resume)}` to compute them" if left else ""
    if table.empty:  # a full disk from here on: a StorageError saying the cells are kept
        publish.build_index(out_root)
    else:
        readme = publish.build_report(table.attrs["study_name"], out_root)
    if table.empty:
        print(f"nothing computed{finish}", file=sys.stderr)
        return
    failure = publish.first_failure(table)
    if failure is not None and failure[2] == len(table):
        cell_id, error, n = failure
        print(f"error: all {n} cells failed; the first ({cell_id}): {error}", file=sys.stderr)
        raise typer.Exit(code=1)
    failed = failure[2] if failure else 0
    print(f"{len(table)} rows ({failed} failed cells){finish} → {readme}", file=sys.stderr)
    if failure is not None:
        print(f"first failure ({failure[0]}): {failure[1]}", file=sys.stderr)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
