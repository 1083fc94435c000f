"""Where a study's results come from: the command line, the git commit, the machine (CPU, cores,
RAM, GPU) and the library versions — recorded while a run lasts in ``run.unfinished.json`` (kept
up to date by a heartbeat, so a kill -9 loses no time), moved to ``run.json`` when the run writes
its table (:class:`RunRecord`), and shown as the header of its report (:func:`header`)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from .._io import write_text_atomic
from ._machine import machine_info, machine_summary, torch_kernels
from ._store import _read_json

REPO = Path(__file__).resolve().parents[2]
#: Seconds between heartbeat writes while a run lasts (STABKIT_HEARTBEAT_SECONDS overrides).
HEARTBEAT_SECONDS = 10.0
#: The record of a run that has not written its table yet (running, or stopped before it); ignored by git.
UNFINISHED = "run.unfinished.json"


# ----------------------------------------------------------------------------- command, commit, machine


def argv_command() -> str:
    """This process's command line, ``stabkit`` for the entry point's own name."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("stabkit", "main.py", "__main__.py"):
        argv[0] = "stabkit"
    return shlex.join(argv)


def finishing_command(command: str) -> str:
    """``command`` without its ``--max-cells`` option: the run that computes every cell still to do."""
    words = shlex.split(command)
    kept = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--max-cells":
            skip = True  # its value is the next word
        elif not word.startswith("--max-cells="):
            kept.append(word)
    return shlex.join(kept)


def cells_left(meta: dict) -> int:
    """Cells of the grid that no run has computed yet (0 when run.json lacks the counts)."""
    try:
        return max(0, int(meta["cells_total"]) - int(meta["cells_reused"]) - int(meta["cells_computed"]))
    except (KeyError, TypeError, ValueError):
        return 0


def git_commit(out_root: Path | None = None) -> str:
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
            exclude = [f":(exclude,literal){Path(out_root).resolve().relative_to(REPO)}"]
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


def cells_origin(records) -> list[dict]:
    """How many of the cell ``records`` each (commit, machine) computed, most first."""
    counts: dict[tuple, int] = {}
    for record in records:
        code = record.get("code") if isinstance(record.get("code"), dict) else {}
        key = (code.get("commit", "not recorded"), code.get("machine", "a machine not recorded (cells written before machines were)"))
        counts[key] = counts.get(key, 0) + 1
    return [{"commit": commit, "machine": machine, "cells": n}
            for (commit, machine), n in sorted(counts.items(), key=lambda item: -item[1])]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- run.json


class RunRecord:
    """The record of one run. ``out_dir/run.json`` describes the run that wrote results.parquet, so
    it is written only by :meth:`finish`, after the table; until then the record lives in
    ``out_dir/run.unfinished.json`` (:data:`UNFINISHED`): written at the start (:meth:`write`), every
    few seconds by a heartbeat, and with the status a stopped run ended in. A run stopped or killed
    before its table thus leaves the published pair (table, run.json) as it was — in a fresh
    checkout, the committed report. A resumed run of the same grid carries the time of the runs
    before it (a killed run's last heartbeat included)."""

    def __init__(self, out_dir: Path, study: dict, grid: dict, *, command: str, commit: str, sources: str,
                 jobs: int, scheduler: str | None, cells_total: int, cells_reused: int, reused_other_code: int = 0):
        self.path = Path(out_dir) / "run.json"
        self.unfinished = Path(out_dir) / UNFINISHED
        self.start = time.perf_counter()
        started_at = _now()
        previous = _read_json(self.unfinished) or _read_json(self.path)
        self.meta = {
            "study": study, "kind": study["kind"], "grid": grid,
            "command": command, "git_commit": commit, "sources_hash": sources, "machine": machine_info(),
            "started_at": started_at, "jobs": jobs, "scheduler": scheduler,
            "cells_total": cells_total, "cells_reused": cells_reused, "cells_computed": 0, "cells_failed": 0,
            "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
            # started_at keeps whole seconds and one process may start several runs: this tells them apart
            "run_id": uuid.uuid4().hex,
        }
        if reused_other_code:
            self.meta["cells_reused_from_other_code"] = reused_other_code
        if previous and previous.get("grid") == grid and cells_reused:
            self.meta["wall_seconds_previous_runs"] = previous.get("wall_seconds_total", previous.get("wall_seconds", 0.0))
        self.computed = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = None

    def cell_finished(self, failed: bool) -> None:
        """Count a cell this run computed (and whether it failed)."""
        self.computed += 1
        self.failed += failed

    def write(self, status: str | None = None, path: Path | None = None) -> None:
        """Bring the wall time, counts and heartbeat up to date (and ``status``), then write the
        record to ``path`` (default: the unfinished record)."""
        with self._lock:
            wall = time.perf_counter() - self.start
            self.meta.update(wall_seconds=wall, cells_computed=self.computed, cells_failed=self.failed,
                             wall_seconds_total=wall + self.meta.get("wall_seconds_previous_runs", 0.0),
                             heartbeat_at=_now())
            if status is not None:
                self.meta["status"] = status
            write_text_atomic(path or self.unfinished, json.dumps(self.meta, indent=2, default=str))

    def start_heartbeat(self) -> None:
        """Rewrite the unfinished record every STABKIT_HEARTBEAT_SECONDS (default :data:`HEARTBEAT_SECONDS`)."""
        interval = float(os.environ.get("STABKIT_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))

        def beat():
            while not self._stop.wait(interval):
                try:
                    self.write()
                except OSError:  # the main thread meets the same error on its next write and reports it
                    pass

        self._beat = threading.Thread(target=beat, daemon=True, name="stabkit-heartbeat")
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    def finish(self) -> None:
        """The run wrote its table: its record becomes run.json, and the unfinished one goes."""
        self.meta["finished_at"] = _now()
        self.write("finished", path=self.path)
        self.unfinished.unlink(missing_ok=True)

    def write_last(self, status: str) -> None:
        """Record how an unfinished run stopped; when even that cannot be written (disk full),
        overwrite its status in place, which needs no new space, so it is never left "running"."""
        try:
            self.write(status)
            return
        except OSError:
            pass
        try:
            with open(self.unfinished, "r+b") as fh:
                text = fh.read()
                marker = b'"status": "running"'
                at = text.find(marker)
                if at >= 0:
                    fh.seek(at)
                    fh.write(b'"status": "stopped"'.ljust(len(marker)))
        except OSError:
            pass


# ----------------------------------------------------------------------------- the report header


def header(name: str, meta: dict, report_commit: str | None = None, report_sources: str | None = None) -> str:
    """The run's record; ``report_commit``, when it is not the run's commit, is the code that wrote the text,
    and so are ``report_sources`` (a hash of the stabkit sources) when they are not the run's: a dirty
    tree names one commit for any uncommitted code."""
    m, study = (meta.get(key) if isinstance(meta.get(key), dict) else {} for key in ("machine", "study"))  # damaged: unknown
    description = study.get("description")
    lines = [
        f"# {name}", "",
        f"Study kind `{meta['kind']}`" + (f" — {description}" if description else "") + ".", "",
        "| | |", "|---|---|",
        f"| command | `{meta.get('command', '?')}` |",
        f"| git commit | `{meta.get('git_commit', '?')}` |",
        *_report_text_row(name, meta, report_commit, report_sources),
        f"| machine | {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gib', '?')} GiB RAM; {m.get('platform', '?')} |",
        f"| versions | python {m.get('python', '?')}, numpy {m.get('numpy', '?')}, torch {m.get('torch', '?')} |",
        *([f"| linear algebra kernels | BLAS {m['blas']}; torch CPU {torch_kernels(m)} |"] if "blas" in m else []),
        f"| GPU | {m.get('gpu', 'not recorded')} |",
        f"| execution | {_execution(meta)} |",
        f"| wall time | {_wall_time(meta)} |",
        f"| cells | {meta.get('cells_total', '?')} ({meta.get('cells_computed', '?')} computed in the last run, "
        f"{meta.get('cells_reused', '?')} reused, {meta.get('cells_failed', '?')} failed"
        f"{f', {cells_left(meta)} not computed yet' if cells_left(meta) else ''}) |",
        *_origin_row(meta),
        f"| finished | {meta.get('finished_at', 'not finished')} |",
        "", "Effective grid (study file + `--set` overrides, defaults filled in):", "",
        "```json", json.dumps(meta.get("grid", {}), indent=None, default=str), "```", "",
    ]
    if meta.get("status") != "finished":
        lines.insert(2, "**The run that wrote these results did not finish; the table is partial.**\n")
    elif cells_left(meta):
        lines.insert(2, f"**Partial: {cells_left(meta)} of {meta['cells_total']} cells are not computed yet; "
                        f"`{finishing_command(meta.get('command', 'stabkit run STUDY'))}` computes them.**\n")
    return "\n".join(lines)


def _report_text_row(name: str, meta: dict, commit: str | None, sources: str | None) -> list[str]:
    """The code that wrote the report's text, where it is not the run's."""
    run_sources = meta.get("sources_hash")
    other_sources = bool(sources and run_sources and sources != run_sources)
    if not commit or (commit == meta.get("git_commit") and not other_sources):
        return []
    also = f" (stabkit sources `{sources}`, the run's `{run_sources}`)" if commit == meta.get("git_commit") else ""
    return [f"| report text | rebuilt from these results by `stabkit report {name}` at commit `{commit}`{also} |"]


def _origin_row(meta: dict) -> list[str]:
    """The commits and machines the table's cells were computed at, where any is not the run's own
    (cells resumed from earlier runs): the header's commit and machine describe the last run only."""
    origin = meta.get("cells_origin")
    own = {"commit": meta.get("git_commit"), "machine": machine_summary(meta.get("machine"))}
    if not isinstance(origin, list) or all({k: o.get(k) for k in own} == own for o in origin):
        return []
    parts = [f"{o.get('cells', '?')} at commit `{o.get('commit', '?')}` on {o.get('machine', '?')}" for o in origin]
    return [f"| cells computed at | {'; '.join(parts)} |"]


def _execution(meta: dict) -> str:
    if meta.get("scheduler"):
        return "Dask scheduler " + meta["scheduler"]
    # the processes the cells actually ran in ("workers": the default may stay inline), else the
    # job count asked for (runs recorded before "workers" existed)
    return str(meta.get("workers", meta.get("jobs", "?"))) + " local process(es)"


def _wall_time(meta: dict) -> str:
    wall = meta.get("wall_seconds_total", meta.get("wall_seconds"))
    resumed = meta.get("wall_seconds_previous_runs")
    if not resumed:
        return duration(wall)
    return f"{duration(wall)} (this run {duration(meta.get('wall_seconds'))}, resumed after {duration(resumed)})"


def duration(seconds) -> str:
    """``12.3 s`` below two minutes, else ``4.5 min``; ``?`` when unknown."""
    if seconds is None or not isinstance(seconds, (int, float)):
        return "?"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
