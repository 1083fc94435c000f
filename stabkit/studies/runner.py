"""Run a study file cell by cell — resumable, in parallel — and store its results.

Layout under ``out_root/<name>/``::

    cells/<hash>.json   one file per finished cell, written atomically (tmp + fsync + os.replace),
                        with the code version, commit and machine (the runner's, also for Dask
                        workers) that computed it and a checksum of its content;
                        ignored by git (a .gitignore is written next to it)
    cells/.writer.lock  held (flock) by the one process writing the study; names its pid and host
    results.parquet     all rows, consolidated in cell order (deterministic), plus results.csv
    run.json            command line, effective grid, git commit, machine, wall time of the run that
                        wrote results.parquet, and the table's hash (written after the table: a run
                        killed between the two leaves a table its run.json does not name, which
                        ``stabkit report`` refuses to describe)
    run.unfinished.json the same record while a run lasts (a heartbeat keeps it up to date, so a
                        kill -9 loses no time) or after it stopped early; ignored by git
    README.md           header from run.json + the kind's report body (:mod:`.publish`)

Resumption: a rerun loads every cell file whose stored cell equals a cell of the grid and
computes only the others, so a Ctrl-C or ``kill -9`` at any moment loses at most the cells in
flight and never duplicates rows. Cells that raised are recorded (one row with ``error``) and
retried by the next run. A cell file whose checksum does not match is recomputed; a cell
computed by other code (another hash of the ``stabkit`` sources) makes the run refuse unless
``stale="reuse"`` or ``stale="recompute"`` says what to do with it. One writer per study: a second
run on the same directory fails at once naming the holder. Besides the protocol in
:mod:`stabkit.studies`, the runner uses two optional hooks of a kind: ``summary(results) -> str``
(the one-line entry of ``reports/README.md``) and ``warm_up(cell)`` (called before each cell; it
warms each method once per process, so first-call overheads are not timed as a method's cost).

The parts: :mod:`._grid` (study file, overrides, cells), :mod:`._workers` (inline, process pool,
Dask), :mod:`._store` (cell files, the results table), :mod:`.provenance` (run.json),
:mod:`.publish` (the reports).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

from .._io import STORAGE_ERRNOS, storage_errors, write_text_atomic
from ..errors import StorageError
from . import _store
from ._grid import expand, load_study
from ._store import _scan_cells, _StudyLock, cell_record, consolidate, write_cell, write_table
from ._workers import dask_client, run_dask, run_local
from .provenance import (UNFINISHED, RunRecord, argv_command, cells_origin, duration, git_commit,
                         machine_summary)

#: How to treat finished cells computed by other code: refuse to run, reuse them, or recompute them.
STALE_POLICIES = ("refuse", "reuse", "recompute")


class StaleCells(ValueError):
    """Finished cells were computed by other code and the run was not told what to do with them."""


def unfinished_cells(path_or_config, overrides: dict | None = None, out_root: Path = Path("reports"),
                     stale: str = "recompute") -> list[dict]:
    """The grid's cells that a ``run_study`` of the same study with this ``stale`` policy would
    compute (a time-boxed session loops until this is empty): those with no finished record under
    ``out_root``, and, unless ``stale="reuse"``, those whose record other code computed."""
    if stale not in STALE_POLICIES:
        raise ValueError(f"stale must be one of {', '.join(STALE_POLICIES)}, got {stale!r}")
    study, kind, grid = load_study(path_or_config, overrides or {})
    cells = expand(study, kind, grid)
    scan = _scan_cells(Path(out_root) / study["name"] / "cells", cells, _store.sources_hash())
    done = {**scan["done"], **(scan["stale"] if stale == "reuse" else {})}
    return [c for c in cells if c["cell_id"] not in done]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_directories(path: Path) -> None:
    """StorageError naming the first part of ``path`` that exists but is not a directory."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            raise StorageError(f"{part} is not a directory: the study's results cannot be written under it")


def _make_directories(path: Path) -> None:
    """``path`` and its parents; a StorageError naming ``path`` where the file system has no place
    for a folder (ENOENT: under /proc, a vanished mount), which is not one of the storage errnos."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}; choose another reports folder (--out, "
                           "out_root)") from None


# ----------------------------------------------------------------------------- a run


def run_study(path_or_config, overrides: dict | None = None, jobs: int | None = None, scheduler: str | None = None,
              out_root=Path("reports"), progress: bool = True, command: str | None = None,
              stale: str = "refuse", log=_stderr, max_cells: int | None = None, force: bool = False,
              stack: int = 1) -> pd.DataFrame:
    """Run (or resume) a study; return the consolidated table, written to results.parquet/csv.

    ``jobs``: local worker processes (None = up to all cores, a pool started only when the cells
    are long enough to pay for it; 1 = inline); ``scheduler``: a Dask scheduler address, used
    instead of local processes (refused beside ``jobs``). ``command``: the command line recorded in
    run.json (default: this
    process's argv). ``stale``: what to do with finished cells computed by other code (another
    hash of the stabkit sources): "refuse" (StaleCells, before any work), "reuse" or "recompute".
    ``log``: where one-line notices go (default stderr). Raises StudyLocked when another process
    writes the study, StorageError (one line with the resume hint) when the output cannot be written.
    ``max_cells``: compute at most this many of the cells still to do, in the grid's order (a
    time-boxed chunk of whole runs; the rest resume later; ``table.attrs["cells_left"]`` counts them).
    ``force``: run a grid whose certified truths are estimated to take long (one that cannot fit in
    memory is always refused). ``stack``: up to that many consecutive cells that the kind can train
    at once (``stack_key``/``run_cells``, e.g. the survival study's seeds of one cell, stacked in one
    network) go to one process together; the cells and their records are the same as one by one.
    """
    if stale not in STALE_POLICIES:
        raise ValueError(f"stale must be one of {', '.join(STALE_POLICIES)}, got {stale!r}")
    study, kind, grid = load_study(path_or_config, overrides, force=force)
    cells = expand(study, kind, grid)
    if scheduler is not None and not str(scheduler).strip():  # e.g. an unset shell variable: it ran locally, silently
        raise ValueError("--scheduler is empty: give the Dask scheduler's address, e.g. tcp://host:8786, or leave it out")
    if jobs is not None and scheduler is not None:  # the scheduler's workers run the cells: --jobs was ignored
        raise ValueError("--jobs and --scheduler exclude each other: with a scheduler its workers run the cells")
    auto_jobs = jobs is None and scheduler is None
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"--jobs must be ≥ 1, got {jobs}")
    if int(stack) < 1:
        raise ValueError(f"--stack must be ≥ 1, got {stack}")
    if int(stack) > 1 and getattr(kind, "stack_key", None) is None:  # was ignored, yet recorded as the run's
        raise ValueError(f"--stack {stack}: study kind {study['kind']!r} cannot train runs stacked; leave --stack out")
    if max_cells is not None and int(max_cells) < 0:  # before the study's folder is made or locked
        raise ValueError(f"--max-cells must be ≥ 0, got {max_cells}")
    if getattr(kind, "check_inputs", None) is not None:  # e.g. a training study's data: loads, or one line and exit 2
        kind.check_inputs(cells)
    run = _Run(study, grid, cells, Path(out_root), command or argv_command(), jobs, scheduler, int(stack))
    run.client = dask_client(scheduler) if scheduler else None  # fail before any work if unreachable
    _check_directories(run.cells_dir)
    lock = _StudyLock(run.cells_dir, study["name"])
    kept = f"finished cells are kept — free space or fix permissions, then run `{run.command}` again to resume"
    try:
        with storage_errors(kept):
            try:
                _make_directories(run.cells_dir)
                lock.acquire()
                todo = run.prepare(stale, log, max_cells)
            except BaseException:
                if run.client is not None:
                    run.client.close()
                raise
            run.execute(todo, auto_jobs, progress)
            return run.finish()
    finally:
        lock.release()


class _Run:
    """One run of a study, once its directory is locked: what is done, what to do, the run record."""

    def __init__(self, study: dict, grid: dict, cells: list[dict], out_root: Path, command: str, jobs: int,
                 scheduler: str | None, stack: int = 1):
        self.study, self.grid, self.cells, self.out_root = study, grid, cells, out_root
        self.command, self.jobs, self.scheduler, self.client, self.stack = command, jobs, scheduler, None, stack
        self.out_dir = out_root / study["name"]
        self.cells_dir = self.out_dir / "cells"
        self.done: dict[str, dict] = {}

    def _ignore_unpublished(self) -> None:
        """A ``.gitignore`` hiding ``cells/`` and the run's unfinished record from git; an existing one is the
        user's (the survival study commits its cells) and only gets the record's line if it lacks it (written by
        a stabkit from before the record had its own file)."""
        gitignore = self.out_dir / ".gitignore"
        lines = gitignore.read_text().splitlines() if gitignore.exists() else ["cells/"]
        if UNFINISHED not in (line.strip() for line in lines):
            write_text_atomic(gitignore, "\n".join([*lines, UNFINISHED]) + "\n")

    def prepare(self, stale: str, log, max_cells: int | None) -> list[dict]:
        """Clean up after a killed run, load the finished cells, start the run's record; return the cells to do."""
        for leftover in self.out_dir.glob(".*.tmp"):  # temporaries of a run killed while writing
            leftover.unlink(missing_ok=True)
        self._ignore_unpublished()
        self.sources = _store.sources_hash()
        other_code = self._load_finished(stale, log)
        todo = [c for c in self.cells if c["cell_id"] not in self.done]
        if max_cells is not None:
            todo = todo[:int(max_cells)]
        self._refuse_to_drop_published_cells(todo)
        self.commit = git_commit(self.out_root)
        self.record = RunRecord(self.out_dir, self.study, self.grid, command=self.command, commit=self.commit,
                                sources=self.sources, jobs=self.jobs, scheduler=self.scheduler,
                                cells_total=len(self.cells), cells_reused=len(self.done),
                                reused_other_code=other_code if stale == "reuse" else 0)
        self.machine = machine_summary(self.record.meta["machine"])
        self.record.write()
        return todo

    def _refuse_to_drop_published_cells(self, todo: list[dict]) -> None:
        """A run rewrites results.parquet from the cell files alone; in a fresh checkout the committed
        table may be the only copy of its cells (``cells/`` is not committed). Refuse, before any work,
        a run whose table would drop a published cell that no cell file keeps: one stopped short by
        --max-cells, or of another grid."""
        published = self.out_dir / "results.parquet"
        if not published.exists():
            return
        try:
            ids = set(pd.read_parquet(published, columns=["cell_id"])["cell_id"].astype(str))
        except Exception:  # noqa: BLE001 — an unreadable table has nothing left to protect
            return
        # a published cell of the same id but other parameters (another --set) is not kept by this grid's
        published_cells, ours = self._published_cells(), {c["cell_id"]: c for c in self.cells}
        kept = {i for i in set(self.done) | {c["cell_id"] for c in todo}
                if i not in published_cells or _store._jsonable(ours[i]) == published_cells[i]}
        missing = ids - kept
        on_file = {i for i in missing & set(published_cells) if _store.has_cell_file(self.cells_dir, published_cells[i])}
        lost = sorted(missing - on_file - _store.cell_ids_in_files(self.cells_dir, missing - set(published_cells)))
        if lost:
            short = len(todo) < sum(c["cell_id"] not in self.done for c in self.cells)
            how = ("run the whole grid (no --max-cells) to recompute them" if short else
                   "they are not cells of this grid; run the grid they belong to")
            raise ValueError(f"{published} publishes {len(lost)} cell(s) (e.g. {lost[0]}) that this run would drop and "
                             f"that no file in {self.cells_dir} keeps (cell files are not committed): {how}, or move "
                             f"results.parquet away to start the table anew")

    def _published_cells(self) -> dict[str, dict]:
        """The cells of the grid that the published run.json records ({} when it cannot be expanded)."""
        meta = _store._read_json(self.out_dir / "run.json") or {}
        try:
            study, kind, grid = load_study({"study": self.study, "grid": meta["grid"]})
            return {c["cell_id"]: _store._jsonable(c) for c in expand(study, kind, grid)}
        except Exception:  # noqa: BLE001 — a record this version cannot read: the ids alone are compared
            return {}

    def _load_finished(self, stale: str, log) -> int:
        """Fill ``done`` with the valid cell files of this grid; return how many came from other code."""
        name = self.study["name"]
        scan = _scan_cells(self.cells_dir, self.cells, self.sources)
        if scan["stale"] and stale == "refuse":
            versions = sorted({r.get("code", {}).get("sources", "none recorded") for r in scan["stale"].values()})
            raise StaleCells(f"{len(scan['stale'])} of {len(self.cells)} finished cells of {name!r} were computed "
                             f"by other code (sources {', '.join(versions)}; now {self.sources}): rerun with "
                             "--recompute-stale to recompute them or --reuse-stale to keep them")
        self.done = dict(scan["done"])
        if stale == "reuse":
            self.done.update(scan["stale"])
        if scan["damaged"]:
            log(f"{len(scan['damaged'])} cell file(s) of {name!r} are damaged or were edited (checksum "
                f"mismatch or unreadable): recomputing them")
        if scan["stale"] and stale == "recompute":
            log(f"recomputing {len(scan['stale'])} cell(s) of {name!r} computed by other code")
        return len(scan["stale"])

    def on_done(self, cell: dict, rows: list[dict], error: str | None, cell_sources: str | None = None) -> None:
        """Store a finished cell at once (failed or not), count it and advance the progress."""
        code = {"commit": self.commit, "sources": cell_sources or self.sources, "machine": self.machine}
        record, error = cell_record(cell, rows, error, code)
        write_cell(self.cells_dir, record)
        self.done[cell["cell_id"]] = record
        self.record.cell_finished(error is not None)
        self.bar.advance(failed=self.record.failed)

    def execute(self, todo: list[dict], auto_jobs: bool, progress: bool) -> None:
        """Run ``todo`` on the chosen backend, with the heartbeat on; record how a failed run stopped."""
        self.bar = _Progress(progress, total=len(self.cells), completed=len(self.done), name=self.study["name"])
        kind_name = self.study["kind"]
        self.record.start_heartbeat()
        try:
            with self.bar:
                if self.stack > 1:
                    self.record.meta["stack"] = self.stack
                if self.client is not None:
                    run_dask(kind_name, todo, self.client, self.on_done, stack=self.stack)
                    self.record.meta["workers"] = "dask"
                elif todo:
                    self.record.meta["workers"] = run_local(kind_name, todo, min(self.jobs, len(todo)), self.on_done,
                                                            auto=auto_jobs, stack=self.stack)
        except BaseException as exc:
            self.record.stop_heartbeat()
            status = "interrupted"
            if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
                status = f"stopped: {exc.strerror or exc}"
            self.record.write_last(status)
            raise
        self.record.stop_heartbeat()

    def finish(self) -> pd.DataFrame:
        """Consolidate, write results.parquet/csv, then run.json (the record of the run that wrote
        them); return exactly what is on disk."""
        name = self.study["name"]
        try:
            table = consolidate(self.cells, self.done)
            table.attrs["study_name"] = name
            write_table(table, self.out_dir)
            table = pd.read_parquet(self.out_dir / "results.parquet")
            # a kill before run.json is written leaves the new table beside the old record: the hash tells them apart
            self.record.meta["table_sha256"] = _store.file_sha256(self.out_dir / "results.parquet")
            self.record.meta["cells_origin"] = cells_origin(self.done[c["cell_id"]] for c in self.cells
                                                            if c["cell_id"] in self.done)
            self.record.finish()
        except BaseException as exc:
            status = f"stopped: {exc.strerror or exc}" if isinstance(exc, OSError) else "interrupted"
            self.record.write_last(status)
            raise
        table.attrs["study_name"] = name
        table.attrs["cells_left"] = sum(c["cell_id"] not in self.done for c in self.cells)
        return table


# ----------------------------------------------------------------------------- progress


class _Progress:
    """Progress on stderr: a rich bar when stderr is a terminal, else one plain line every
    ``max(1, total // 20)`` cells (and at least once a minute); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, completed: int, name: str, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.total, self.completed, self.name, self.failed = total, completed, name, 0
        self.start = self.last_line = time.monotonic()
        self.first = completed
        self.every = max(1, total // 20)
        self.bar = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        if self.bar:
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("cells · [red]{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), transient=False, console=Console(file=self.stream),
        )
        self.task = self.progress.add_task(self.name, total=self.total, completed=self.completed, failed=0)

    def __enter__(self):
        if self.bar:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.progress.stop()

    def advance(self, failed: int) -> None:
        if not self.enabled:
            return
        self.completed += 1
        self.failed = failed
        if self.bar:
            self.progress.update(self.task, advance=1, failed=failed)
            return
        now = time.monotonic()
        if self.completed % self.every and self.completed != self.total and now - self.last_line < 60:
            return
        self.last_line = now
        elapsed = now - self.start
        rate = (self.completed - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {duration((self.total - self.completed) / rate)}" if rate > 0 and self.completed < self.total else ""
        print(f"{self.name}: {self.completed}/{self.total} cells ({failed} failed), {duration(elapsed)} elapsed{eta}",
              file=self.stream, flush=True)
