"""Run a study file cell by cell — resumable, in parallel — and build its Markdown report.

Layout under ``out_root/<name>/``::

    cells/<hash>.json   one file per finished cell, written atomically (tmp + fsync + os.replace),
                        with the code version that computed it and a checksum of its content;
                        ignored by git (a .gitignore is written next to it)
    cells/.writer.lock  held (flock) by the one process writing the study; names its pid and host
    results.parquet     all rows, consolidated in cell order (deterministic), plus results.csv
    run.json            command line, effective grid, git commit, machine, wall time (kept up to
                        date by a heartbeat while the run lasts, so a kill -9 loses no time)
    README.md           header from run.json + the kind's report body

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
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import kind_module
from ._store import (LOCK_NAME, StudyLocked, _cell_path, _checksum, _dumps, _jsonable,  # noqa: F401 (re-exported)
                     _read_json, _replace_atomic, _scan_cells, _StudyLock, _write_atomic, sources_hash)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli (a dependency only there)
    import tomli as tomllib
from .._assign import split_assignment

STUDY_KEYS = ("name", "kind", "description")
TOP_KEYS = ("study", "grid")
REPO = Path(__file__).resolve().parents[2]
#: How to treat finished cells computed by other code: refuse to run, reuse them, or recompute them.
STALE_POLICIES = ("refuse", "reuse", "recompute")
#: errno values that mean "the output cannot be written" (not a bug): one line and a resume hint.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}
#: Seconds a spawned worker takes to start (spawn + import torch and the kind) on a 2-core machine,
#: ~2.2 s measured; the default job count starts a pool only when it saves twice that.
WORKER_STARTUP_SECONDS = 3.0
#: Seconds between run.json updates while a run lasts (STABKIT_HEARTBEAT_SECONDS overrides).
HEARTBEAT_SECONDS = 10.0


class StaleCells(ValueError):
    """Finished cells were computed by other code and the run was not told what to do with them."""


class StorageError(ValueError):
    """The study directory cannot be written (disk full, read-only, permissions)."""


# ----------------------------------------------------------------------------- loading


def load_study(path_or_config, overrides: dict | None = None) -> tuple[dict, object, dict]:
    """(study table, kind module, validated grid) — every check happens here, before any work."""
    if isinstance(path_or_config, dict):
        config = path_or_config
    else:
        path = Path(path_or_config)
        if not path.is_file():
            raise FileNotFoundError(f"study file not found: {path}")
        try:
            config = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(config) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown study table [{unknown[0]}] (allowed: {', '.join(TOP_KEYS)})")
    study = config.get("study")
    if not isinstance(study, dict):
        raise ValueError("the study file needs a [study] table with 'name' and 'kind'")
    bad = sorted(set(study) - set(STUDY_KEYS))
    if bad:
        raise ValueError(f"unknown key study.{bad[0]} (allowed: {', '.join(STUDY_KEYS)})")
    for key in ("name", "kind"):
        if not isinstance(study.get(key), str) or not study[key].strip():
            raise ValueError(f"study.{key} is required and must be text")
    name = study["name"]
    if "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"study.name {name!r} must be a plain directory name")
    kind = kind_module(study["kind"])
    grid = config.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError("[grid] must be a table")
    grid = dict(grid)
    for key, value in (overrides or {}).items():
        if key not in kind.GRID_DEFAULTS:
            raise ValueError(f"--set: unknown grid key {key!r} (allowed: {', '.join(kind.GRID_DEFAULTS)})")
        grid[key] = value
    grid = kind.validate(grid)
    return dict(study), kind, grid


def parse_override(item: str) -> tuple[str, object]:
    """``"d=[4,8]"`` → ("d", [4, 8]): the value is a TOML literal, or else plain text."""
    key, value = split_assignment(item, "--set")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


# ----------------------------------------------------------------------------- execution

def _warm_up(kind_name: str, cell: dict) -> None:
    """The kind's optional ``warm_up(cell)`` before each cell (the kind remembers what it has
    already warmed in this process): first-call costs (lazy imports, torch's first kernels) are
    then not timed as a method's cost. Errors are left to the cell itself to report."""
    hook = getattr(kind_module(kind_name), "warm_up", None)
    if hook is None:
        return
    try:
        hook(cell)
    except Exception:  # noqa: BLE001 — the real cell reports any problem
        pass


def _error_text(exc: BaseException) -> str:
    """``Type: message (at file.py:line in function)`` — the innermost frame of the traceback."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return text


def _execute(kind_name: str, cell: dict) -> tuple[list[dict], str | None, str]:
    """Run one cell (in any process): (rows, error text or None, sources hash of this process)."""
    try:
        _warm_up(kind_name, cell)
        if _OneTorchThread.active is not None:
            _OneTorchThread.active.apply()
        rows = kind_module(kind_name).run_cell(cell)
        return [dict(r) for r in rows], None, sources_hash()
    except Exception as exc:  # noqa: BLE001 — a failing cell must not stop the study
        return [], _error_text(exc), sources_hash()


def _failure_rows(cell: dict, error: str) -> list[dict]:
    scalars = {k: v for k, v in cell.items() if k != "cell_id" and isinstance(v, (str, int, float, bool))}
    return [{**scalars, "error": f"cell failed: {error}"}]


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this worker as soon as its parent is gone (kill -9 included): a worker blocked on the
    task queue would otherwise live forever, and with it the resource tracker."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_init(parent_pid: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="stabkit-parent-watch").start()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _run_pool(kind_name, todo, jobs, on_done):
    import multiprocessing

    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})  # one BLAS thread per worker process
    try:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(),))
        futures = {pool.submit(_execute, kind_name, cell): cell for cell in todo}
        try:
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    rows, error, sources = fut.result()
                except Exception as exc:  # noqa: BLE001 — e.g. a worker died
                    rows, error, sources = [], f"{type(exc).__name__}: {exc}", None
                on_done(cell, rows, error, sources)
        except BaseException:
            # Ctrl-C or an error here: cells in flight would be lost anyway, so stop the workers now
            # instead of waiting for them; finished cells are already on disk.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _free_cores(cores: int) -> float:
    """Cores not busy with other work: ``cores`` minus the 1-minute load average, not counting
    the ~1 this process adds itself (all of them where the load average is unknown)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return float(cores)
    return max(1.0, cores - max(0.0, load - 1.0))


class _OneTorchThread:
    """Inline cells run with one torch thread, like the pool's workers: the timings a study records
    then do not depend on --jobs (on a busy 2-core machine torch's thread pool made the ``torch``
    method ~40× slower inline than in a worker on the quickstart). Applied once torch is imported
    (after a cell's warm-up at the latest, before anything is timed); the caller's setting is restored."""

    active = None

    def __enter__(self):
        self.before = None
        _OneTorchThread.active = self
        self.apply()
        return self

    def apply(self) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and self.before is None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        _OneTorchThread.active = None
        torch = sys.modules.get("torch")
        if torch is not None and self.before is not None:
            torch.set_num_threads(self.before)


def _run_local(kind_name, todo, jobs, on_done, auto: bool = False) -> int:
    with _OneTorchThread():
        return _run_local_inner(kind_name, todo, jobs, on_done, auto)


def _run_local_inner(kind_name, todo, jobs, on_done, auto: bool = False) -> int:
    """Run ``todo`` inline (jobs = 1) or on a pool of ``jobs`` spawned processes; return the most
    processes used. ``auto`` (the default job count): start inline, and move the rest to a pool only
    once the measured cell time (first cell excluded: it pays imports and warm-up) says that the
    pool, on the cores other work leaves free, saves more than twice the workers' start-up — so the
    default is never much slower than ``--jobs 1`` on a small study or a loaded machine."""
    if jobs <= 1 or not todo:
        for cell in todo:
            on_done(cell, *_execute(kind_name, cell))
        return 1
    if not auto:
        _run_pool(kind_name, todo, jobs, on_done)
        return jobs
    spent, first = 0.0, 0.0
    for i, cell in enumerate(todo):
        rest = len(todo) - i
        workers = min(jobs, rest)
        # the cell time: the mean after the first cell, or the first cell itself when it is so long
        # that its one-off costs hardly matter (long cells should not wait for a second one)
        per_cell = spent / (i - 1) if i >= 2 else first if i == 1 and first > 4 * WORKER_STARTUP_SECONDS else 0.0
        if per_cell and workers >= 2:
            speedup = min(workers, _free_cores(os.cpu_count() or 1))
            if speedup >= 1.5 and per_cell * rest * (1 - 1 / speedup) > 2 * WORKER_STARTUP_SECONDS:
                _run_pool(kind_name, todo[i:], workers, on_done)
                return workers
        t0 = time.perf_counter()
        on_done(cell, *_execute(kind_name, cell))
        if i:
            spent += time.perf_counter() - t0
        else:
            first = time.perf_counter() - t0
    return 1


def _dask_client(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs dask[distributed]: pip install 'stabkit[cluster]'") from None
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None


def _run_dask(kind_name, todo, client, on_done):
    from distributed import as_completed as dask_completed

    try:
        futures = {}
        for cell in todo:
            key = "stabkit-cell-" + hashlib.sha256(f"{kind_name}|{cell['cell_id']}".encode()).hexdigest()[:24]
            futures[client.submit(_execute, kind_name, cell, key=key, pure=False)] = cell
        for fut in dask_completed(list(futures)):
            cell = futures[fut]
            try:
                rows, error, sources = fut.result()
            except Exception as exc:  # noqa: BLE001 — a worker lost, a pickling error, ...
                rows, error, sources = [], f"{type(exc).__name__}: {exc}", None
            on_done(cell, rows, error, sources)
            fut.release()
    finally:
        client.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _storage_error(exc: OSError, command: str) -> StorageError:
    where = f" {exc.filename}" if exc.filename else ""
    return StorageError(f"cannot write{where}: {exc.strerror or exc}; finished cells are kept — free space or fix "
                        f"permissions, then run `{command}` again to resume")


def run_study(path_or_config, overrides: dict | None = None, jobs: int | None = None, scheduler: str | None = None,
              out_root=Path("reports"), progress: bool = True, command: str | None = None,
              stale: str = "refuse", log=_stderr, max_cells: int | None = None) -> pd.DataFrame:
    """Run (or resume) a study; return the consolidated table, written to results.parquet/csv.

    ``jobs``: local worker processes (None = up to all cores, a pool started only when the cells
    are long enough to pay for it; 1 = inline); ``scheduler``: a Dask scheduler address, used
    instead of local processes. ``command``: the command line recorded in run.json (default: this
    process's argv). ``stale``: what to do with finished cells computed by other code (another
    hash of the stabkit sources): "refuse" (StaleCells, before any work), "reuse" or "recompute".
    ``log``: where one-line notices go (default stderr). Raises StudyLocked when another process
    writes the study, StorageError (one line with the resume hint) when the output cannot be written.
    ``max_cells``: compute at most this many of the cells still to do, in the grid's order (a
    time-boxed chunk of whole runs; the rest resume later).
    """
    if stale not in STALE_POLICIES:
        raise ValueError(f"stale must be one of {', '.join(STALE_POLICIES)}, got {stale!r}")
    study, kind, grid = load_study(path_or_config, overrides)
    cells = kind.cells(grid)
    ids = [c["cell_id"] for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"study kind {study['kind']!r} produced duplicate cell ids")
    auto_jobs = jobs is None and scheduler is None
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"--jobs must be ≥ 1, got {jobs}")
    command = command or _argv_command()

    client = _dask_client(scheduler) if scheduler else None  # fail before any work if unreachable
    out_dir = Path(out_root) / study["name"]
    cells_dir = out_dir / "cells"
    lock = _StudyLock(cells_dir, study["name"])
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        if client is not None:
            client.close()
        if exc.errno in STORAGE_ERRNOS:
            raise _storage_error(exc, command) from None
        raise
    except BaseException:
        if client is not None:
            client.close()
        raise
    try:
        return _run_locked(study, kind, grid, cells, jobs, auto_jobs, scheduler, client, out_root, out_dir,
                           cells_dir, progress, command, stale, log, max_cells)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:
            raise _storage_error(exc, command) from None
        raise
    finally:
        lock.release()


def _run_locked(study, kind, grid, cells, jobs, auto_jobs, scheduler, client, out_root, out_dir, cells_dir,
                progress, command, stale, log, max_cells=None) -> pd.DataFrame:
    try:
        for leftover in out_dir.glob(".*.tmp"):  # temporaries of a run killed while writing
            leftover.unlink(missing_ok=True)
        gitignore = out_dir / ".gitignore"
        if not gitignore.exists():
            _write_atomic(gitignore, "cells/\n")

        sources = sources_hash()
        scan = _scan_cells(cells_dir, cells, sources)
        if scan["stale"] and stale == "refuse":
            versions = sorted({r.get("code", {}).get("sources", "none recorded") for r in scan["stale"].values()})
            raise StaleCells(f"{len(scan['stale'])} of {len(cells)} finished cells of {study['name']!r} were computed "
                             f"by other code (sources {', '.join(versions)}; now {sources}): rerun with "
                             "--recompute-stale to recompute them or --reuse-stale to keep them")
    except BaseException:
        if client is not None:
            client.close()
        raise
    done = dict(scan["done"])
    if stale == "reuse":
        done.update(scan["stale"])
    if scan["damaged"]:
        log(f"{len(scan['damaged'])} cell file(s) of {study['name']!r} are damaged or were edited (checksum "
            f"mismatch or unreadable): recomputing them")
    if scan["stale"] and stale == "recompute":
        log(f"recomputing {len(scan['stale'])} cell(s) of {study['name']!r} computed by other code")
    todo = [c for c in cells if c["cell_id"] not in done]
    if max_cells is not None:
        if int(max_cells) < 0:
            raise ValueError(f"--max-cells must be ≥ 0, got {max_cells}")
        todo = todo[:int(max_cells)]
    commit = _git_commit(out_root)

    start = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = _read_json(out_dir / "run.json")
    meta = {
        "study": study, "kind": study["kind"], "grid": grid,
        "command": command, "git_commit": commit, "sources_hash": sources, "machine": machine_info(),
        "started_at": started_at, "jobs": jobs, "scheduler": scheduler,
        "cells_total": len(cells), "cells_reused": len(done), "cells_computed": 0, "cells_failed": 0,
        "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
    }
    if stale == "reuse" and scan["stale"]:
        meta["cells_reused_from_other_code"] = len(scan["stale"])
    if previous and previous.get("grid") == grid and done:
        # a resumed run: keep the record of the time already spent (a killed run's heartbeat included)
        meta["wall_seconds_previous_runs"] = previous.get("wall_seconds_total", previous.get("wall_seconds", 0.0))
    meta_lock = threading.Lock()
    failures = 0

    def write_meta(status: str | None = None) -> None:
        with meta_lock:
            wall = time.perf_counter() - start
            meta.update(wall_seconds=wall, cells_computed=len(done) - meta["cells_reused"], cells_failed=failures,
                        wall_seconds_total=wall + meta.get("wall_seconds_previous_runs", 0.0),
                        heartbeat_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            if status is not None:
                meta["status"] = status
            _write_atomic(out_dir / "run.json", json.dumps(meta, indent=2, default=str))

    try:
        write_meta()
    except BaseException:
        if client is not None:
            client.close()
        raise

    bar = _Progress(progress, total=len(cells), completed=len(done), name=study["name"])

    def on_done(cell, rows, error, cell_sources=None):
        nonlocal failures
        record = {"cell_id": cell["cell_id"], "cell": _jsonable(cell), "failed": error is not None,
                  "code": {"commit": commit, "sources": cell_sources or sources},
                  "rows": rows if error is None else _failure_rows(cell, error)}
        try:
            _dumps(record)
        except TypeError as exc:  # a kind returned a non-scalar value: record the cell as failed
            error = f"TypeError: {exc}"
            record.update(failed=True, rows=_failure_rows(cell, error))
        record["sha256"] = _checksum(record)
        _write_atomic(_cell_path(cells_dir, cell["cell_id"]), _dumps(record))
        done[cell["cell_id"]] = record
        failures += error is not None
        bar.advance(failed=failures)

    stop = threading.Event()
    interval = float(os.environ.get("STABKIT_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))

    def heartbeat():
        while not stop.wait(interval):
            try:
                write_meta()
            except OSError:  # the main thread meets the same error on its next write and reports it
                pass

    beat = threading.Thread(target=heartbeat, daemon=True, name="stabkit-heartbeat")
    beat.start()
    try:
        with bar:
            if client is not None:
                _run_dask(study["kind"], todo, client, on_done)
                meta["workers"] = "dask"
            elif todo:
                meta["workers"] = _run_local(study["kind"], todo, min(jobs, len(todo)), on_done, auto=auto_jobs)
    except BaseException as exc:
        stop.set()
        beat.join()
        status = "interrupted"
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            status = f"stopped: {exc.strerror or exc}"
        _write_meta_last(write_meta, status, out_dir)
        raise
    stop.set()
    beat.join()

    try:
        table = consolidate(cells, done)
        table.attrs["study_name"] = study["name"]
        _write_table(table, out_dir)
        table = pd.read_parquet(out_dir / "results.parquet")  # return exactly what is on disk
    except BaseException as exc:
        status = f"stopped: {exc.strerror or exc}" if isinstance(exc, OSError) else "interrupted"
        _write_meta_last(write_meta, status, out_dir)
        raise
    table.attrs["study_name"] = study["name"]
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_meta("finished")
    return table


def _write_meta_last(write_meta, status: str, out_dir: Path) -> None:
    """Record the final status; when even that cannot be written (disk full), overwrite run.json's
    status in place, which needs no new space, so it is never left "running"."""
    try:
        write_meta(status)
        return
    except OSError:
        pass
    path = out_dir / "run.json"
    try:
        with open(path, "r+b") as fh:
            text = fh.read()
            marker = b'"status": "running"'
            at = text.find(marker)
            if at >= 0:
                fh.seek(at)
                fh.write(b'"status": "stopped"'.ljust(len(marker)))
    except OSError:
        pass


def _write_table(table: pd.DataFrame, out_dir: Path) -> None:
    _replace_atomic(out_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    _replace_atomic(out_dir / "results.csv", lambda p: table.to_csv(p, index=False))


def consolidate(cells: list[dict], done: dict[str, dict]) -> pd.DataFrame:
    """All rows in cell order (then the kind's row order), ``cell_id`` first and ``error`` last."""
    rows = []
    for cell in cells:
        record = done.get(cell["cell_id"])
        if record is None:
            continue
        for row in record["rows"]:
            rows.append({"cell_id": cell["cell_id"], **row})
    columns = ["cell_id"]
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    if "error" in columns:
        columns.remove("error")
    columns.append("error")
    table = pd.DataFrame(rows, columns=columns)
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    return table


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
        if not self.bar:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("cells · [red]{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), transient=False, console=Console(file=self.stream),
        )
        self.task = self.progress.add_task(name, total=total, completed=completed, failed=0)

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
        eta = f", ETA {_duration((self.total - self.completed) / rate)}" if rate > 0 and self.completed < self.total else ""
        print(f"{self.name}: {self.completed}/{self.total} cells ({failed} failed), {_duration(elapsed)} elapsed{eta}",
              file=self.stream, flush=True)


# ----------------------------------------------------------------------------- provenance


def _argv_command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("stabkit", "main.py", "__main__.py"):
        argv[0] = "stabkit"
    return shlex.join(argv)


def _git_commit(out_root: Path | None = None) -> str:
    """HEAD, with "-dirty" if the checkout differs from it — outside ``out_root``, which a run writes.

    A copy of the tree without ``.git`` (e.g. sent to a GPU machine) takes the commit from the
    environment variable ``STABKIT_GIT_COMMIT``, set by whoever made the copy, and says so.
    """
    if not (REPO / ".git").exists():
        given = os.environ.get("STABKIT_GIT_COMMIT", "").strip()
        return f"{given} (copy without .git; from STABKIT_GIT_COMMIT)" if given else "unknown (not a git checkout)"
    exclude = []
    if out_root is not None:
        try:
            exclude = [f":(exclude){Path(out_root).resolve().relative_to(REPO)}"]
        except ValueError:  # reports written outside the checkout
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", *exclude], cwd=REPO,
                               capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def machine_info() -> dict:
    import numpy

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return {
        "platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
        "python": platform.python_version(), "numpy": numpy.__version__, "torch": torch_version, "gpu": _gpu_names(),
    }


def _gpu_names() -> str:
    """The CUDA devices torch sees, e.g. "1× NVIDIA H100 80GB HBM3", or "none"."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "none"
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError):
        return "none"
    return ", ".join(f"{names.count(n)}× {n}" for n in dict.fromkeys(names))


# ----------------------------------------------------------------------------- reports


def build_report(name: str, out_root=Path("reports")) -> Path:
    """(Re)build ``out_root/<name>/README.md`` from results.parquet + run.json, and the index."""
    out_dir = Path(out_root) / name
    results_path = out_dir / "results.parquet"
    if not results_path.is_file():
        raise FileNotFoundError(f"no results for study {name!r}: {results_path} does not exist (run it first)")
    meta = _read_json(out_dir / "run.json")
    if meta is None:
        raise ValueError(f"{out_dir / 'run.json'} is missing or unreadable: rerun the study to record it")
    kind = kind_module(meta["kind"])
    results = pd.read_parquet(results_path)
    failed = first_failure(results)
    if failed is not None and failed[2] == len(results):
        body = _all_failed_body(results)  # the kind's report needs at least one computed row
    else:
        body = kind.report(results, meta["grid"], out_dir)
    text = _header(name, meta, results, report_commit=_git_commit(out_root)) + "\n" + body.rstrip() + "\n"
    _write_atomic(out_dir / "README.md", text)
    build_index(out_root)
    return out_dir / "README.md"


def first_failure(results: pd.DataFrame) -> tuple[str, str, int] | None:
    """(cell_id, error, number of failed-cell rows) of the first failed cell, or None."""
    if "error" not in results or results.empty:
        return None
    mask = results["error"].fillna("").astype(str).str.startswith("cell failed:")
    if not mask.any():
        return None
    row = results[mask].iloc[0]
    return str(row.get("cell_id", "?")), str(row["error"]).removeprefix("cell failed: "), int(mask.sum())


def _all_failed_body(results: pd.DataFrame) -> str:
    lines = [f"Every one of the {len(results)} cells failed; nothing was computed. The errors:\n"]
    counts = results.groupby("error", sort=False)["cell_id"].agg(["count", "first"])
    for error, row in counts.iterrows():
        lines.append(f"- {row['count']} cell(s), e.g. `{row['first']}`: {str(error).removeprefix('cell failed: ')}")
    return "\n".join(lines) + "\n"


def _header(name: str, meta: dict, results: pd.DataFrame, report_commit: str | None = None) -> str:
    """The run's record; ``report_commit``, when it is not the run's commit, is the code that wrote the text."""
    m = meta.get("machine", {})
    wall = meta.get("wall_seconds_total", meta.get("wall_seconds"))
    resumed = meta.get("wall_seconds_previous_runs")
    lines = [
        f"# {name}", "",
        f"Study kind `{meta['kind']}`" + (f" — {meta['study']['description']}" if meta.get("study", {}).get("description") else "") + ".", "",
        "| | |", "|---|---|",
        f"| command | `{meta.get('command', '?')}` |",
        f"| git commit | `{meta.get('git_commit', '?')}` |",
        *([f"| report text | rebuilt from these results by `stabkit report {name}` at commit `{report_commit}` |"]
          if report_commit and report_commit != meta.get("git_commit") else []),
        f"| machine | {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gib', '?')} GiB RAM; {m.get('platform', '?')} |",
        f"| versions | python {m.get('python', '?')}, numpy {m.get('numpy', '?')}, torch {m.get('torch', '?')} |",
        f"| GPU | {m.get('gpu', 'not recorded')} |",
        f"| execution | {'Dask scheduler ' + meta['scheduler'] if meta.get('scheduler') else str(meta.get('jobs', '?')) + ' local process(es)'} |",
        f"| wall time | {_duration(wall)}"
        + (f" (this run {_duration(meta.get('wall_seconds'))}, resumed after {_duration(resumed)})" if resumed else "")
        + " |",
        f"| cells | {meta.get('cells_total', '?')} ({meta.get('cells_computed', '?')} computed in the last run, "
        f"{meta.get('cells_reused', '?')} reused, {meta.get('cells_failed', '?')} failed) |",
        f"| finished | {meta.get('finished_at', 'not finished')} |",
        "", "Effective grid (study file + `--set` overrides, defaults filled in):", "",
        "```json", json.dumps(meta.get("grid", {}), indent=None, default=str), "```", "",
    ]
    if meta.get("status") != "finished":
        lines.insert(2, "**The run that wrote these results did not finish; the table is partial.**\n")
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds is None or not isinstance(seconds, (int, float)):
        return "?"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def build_index(out_root=Path("reports")) -> Path:
    """``out_root/README.md``: one line per report (name, kind, summary, link)."""
    out_root = Path(out_root)
    entries = []
    for path in sorted(out_root.glob("*/run.json")):
        meta = _read_json(path)
        if meta is None:
            continue
        name = path.parent.name
        summary = "no results yet"
        results_path = path.parent / "results.parquet"
        if results_path.is_file():
            results = pd.read_parquet(results_path)
            try:
                hook = getattr(kind_module(meta["kind"]), "summary", None)
            except (ValueError, ImportError):
                hook = None
            failed = first_failure(results)
            if failed is not None and failed[2] == len(results):
                summary = f"all {len(results)} cells failed, e.g. {failed[1][:120]}"
            elif hook is not None:
                summary = hook(results)
            else:
                n_cells = results["cell_id"].nunique() if "cell_id" in results else len(results)
                summary = f"{n_cells} cells, {len(results)} rows"
        link = f"{name}/README.md" if (path.parent / "README.md").is_file() else f"{name}/"
        entries.append(f"| [{name}]({link}) | `{meta.get('kind', '?')}` | {summary} |")
    text = "\n".join(["# Reports", "", "Built by `stabkit report NAME`; each report states the command, commit and "
                      "machine that produced it.", "", "| report | kind | summary |", "|---|---|---|", *entries, ""])
    _write_atomic(out_root / "README.md", text)
    return out_root / "README.md"
