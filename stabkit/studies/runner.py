"""Run a study file cell by cell — resumable, in parallel — and build its Markdown report.

Layout under ``out_root/<name>/``::

    cells/<hash>.json   one file per finished cell, written atomically (tmp + fsync + os.replace);
                        ignored by git (a .gitignore is written next to it)
    results.parquet     all rows, consolidated in cell order (deterministic), plus results.csv
    run.json            command line, effective grid, git commit, machine, wall time
    README.md           header from run.json + the kind's report body

Resumption: a rerun loads every cell file whose stored cell equals a cell of the grid and
computes only the others, so a Ctrl-C or ``kill -9`` at any moment loses at most the cells in
flight and never duplicates rows. Cells that raised are recorded (one row with ``error``) and
retried by the next run. Besides the protocol in :mod:`stabkit.studies`, the runner uses an
optional ``summary(results) -> str`` of the kind for the one-line entry of ``reports/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import kind_module
from .._assign import split_assignment

STUDY_KEYS = ("name", "kind", "description")
TOP_KEYS = ("study", "grid")
REPO = Path(__file__).resolve().parents[2]


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


# ----------------------------------------------------------------------------- cell storage


def _cell_path(cells_dir: Path, cell_id: str) -> Path:
    return cells_dir / (hashlib.sha256(cell_id.encode()).hexdigest()[:20] + ".json")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _load_done(cells_dir: Path, cells: list[dict]) -> dict[str, dict]:
    """Finished cells on disk whose stored parameters equal the grid's (failed ones excluded)."""
    wanted = {c["cell_id"]: c for c in cells}
    done = {}
    if not cells_dir.is_dir():
        return done
    for path in cells_dir.iterdir():
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # a write interrupted by a kill
            continue
        if path.suffix != ".json":
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: the cell is simply recomputed
        cid = record.get("cell_id")
        if cid in wanted and record.get("cell") == _jsonable(wanted[cid]) and not record.get("failed"):
            done[cid] = record
    return done


def _json_default(obj):
    """numpy scalars (np.int64, np.bool_, ...) in a kind's rows become plain Python values."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    raise TypeError(f"row value {obj!r} of type {type(obj).__name__} is not a scalar")


def _dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True, default=_json_default)


def _jsonable(obj):
    return json.loads(_dumps(obj))


# ----------------------------------------------------------------------------- execution


def _execute(kind_name: str, cell: dict) -> tuple[list[dict], str | None]:
    """Run one cell (in any process); exceptions become an error text instead of propagating."""
    try:
        rows = kind_module(kind_name).run_cell(cell)
        return [dict(r) for r in rows], None
    except Exception as exc:  # noqa: BLE001 — a failing cell must not stop the study
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [], tail


def _failure_rows(cell: dict, error: str) -> list[dict]:
    scalars = {k: v for k, v in cell.items() if k != "cell_id" and isinstance(v, (str, int, float, bool))}
    return [{**scalars, "error": f"cell failed: {error}"}]


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _run_local(kind_name, todo, jobs, on_done):
    if jobs <= 1:
        for cell in todo:
            on_done(cell, *_execute(kind_name, cell))
        return
    import multiprocessing

    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})  # one BLAS thread per worker process
    try:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
        futures = {pool.submit(_execute, kind_name, cell): cell for cell in todo}
        try:
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    rows, error = fut.result()
                except Exception as exc:  # noqa: BLE001 — e.g. a worker died
                    rows, error = [], f"{type(exc).__name__}: {exc}"
                on_done(cell, rows, error)
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
                rows, error = fut.result()
            except Exception as exc:  # noqa: BLE001 — a worker lost, a pickling error, ...
                rows, error = [], f"{type(exc).__name__}: {exc}"
            on_done(cell, rows, error)
            fut.release()
    finally:
        client.close()


def run_study(path_or_config, overrides: dict | None = None, jobs: int | None = None, scheduler: str | None = None,
              out_root=Path("reports"), progress: bool = True, command: str | None = None) -> pd.DataFrame:
    """Run (or resume) a study; return the consolidated table, written to results.parquet/csv.

    ``jobs``: local worker processes (None = all cores, 1 = inline); ``scheduler``: a Dask
    scheduler address, used instead of local processes. ``command``: the command line recorded
    in run.json (default: this process's argv).
    """
    study, kind, grid = load_study(path_or_config, overrides)
    cells = kind.cells(grid)
    ids = [c["cell_id"] for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"study kind {study['kind']!r} produced duplicate cell ids")
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"--jobs must be ≥ 1, got {jobs}")

    client = _dask_client(scheduler) if scheduler else None  # fail before any work if unreachable
    out_dir = Path(out_root) / study["name"]
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    gitignore = out_dir / ".gitignore"
    if not gitignore.exists():
        _write_atomic(gitignore, "cells/\n")

    done = _load_done(cells_dir, cells)
    todo = [c for c in cells if c["cell_id"] not in done]
    start = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = _read_json(out_dir / "run.json")
    meta = {
        "study": study, "kind": study["kind"], "grid": grid,
        "command": command or _argv_command(),
        "git_commit": _git_commit(out_root), "machine": machine_info(),
        "started_at": started_at, "jobs": jobs, "scheduler": scheduler,
        "cells_total": len(cells), "cells_reused": len(done), "cells_computed": 0, "cells_failed": 0,
        "status": "running",
    }
    if previous and previous.get("grid") == grid and done:
        # a resumed run: keep the record of the time already spent
        meta["wall_seconds_previous_runs"] = previous.get("wall_seconds_total", previous.get("wall_seconds", 0.0))
    _write_atomic(out_dir / "run.json", json.dumps(meta, indent=2, default=str))

    failures = 0
    bar = _Progress(progress, total=len(cells), completed=len(done), name=study["name"])

    def on_done(cell, rows, error):
        nonlocal failures
        record = {"cell_id": cell["cell_id"], "cell": _jsonable(cell), "failed": error is not None,
                  "rows": rows if error is None else _failure_rows(cell, error)}
        try:
            text = _dumps(record)
        except TypeError as exc:  # a kind returned a non-scalar value: record the cell as failed
            record.update(failed=True, rows=_failure_rows(cell, f"TypeError: {exc}"))
            error = str(exc)
            text = _dumps(record)
        _write_atomic(_cell_path(cells_dir, cell["cell_id"]), text)
        done[cell["cell_id"]] = record
        failures += error is not None
        bar.advance(failed=failures)

    def record_time(status: str) -> None:
        wall = time.perf_counter() - start
        meta.update(status=status, wall_seconds=wall, cells_computed=len(done) - meta["cells_reused"],
                    cells_failed=failures, wall_seconds_total=wall + meta.get("wall_seconds_previous_runs", 0.0))
        _write_atomic(out_dir / "run.json", json.dumps(meta, indent=2, default=str))

    try:
        with bar:
            if client is not None:
                _run_dask(study["kind"], todo, client, on_done)
            elif todo:
                _run_local(study["kind"], todo, min(jobs, len(todo)), on_done)
    except BaseException:
        record_time("interrupted")  # the time spent is kept for the run that resumes
        raise

    table = consolidate(cells, done)
    table.attrs["study_name"] = study["name"]
    tmp = out_dir / ".results.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "results.parquet")
    tmp = out_dir / ".results.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "results.csv")

    table = pd.read_parquet(out_dir / "results.parquet")  # return exactly what is on disk
    table.attrs["study_name"] = study["name"]
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record_time("finished")
    return table


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
    """rich progress bar: cells done/total, failures, elapsed, ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, completed: int, name: str):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("cells · [red]{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), transient=False,
        )
        self.task = self.progress.add_task(name, total=total, completed=completed, failed=0)

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def advance(self, failed: int) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, failed=failed)


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    body = kind.report(results, meta["grid"], out_dir)
    text = _header(name, meta, results, report_commit=_git_commit(out_root)) + "\n" + body.rstrip() + "\n"
    _write_atomic(out_dir / "README.md", text)
    build_index(out_root)
    return out_dir / "README.md"


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
            if hook is not None:
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
