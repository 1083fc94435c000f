"""Faults the study runner must survive (issue 13): two writers, code changes between resumes,
edited cell files, kill -9 of the parent, a full or read-only disk, every cell failing, lost wall
time, progress on stdout; and the default job count (issue 16). Python 3.10 (tomli): test_studies_grid;
the sources hash: test_studies_store."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from stabkit.cli.main import app
from stabkit.studies import _grid, _store, _workers, gradient_accuracy, publish, runner

REPO = Path(__file__).resolve().parents[1]

GRID = """methods = ["analytic", "clip"]
families = ["separated", {family = "cluster", delta = 1e-6}]
d = [4, 5]
dtypes = ["float64"]
losses = ["zca"]
"""
N_CELLS = 4

#: Runs a study inline in a subprocess with every cell slowed by a sleep (argv: study, out, seconds).
SLOW_RUNNER = """
import sys, time
from stabkit.studies import _store, gradient_accuracy, runner
real = gradient_accuracy.run_cell
def slow(cell):
    time.sleep(float(sys.argv[3]))
    return real(cell)
gradient_accuracy.run_cell = slow
runner.run_study(sys.argv[1], {}, jobs=1, out_root=sys.argv[2], progress=False, command="slow")
"""


def _study(tmp_path: Path, grid: str = GRID, name: str = "faults") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[study]\nname = "{name}"\nkind = "gradient_accuracy"\n[grid]\n{grid}\n')
    return path


def _stable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["seconds"]).reset_index(drop=True)


def _cell_files(out: Path) -> list[Path]:
    return sorted((out / "cells").glob("*.json"))


def _start_slow(study: Path, out: Path, seconds: float, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_RUNNER, str(study), str(out), str(seconds)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_cells(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "cells").is_dir() and len(_cell_files(out)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} cells after {timeout} s")


# ----------------------------------------------------------------------------- one writer


def test_a_second_writer_exits_2_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    study = _study(tmp_path)
    out_root = tmp_path / "out"
    holder = _start_slow(study, out_root, 0.5)
    try:
        _wait_for_cells(out_root / "faults", 1, holder)
        result = CliRunner().invoke(app, ["run", str(study), "--out", str(out_root), "--jobs", "1", "--no-progress"])
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert len(message.splitlines()) == 1 and message.startswith("error: ")
        assert f"pid {holder.pid} on host {socket.gethostname()} since 20" in message
        assert "Traceback" not in result.output
        assert holder.poll() is None  # the holder was not disturbed
    finally:
        holder.kill()  # kill -9: the kernel drops its flock; the lock file stays behind
        holder.wait()
    lock = json.loads((out_root / "faults" / "cells" / _store.LOCK_NAME).read_text())
    assert lock["pid"] == holder.pid
    table = runner.run_study(study, {}, jobs=1, out_root=out_root, progress=False)
    assert len(table) == N_CELLS * 2 and table["error"].isna().all()


# ----------------------------------------------------------------------------- code version, checksums


def test_cells_from_other_code_are_refused_then_recomputed_or_reused_on_request(tmp_path, monkeypatch):
    study = _study(tmp_path)
    first = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False)
    out = tmp_path / "faults"
    records = [json.loads(p.read_text()) for p in _cell_files(out)]
    assert len(records) == N_CELLS
    assert {r["code"]["sources"] for r in records} == {_store.sources_hash()}
    assert {r["code"]["commit"] for r in records} == {json.loads((out / "run.json").read_text())["git_commit"]}

    monkeypatch.setattr(_store, "sources_hash", lambda: "0123456789abcdef")  # the code changed
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path), "--jobs", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert f"{N_CELLS} of {N_CELLS} finished cells" in result.output and "--reuse-stale" in result.output
    assert json.loads((out / "run.json").read_text())["status"] == "finished"  # refused before any work

    notes = []
    kept = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False, stale="reuse", log=notes.append)
    meta = json.loads((out / "run.json").read_text())
    assert meta["cells_computed"] == 0 and meta["cells_reused_from_other_code"] == N_CELLS
    pd.testing.assert_frame_equal(kept, first)

    redone = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False, stale="recompute",
                              log=notes.append)
    assert json.loads((out / "run.json").read_text())["cells_computed"] == N_CELLS
    assert notes == [f"recomputing {N_CELLS} cell(s) of 'faults' computed by other code"]
    assert {json.loads(p.read_text())["code"]["sources"] for p in _cell_files(out)} == {"0123456789abcdef"}
    pd.testing.assert_frame_equal(_stable(redone), _stable(first))


def test_an_edited_cell_file_is_detected_and_recomputed(tmp_path):
    study = _study(tmp_path)
    first = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False)
    out = tmp_path / "faults"
    path = _cell_files(out)[0]
    record = json.loads(path.read_text())
    honest = record["rows"][0]["angle_deg"]
    record["rows"][0]["angle_deg"] = 27.7  # still valid JSON, still the same cell
    path.write_text(json.dumps(record))
    notes = []
    again = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False, log=notes.append)
    assert json.loads((out / "run.json").read_text())["cells_computed"] == 1
    assert len(notes) == 1 and "checksum" in notes[0]
    assert 27.7 not in set(again["angle_deg"]) and json.loads(path.read_text())["rows"][0]["angle_deg"] == honest
    pd.testing.assert_frame_equal(_stable(again), _stable(first))


# ----------------------------------------------------------------------------- workers die with the parent


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_9_of_the_parent_takes_the_pool_workers_with_it(tmp_path):
    # cold truth cache and 48 cells: the pool is still busy when the parent dies
    grid = GRID.replace("d = [4, 5]", "d = [20, 24]") + "seeds = [11, 12, 13, 14, 15, 16]\n"
    grid = grid.replace('losses = ["zca"]', 'losses = ["zca", "sqrt"]')
    study = _study(tmp_path, grid)
    out_root = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "stabkit.cli.main", "run", str(study), "--out", str(out_root), "--jobs", "2",
                             "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "STABKIT_CACHE": str(tmp_path / "cache")})
    children = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (out_root / "faults" / "cells").is_dir() and _cell_files(out_root / "faults"):
                break
            time.sleep(0.01)
        children = _children(proc.pid)
        assert proc.poll() is None and len(children) >= 2, "the pool was not running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)
        survivors = [c for c in children if _alive(c)]
        assert not survivors, f"processes left behind by the killed parent: {survivors}"
    finally:
        for pid in [proc.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()


# ----------------------------------------------------------------------------- disk full, read-only


def _no_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_mid_run_is_one_line_with_the_resume_hint_and_leaves_nothing_behind(tmp_path, monkeypatch):
    study = _study(tmp_path)
    out = tmp_path / "faults"
    real_fsync = os.fsync
    state = {"cells": 0}

    def is_cell_temporary(fd):  # the synced file is one of cells/.*.tmp (same device and inode)
        st = os.fstat(fd)
        return any(os.path.samestat(st, p.stat()) for p in (out / "cells").glob(".*.tmp"))

    def full_disk_fsync(fd):
        if is_cell_temporary(fd):
            state["cells"] += 1
        if state["cells"] > 2:  # after two cells the disk is full: every write fails from now on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path), "--jobs", "1", "--no-progress"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output
    assert "No space left on device" in message
    assert f"run `stabkit run {study} --jobs=1 --out={tmp_path}` again to resume" in message
    # the run's record could not be rewritten (the disk is full), yet it does not claim to be running
    assert json.loads((out / "run.unfinished.json").read_text())["status"] != "running"
    assert _no_temporaries(tmp_path) == []
    assert not (out / "results.parquet").exists()

    table = runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False)
    meta = json.loads((out / "run.json").read_text())
    assert meta["cells_reused"] == 2 and meta["cells_computed"] == N_CELLS - 2 and meta["status"] == "finished"
    assert len(table) == 2 * N_CELLS and _no_temporaries(tmp_path) == []


def test_a_results_write_that_fails_leaves_no_temporary_and_records_the_stop(tmp_path, monkeypatch):
    study = _study(tmp_path)

    def no_space(self, path, *args, **kwargs):
        Path(path).write_bytes(b"")  # the 0-byte file a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)
    with pytest.raises(runner.StorageError, match="No space left on device.*again to resume"):
        runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=False, command="stabkit run x")
    assert json.loads((tmp_path / "faults" / "run.unfinished.json").read_text())["status"].startswith("stopped")
    assert not (tmp_path / "faults" / "run.json").exists()
    assert _no_temporaries(tmp_path) == []


def test_a_read_only_output_directory_is_one_line_exit_2(tmp_path, monkeypatch):
    study = _study(tmp_path)
    root = tmp_path / "ro"
    root.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: make the directory read-only for this process
        real_open, real_os_open = builtins.open, os.open
        prefix = str(root)

        def refuse(path):
            if str(path).startswith(prefix):
                raise OSError(errno.EROFS, "Read-only file system", str(path))

        def ro_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def ro_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", ro_open)
        monkeypatch.setattr(os, "open", ro_os_open)
        real_mkdir = Path.mkdir

        def ro_mkdir(self, *args, **kwargs):
            refuse(self)
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    else:
        root.chmod(0o555)
    try:
        result = CliRunner().invoke(app, ["run", str(study), "--out", str(root), "--jobs", "1", "--no-progress"])
    finally:
        monkeypatch.undo()
        root.chmod(0o755)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert re.search(r"(Read-only file system|Permission denied)", message) and "again to resume" in message
    assert list(root.rglob("*")) == []


# ----------------------------------------------------------------------------- every cell fails


def test_when_every_cell_fails_the_first_real_error_is_printed(tmp_path, monkeypatch):
    def broken(cell):
        raise RuntimeError(f"injected failure in {cell['cell_id']}")

    monkeypatch.setattr(gradient_accuracy, "run_cell", broken)
    study = _study(tmp_path)
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path), "--jobs", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    first = gradient_accuracy.cells(_grid.load_study(study)[2])[0]["cell_id"]
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: all {N_CELLS} cells failed; the first ({first}): "
                           f"RuntimeError: injected failure in {first} (at test_faults_runner.py:")
    assert "in broken)" in line and "family_params" not in line
    readme = (tmp_path / "faults" / "README.md").read_text()
    assert f"Every one of the {N_CELLS} cells failed" in readme and "injected failure" in readme
    assert "all 4 cells failed" in (tmp_path / "README.md").read_text()


# ----------------------------------------------------------------------------- wall time of a killed run


def test_the_time_of_a_killed_run_is_kept_in_the_total(tmp_path):
    study = _study(tmp_path)
    out_root = tmp_path / "out"
    proc = _start_slow(study, out_root, 0.4, STABKIT_HEARTBEAT_SECONDS="0.1")
    try:
        _wait_for_cells(out_root / "faults", 2, proc)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    killed = json.loads((out_root / "faults" / "run.unfinished.json").read_text())
    assert killed["status"] == "running" and killed["pid"] == proc.pid
    # what is known of a killed run is its last heartbeat: the report says so, not that it is running
    with pytest.raises(FileNotFoundError, match=re.escape(f"status: running at its last heartbeat, {killed['heartbeat_at']}")):
        publish.build_report("faults", out_root)
    assert killed["wall_seconds_total"] >= 0.8  # two cells of ≥ 0.4 s each were done
    runner.run_study(study, {}, jobs=1, out_root=out_root, progress=False)
    meta = json.loads((out_root / "faults" / "run.json").read_text())
    assert meta["wall_seconds_previous_runs"] == killed["wall_seconds_total"]
    assert meta["wall_seconds_total"] == pytest.approx(meta["wall_seconds"] + killed["wall_seconds_total"], rel=1e-12)


# ----------------------------------------------------------------------------- progress on stderr


def test_progress_goes_to_stderr_one_plain_line_per_cell_group_when_not_a_terminal(tmp_path, capsys):
    study = _study(tmp_path, GRID.replace("d = [4, 5]", "d = [4, 5, 6, 7, 8]"))  # 10 cells
    runner.run_study(study, {}, jobs=1, out_root=tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == [f"{i}/10" for i in range(1, 11)]
    assert all(line.startswith("faults: ") and "(0 failed)" in line for line in lines)
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_the_cli_writes_nothing_to_stdout_during_a_run(tmp_path):
    study = _study(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "stabkit.cli.main", "run", str(study), "--out", str(tmp_path), "--jobs", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert f"faults: {N_CELLS}/{N_CELLS} cells (0 failed)" in proc.stderr and "README.md" in proc.stderr


# ----------------------------------------------------------------------------- default job count, warm-up


def test_the_default_job_count_stays_inline_for_cheap_cells_and_pools_long_ones(tmp_path, monkeypatch):
    study = _study(tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    inline = runner.run_study(study, {}, out_root=tmp_path / "cheap", progress=False)
    assert json.loads((tmp_path / "cheap" / "faults" / "run.json").read_text())["workers"] == 1
    # cells that take longer than the workers' start-up: the rest goes to a pool of 2 (run here inline,
    # recorded: test_runner checks that a real pool gives the inline table) ...
    monkeypatch.setattr(_workers, "WORKER_STARTUP_SECONDS", 0.0)
    pools = []

    def fake_pool(kind, units, jobs, on_done):
        pools.append((len(units), jobs))
        for (cell,) in units:
            on_done(cell, *_workers._execute(kind, cell))

    monkeypatch.setattr(_workers, "_run_pool", fake_pool)
    pooled = runner.run_study(study, {}, out_root=tmp_path / "long", progress=False)
    assert json.loads((tmp_path / "long" / "faults" / "run.json").read_text())["workers"] == 2
    assert pools == [(N_CELLS - 1, 2)]  # one cell inline, measured far longer than the start-up: the rest pooled
    pd.testing.assert_frame_equal(_stable(pooled), _stable(inline))
    # ... unless other work keeps the cores busy (load 3 on 2 cores: one free core at most)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    runner.run_study(study, {}, out_root=tmp_path / "busy", progress=False)
    assert json.loads((tmp_path / "busy" / "faults" / "run.json").read_text())["workers"] == 1 and len(pools) == 1
    assert _workers._free_cores(2) == 1.0 and _workers._free_cores(16) == 14.0


def test_each_method_is_warmed_once_per_process_before_it_is_timed(monkeypatch):
    from stabkit import methods

    calls = []
    real = methods.Spec.evaluate

    def counted(spec, A, loss):
        calls.append((str(spec), A.dtype.name))
        return real(spec, A, loss)

    monkeypatch.setattr(methods.Spec, "evaluate", counted)  # every evaluation goes through a Spec
    from stabkit import compare as compare_module
    monkeypatch.setattr(compare_module, "_WARM", set())
    cell = gradient_accuracy.cells(gradient_accuracy.validate(
        {"methods": ["analytic", "torch"], "families": ["separated"], "d": [6], "dtypes": ["float32"],
         "losses": ["zca"]}))[0]
    rows, error, sources = _workers._execute("gradient_accuracy", cell)
    assert error is None and len(rows) == 2 and sources == _store.sources_hash()
    # warm-up calls (compare's, on a 3×3) first, then the timed calls of the cell itself
    assert calls == [("analytic", "float32"), ("torch", "float32")] * 2
    calls.clear()
    _workers._execute("gradient_accuracy", cell)
    assert calls == [("analytic", "float32"), ("torch", "float32")]  # warmed already: no second warm-up


def test_inline_cells_run_with_one_torch_and_one_blas_thread_like_the_workers_and_the_settings_are_restored(
        tmp_path, monkeypatch):
    """Every cell sees one torch thread and one thread in each BLAS/OpenMP library, whatever the caller
    set (here 2): numpy's OpenBLAS at 2 threads inline rounded float32 results at d ≥ 128 differently
    from the pool's single-threaded workers."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    real = gradient_accuracy.run_cell

    def spy(cell):
        seen.append((torch.get_num_threads(), {lib["num_threads"] for lib in threadpool_info()}))
        return real(cell)

    def threads():
        return torch.get_num_threads(), {lib["num_threads"] for lib in threadpool_info()}

    monkeypatch.setattr(gradient_accuracy, "run_cell", spy)
    before = torch.get_num_threads()
    with threadpool_limits(limits=2):
        torch.set_num_threads(2)
        outside = threads()                 # (2, {2}), or less where a library has fewer cores to use
        try:
            runner.run_study(_study(tmp_path), {}, jobs=1, out_root=tmp_path, progress=False)
            assert seen == [(1, {1})] * N_CELLS
            assert threads() == outside
        finally:
            torch.set_num_threads(before)


def test_a_process_runs_one_cell_at_a_time_even_from_several_threads(monkeypatch):
    """A Dask worker with several threads calls ``_execute`` concurrently; mpmath's and flint's
    precision is process-wide, so cells must not overlap: at most one is inside run_cell at a time."""
    import threading

    inside, most = [0], [0]
    guard = threading.Lock()

    class Kind:
        @staticmethod
        def run_cell(cell):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1
            return [{"cell": cell["i"]}]

    monkeypatch.setattr(_workers, "kind_module", lambda name: Kind)
    monkeypatch.setattr(_workers, "_warm_up", lambda *a: None)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(_workers._execute("fake", {"i": i}))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and sorted(r[0][0]["cell"] for r in results) == [0, 1, 2, 3]
