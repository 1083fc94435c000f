"""Provenance of a study's results (stabkit.studies.provenance): the commit rule, the machine, run.json
(RunRecord) and the report header."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stabkit.studies import provenance

REPO = Path(__file__).resolve().parents[1]


def test_commit_of_a_tree_copy_without_git_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)  # a copy of the tree, no .git (as sent to a GPU machine)
    monkeypatch.delenv("STABKIT_GIT_COMMIT", raising=False)
    assert provenance.git_commit() == "unknown (not a git checkout)"
    monkeypatch.setenv("STABKIT_GIT_COMMIT", "0123abc")
    assert provenance.git_commit() == "0123abc (copy without .git; from STABKIT_GIT_COMMIT)"
    monkeypatch.setattr(provenance, "REPO", REPO)  # the real checkout ignores the variable
    assert provenance.git_commit().split("-")[0] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _git(repo: Path, *args: str) -> str:
    """git in ``repo``, with an identity and no signing, so it runs on a fresh CI machine."""
    return subprocess.run(["git", "-c", "user.name=stabkit tests", "-c", "user.email=tests@stabkit.invalid",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_commit_is_dirty_when_the_checkout_differs_outside_the_runs_own_output(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # no user setting (e.g. status.showUntrackedFiles)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = tmp_path.resolve() / "repo"  # provenance.REPO is a resolved path
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    (repo / "reports").mkdir()
    (repo / "reports" / "published.csv").write_text("a\n1\n")  # committed results, as in this repository
    _git(repo, "add", "code.py", "reports/published.csv")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.setattr(provenance, "REPO", repo)
    out = repo / "reports"
    assert provenance.git_commit(out) == provenance.git_commit() == head

    # what the run itself writes under out_root (new files, a committed table rewritten) is not "dirty"
    (out / "tiny" / "cells").mkdir(parents=True)
    (out / "tiny" / "cells" / "abc.json").write_text("{}")
    (out / "published.csv").write_text("a\n2\n")
    assert provenance.git_commit(out) == head
    monkeypatch.chdir(repo)
    assert provenance.git_commit(Path("reports")) == head  # the CLI's default --out, relative to the cwd
    assert provenance.git_commit() == head + "-dirty"  # with no out_root, it counts
    assert provenance.git_commit(tmp_path / "elsewhere") == head + "-dirty"  # nor with an out_root outside the repo

    # any difference outside out_root is: an untracked file, or a tracked one modified
    (repo / "notes.txt").write_text("untracked")
    assert provenance.git_commit(out) == head + "-dirty"
    (repo / "notes.txt").unlink()
    assert provenance.git_commit(out) == head
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.git_commit(out) == head + "-dirty"
    _git(repo, "checkout", "-q", "code.py")
    assert provenance.git_commit(out) == head
    # out_root excludes only itself: a sibling sharing its name's prefix still counts
    (repo / "reports-old").mkdir()
    (repo / "reports-old" / "x").write_text("")
    assert provenance.git_commit(out) == head + "-dirty"
    # an out_root whose name reads as a pattern ("report*") is that folder, not every name it matches
    shutil.rmtree(repo / "reports-old")
    (repo / "report*").mkdir()
    assert provenance.git_commit(repo / "report*") == head + "-dirty"  # reports/ was written above


def _record(out_dir: Path, **extra) -> provenance.RunRecord:
    fields = dict(command="stabkit run x", commit="abc", sources="0123", jobs=1, scheduler=None, cells_total=3,
                  cells_reused=0)
    return provenance.RunRecord(out_dir, {"name": "x", "kind": "gradient_accuracy"}, {"d": [4]}, **{**fields, **extra})


def test_run_record_counts_cells_and_carries_the_time_of_earlier_runs(tmp_path):
    record = _record(tmp_path)
    record.write()
    record.cell_finished(failed=False)
    record.cell_finished(failed=True)
    record.write("interrupted")
    assert not (tmp_path / "run.json").exists()  # only a run that wrote its table has run.json
    first = json.loads((tmp_path / "run.unfinished.json").read_text())
    assert first["cells_computed"] == 2 and first["cells_failed"] == 1 and first["status"] == "interrupted"
    assert list(first)[:8] == ["study", "kind", "grid", "command", "git_commit", "sources_hash", "machine", "started_at"]
    again = _record(tmp_path, cells_reused=2, reused_other_code=2)  # a resumed run of the same grid
    again.finish()
    meta = json.loads((tmp_path / "run.json").read_text())
    assert not (tmp_path / "run.unfinished.json").exists()
    assert meta["status"] == "finished" and meta["finished_at"] and meta["cells_reused_from_other_code"] == 2
    assert meta["wall_seconds_previous_runs"] == first["wall_seconds_total"]
    assert meta["wall_seconds_total"] == pytest.approx(meta["wall_seconds"] + first["wall_seconds_total"], rel=1e-12)


def test_the_last_status_is_written_in_place_when_the_record_cannot_be_replaced(tmp_path, monkeypatch):
    record = _record(tmp_path)
    record.write()

    def full(status=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record, "write", full)
    record.write_last("stopped: disk full")
    assert json.loads((tmp_path / "run.unfinished.json").read_text())["status"] == "stopped"


def test_the_heartbeat_rewrites_the_record_while_the_run_lasts(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_HEARTBEAT_SECONDS", "0.01")
    record = _record(tmp_path)
    record.write()
    record.start_heartbeat()
    try:
        record.cell_finished(failed=False)  # counted in memory; only the heartbeat writes it
        deadline = time.monotonic() + 10
        while (time.monotonic() < deadline
               and json.loads((tmp_path / "run.unfinished.json").read_text())["cells_computed"] == 0):
            time.sleep(0.01)
    finally:
        record.stop_heartbeat()
    assert json.loads((tmp_path / "run.unfinished.json").read_text())["cells_computed"] == 1


META = {
    "kind": "gradient_accuracy", "study": {"description": "a demo"}, "command": "stabkit run x", "git_commit": "abc",
    "machine": {"cpu": "CPU", "cores": 2, "ram_gib": 4.0, "platform": "Linux", "python": "3.11", "numpy": "2",
                "torch": "2", "gpu": "none"},
    "jobs": 1, "wall_seconds": 3.0, "wall_seconds_total": 200.0, "wall_seconds_previous_runs": 197.0,
    "cells_total": 3, "cells_computed": 1, "cells_reused": 2, "cells_failed": 0, "finished_at": "today",
    "status": "finished", "grid": {"d": [4]},
}


def test_the_header_states_command_commit_machine_and_time():
    text = provenance.header("demo", META, report_commit="abc")
    assert text.startswith("# demo\n\nStudy kind `gradient_accuracy` — a demo.\n")
    assert "| git commit | `abc` |" in text and "| report text |" not in text
    assert "| execution | 1 local process(es) |" in text
    assert "| wall time | 3.3 min (this run 3.0 s, resumed after 3.3 min) |" in text
    assert '```json\n{"d": [4]}\n```' in text
    other = provenance.header("demo", {**META, "scheduler": "tcp://x:1", "status": "running"}, report_commit="def")
    assert "by `stabkit report demo` at commit `def` |" in other
    assert "| execution | Dask scheduler tcp://x:1 |" in other
    assert other.splitlines()[2] == "**The run that wrote these results did not finish; the table is partial.**"


def test_durations_read_in_seconds_then_minutes():
    assert provenance.duration(None) == "?" and provenance.duration("x") == "?"
    assert provenance.duration(3) == "3.0 s" and provenance.duration(119.94) == "119.9 s"
    assert provenance.duration(120) == "2.0 min"


def test_the_header_names_the_processes_the_cells_ran_in():
    """The default job count may keep a small study inline: the header says 1, not the cores."""
    assert provenance._execution({"jobs": 2, "workers": 1}) == "1 local process(es)"
    assert provenance._execution({"jobs": 2}) == "2 local process(es)"
    assert provenance._execution({"jobs": 2, "scheduler": "tcp://h:1"}) == "Dask scheduler tcp://h:1"


def test_the_finishing_command_drops_max_cells_and_the_header_counts_what_is_left():
    assert provenance.finishing_command("stabkit run s.toml --max-cells=3 '--set=d=[4, 8]'") == \
        "stabkit run s.toml '--set=d=[4, 8]'"
    assert provenance.finishing_command("stabkit run s.toml --max-cells 3 --jobs=1") == "stabkit run s.toml --jobs=1"
    meta = {"kind": "k", "status": "finished", "command": "stabkit run s.toml --max-cells=3",
            "cells_total": 12, "cells_reused": 2, "cells_computed": 3, "cells_failed": 1}
    text = provenance.header("s", meta)
    assert "7 of 12 cells are not computed yet; `stabkit run s.toml` computes them" in text
    assert "(3 computed in the last run, 2 reused, 1 failed, 7 not computed yet)" in text
    assert "not computed" not in provenance.header("s", {**meta, "cells_computed": 10})


def test_a_report_rebuilt_by_other_uncommitted_code_says_so():
    """On a dirty tree the commit reads the same ('<head>-dirty') for any uncommitted code: a report
    rebuilt after the report code was edited again gave no 'report text' row. The sources tell them apart."""
    meta = {**META, "git_commit": "abc-dirty", "sources_hash": "1111111111111111"}
    same = provenance.header("demo", meta, report_commit="abc-dirty", report_sources="1111111111111111")
    assert "| report text |" not in same
    other = provenance.header("demo", meta, report_commit="abc-dirty", report_sources="2222222222222222")
    assert ("| report text | rebuilt from these results by `stabkit report demo` at commit `abc-dirty` (stabkit "
            "sources `2222222222222222`, the run's `1111111111111111`) |") in other
    later = provenance.header("demo", meta, report_commit="def", report_sources="2222222222222222")
    assert "| report text | rebuilt from these results by `stabkit report demo` at commit `def` |" in later


def test_cells_written_before_machines_were_recorded_are_named_as_such_beside_the_runs_own():
    """Two cells of this run's commit and machine, one older cell whose record has neither (the survival
    study's committed cells): the header's origin row counts each group and says the older machine is
    not recorded, instead of reading 'on not recorded'."""
    machine = META["machine"]
    own = {"commit": "abc", "machine": provenance.machine_summary(machine)}
    records = [{"code": own}, {"code": own}, {"code": {}}]
    origin = provenance.cells_origin(records)
    assert origin == [{"commit": "abc", "machine": own["machine"], "cells": 2},
                      {"commit": "not recorded", "machine": "a machine not recorded (cells written before machines were)",
                       "cells": 1}]
    text = provenance.header("q", {**META, "cells_origin": origin})
    (row,) = [line for line in text.splitlines() if line.startswith("| cells computed at |")]
    assert row == (f"| cells computed at | 2 at commit `abc` on {own['machine']}; 1 at commit `not recorded` on "
                   "a machine not recorded (cells written before machines were) |")
