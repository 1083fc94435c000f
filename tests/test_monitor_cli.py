"""`stabkit watch -- python examples/monitor_training.py` writes a live log (kept when the run is
killed) and `stabkit monitor report` turns it into Markdown + PNG."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stabkit.cli.main import app
from stabkit.monitor.log import read_log

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "monitor_training.py"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _watch(log, *script_args, **popen):
    cmd = [sys.executable, "-m", "stabkit.cli.main", "watch", "--log", str(log), "--", sys.executable, str(EXAMPLE), *script_args]
    return cmd


def test_watch_logs_an_unmodified_script_and_report_reads_it(tmp_path):
    log = tmp_path / "watch"
    cmd = _watch(log, "--steps", "4")
    cmd.insert(cmd.index("--"), "--tensorboard")
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("step")] == ["0", "1", "2", "3"]
    assert sorted(os.listdir(log)) == ["eig-rank0.csv", "tensorboard"]
    df = read_log(log / "eig-rank0.csv")
    # the script does `from torch.linalg import eigh` at import: still caught, once per step, steps = optimizer steps
    assert df["step"].tolist() == [0, 1, 2, 3]
    assert df["site"].str.endswith("monitor_training.py:37").all() and (df["fn"] == "eigh").all()
    assert (df["batch"] == 64).all() and (df["n"] == 6).all() and (df["dtype"] == "float32").all()
    assert (df["grad_norm"] > 0).all() and not df["nonfinite"].any()
    assert "next: stabkit monitor report" in done.stderr

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log / "tensorboard" / "eig-rank0"))
    events.Reload()
    (tag,) = [t for t in events.Tags()["scalars"] if t.endswith("/max_K")]
    assert "monitor_training.py:37" in tag
    assert [e.step for e in events.Scalars(tag)] == [0, 1, 2, 3]
    assert [e.value for e in events.Scalars(tag)] == pytest.approx(df["max_K"].tolist(), rel=1e-6)

    report = CliRunner().invoke(app, ["monitor", "report", str(log)])
    assert report.exit_code == 0, report.output
    md = (log / "report.md").read_text()
    assert report.output.strip() == str(log / "report.md")
    assert "monitor_training.py:37" in md and "![timelines](site-01.png)" in md
    assert (log / "site-01.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"| {len(df)} |" in md  # the calls column


def test_killing_the_watched_run_keeps_every_finished_step(tmp_path):
    log = tmp_path / "watch"
    proc = subprocess.Popen(_watch(log, "--steps", "1000", "--sleep", "0.3"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    printed = []
    try:
        deadline = time.monotonic() + 240
        while len(printed) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("step"):
                printed.append(int(line.split()[1]))  # printed after opt.step(): the step is finished
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of `stabkit watch` and the script
        proc.wait(30)
    assert printed == [0, 1, 2, 3]
    df = read_log(log / "eig-rank0.csv")
    steps = sorted(set(df["step"]))
    assert steps[: len(printed)] == printed  # every finished step is in the log …
    assert len(steps) <= len(printed) + 1  # … and at most the step running at the kill follows


def test_watch_returns_the_commands_exit_code_and_keeps_another_sitecustomize(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    env = _env()
    env["PYTHONPATH"] += os.pathsep + str(other)
    probe = ("import os, sys, torch; print(os.environ.get('OTHER_SITECUSTOMIZE'), hasattr(torch.linalg.eigh, '__wrapped__'), "
             "*sys.argv[1:]); sys.exit(3)")
    done = subprocess.run([sys.executable, "-m", "stabkit.cli.main", "watch", "--log", str(tmp_path / "w"), "--", sys.executable, "-c", probe,
                           "-E", "-IS"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3
    # the user's own sitecustomize ran, torch was patched at start-up, and -E -IS after -c are the script's own arguments
    assert done.stdout.split() == ["ran", "True", "-E", "-IS"]
    assert "no eigh/eigvalsh/svd call was logged" in done.stderr


SPAWNS = """
import multiprocessing, torch

def child():
    torch.linalg.eigh(torch.eye(3) * 2)

if __name__ == "__main__":
    torch.linalg.eigh(torch.eye(2))
    p = multiprocessing.get_context("spawn").Process(target=child)
    p.start(); p.join()
    torch.linalg.eigh(torch.eye(4))
"""


def test_a_spawned_child_writes_its_own_log_not_its_parents(tmp_path):
    """A spawned child (torch.multiprocessing.spawn, spawn DataLoader workers) runs sitecustomize before
    multiprocessing knows it is a child: it used to take eig-rank0.csv and truncate the parent's rows."""
    script = tmp_path / "spawns.py"
    script.write_text(SPAWNS)
    log = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", "stabkit.cli.main", "watch", "--log", str(log), "--", sys.executable, str(script)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_log(log / "eig-rank0.csv")["n"].tolist() == [2, 4]  # the parent's rows, intact
    (child,) = [p for p in log.iterdir() if p.name.startswith("eig-rank0-pid")]
    assert read_log(child)["n"].tolist() == [3]


@pytest.mark.parametrize("args, message", [
    ([], "no command to watch"),
    (["--every", "0", "--", "python"], "--every must be ≥ 1"),
    (["--swap-backward", "nosuch", "--", "python"], "nosuch"),
    (["--swap-backward", "", "--", "python"], "unknown method ''"),  # an empty method was silently no swap
    (["--bound", "", "--", "python"], "unknown method ''"),
    (["--", "no-such-program-xyz"], "command not found: no-such-program-xyz"),
    (["--bogus", "--", "true"], "no such option: --bogus"),  # was "command not found: --bogus"
])
def test_watch_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["watch", "--log", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    out = result.output.strip()
    assert message in out and out.startswith("error:") and len(out.splitlines()) == 1 and "Traceback" not in out


def test_watch_a_log_folder_under_a_file_is_one_line_naming_log(tmp_path):
    """--log below a file (a typo'd path) made mkdir raise NotADirectoryError: a traceback and exit 1,
    before the command ever ran."""
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(app, ["watch", "--log", str(tmp_path / "afile" / "w"), "--", "true"])
    _one_error_line(result, f"--log {tmp_path / 'afile' / 'w'}", "it or a folder above it is a file")


def test_watch_a_log_folder_that_cannot_be_made_is_one_line_naming_log(tmp_path, monkeypatch):
    """Any other OSError of mkdir (here no permission) was Python's own text alone, "[Errno 13] …",
    not naming --log."""
    import pathlib

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    result = CliRunner().invoke(app, ["watch", "--log", str(tmp_path / "w"), "--", "true"])
    _one_error_line(result, f"--log {tmp_path / 'w'}: cannot create the folder: Permission denied")


@pytest.mark.parametrize("python_args, named", [(["-E"], "drop -E"), (["-bIE"], "drop -I and -E"),
                                                (["-W", "ignore", "-X", "dev", "-S", "-c", "pass"], "drop -S")])
def test_watch_refuses_a_python_whose_options_skip_the_monitor(tmp_path, python_args, named):
    """-E and -I ignore PYTHONPATH, -S skips site, through which the monitor starts: such a run used
    to go ahead and leave an empty log, said only in a note at its end."""
    result = CliRunner().invoke(app, ["watch", "--log", str(tmp_path / "w"), "--", sys.executable, *python_args, "train.py"])
    _one_error_line(result, "would run without the monitor", named)
    assert not (tmp_path / "w").exists()


def test_only_pythons_own_options_count_as_skipping_the_monitor():
    from stabkit.cli.watch import monitor_skipping_options as skipping

    assert skipping(["python3.11", "-E", "train.py"]) == ["-E"] and skipping(["/usr/bin/python3", "-Ec", "1"]) == ["-E"]
    for command in (["python", "train.py", "-E"], ["python", "-m", "pkg", "-S"], ["python", "-c", "1", "-I"],
                    ["python", "-W", "-E", "x.py"], ["python", "--", "-E"], ["bash", "-c", "python -E x.py"]):
        assert skipping(command) == [], command


def test_report_on_a_folder_without_logs_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["monitor", "report", str(tmp_path)])
    assert result.exit_code == 2 and "no monitor log" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["monitor", "report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_report_on_a_file_says_it_is_a_file_not_a_missing_folder(tmp_path):
    log = tmp_path / "eig-rank0.csv"
    log.write_text("")
    result = CliRunner().invoke(app, ["monitor", "report", str(log)])
    _one_error_line(result, f"{log} is a file, not a folder", f"the folder of monitor logs (e.g. {tmp_path})")
    assert "no such folder" not in result.output



def _one_error_line(result, *expected):
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert out.startswith("error:") and len(out.splitlines()) == 1 and "Traceback" not in out, out
    for text in expected:
        assert text in out, out


def _log_with_one_call(folder):
    from stabkit.monitor.log import frame

    folder.mkdir()
    frame([{"step": 0, "site": "net.py:1", "fn": "eigh", "backward": "analytic", "batch": 1, "n": 2, "dtype": "float64",
            "min_gap": 1.0, "min_rel_gap": 0.5, "max_K": 1.0, "lam_min": 1.0, "grad_norm": 1.0, "grad_in_norm": 1.0,
            "input_nonfinite": False, "nonfinite": False, "error": ""}]).to_csv(folder / "eig-rank0.csv", index=False)
    return folder


def test_report_into_an_existing_file_is_one_line_and_exit_2(tmp_path):
    log = _log_with_one_call(tmp_path / "log")
    (tmp_path / "afile").write_text("")
    _one_error_line(CliRunner().invoke(app, ["monitor", "report", str(log), "--out", str(tmp_path / "afile")]),
                    str(tmp_path / "afile"))


def test_report_on_a_csv_that_is_not_a_monitor_log_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "eig-rank0.csv").write_text("a,b\n1,2\nx")
    _one_error_line(CliRunner().invoke(app, ["monitor", "report", str(tmp_path)]),
                    f"{tmp_path / 'eig-rank0.csv'} is not a stabkit monitor log (missing columns step, site, fn")
    assert not (tmp_path / "report.md").exists()


def test_report_skips_an_empty_log_with_a_note_and_fails_clearly_when_all_are_empty(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    (log / "eig-rank1.csv").write_text("")
    _one_error_line(CliRunner().invoke(app, ["monitor", "report", str(log)]), "hold no calls yet", "eig-rank1.csv")
    _log_with_one_call(tmp_path / "full")
    (tmp_path / "full" / "eig-rank1.csv").write_text("")
    result = CliRunner().invoke(app, ["monitor", "report", str(tmp_path / "full")])
    assert result.exit_code == 0, result.output
    assert "note: skipped empty monitor log(s)" in result.stderr and "eig-rank1.csv" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "full" / "report.md")

def test_one_log_per_rank_when_several_processes_are_watched(tmp_path):
    """As under torchrun: every process has its RANK; each writes its own file."""
    log = tmp_path / "watch"
    script = (f"RANK=0 {sys.executable} {EXAMPLE} --steps 2 & RANK=1 {sys.executable} {EXAMPLE} --steps 3; wait")
    done = subprocess.run([sys.executable, "-m", "stabkit.cli.main", "watch", "--log", str(log), "--", "bash", "-c", script], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(log)) == ["eig-rank0.csv", "eig-rank1.csv"]
    assert read_log(log / "eig-rank0.csv")["step"].tolist() == [0, 1]
    assert read_log(log / "eig-rank1.csv")["step"].tolist() == [0, 1, 2]


def test_sigterm_to_watch_reaches_the_script_and_pending_rows_are_flushed(tmp_path):
    log = tmp_path / "watch"
    cmd = [sys.executable, "-m", "stabkit.cli.main", "watch", "--every", "1000", "--log", str(log), "--", sys.executable, str(EXAMPLE),
           "--steps", "1000", "--sleep", "0.3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed = []
    try:
        deadline = time.monotonic() + 240
        while len(printed) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("step"):
                printed.append(int(line.split()[1]))
        proc.send_signal(signal.SIGTERM)  # to `stabkit watch` only: it forwards to the script
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert printed == [0, 1, 2] and code == 128 + signal.SIGTERM
    steps = sorted(set(read_log(log / "eig-rank0.csv")["step"]))
    assert steps[:3] == [0, 1, 2]  # nothing was flushed by --every 1000: the exit flushed them


def test_report_on_a_full_disk_is_one_line_and_exit_2(tmp_path, monkeypatch):
    """A PNG that cannot be written (disk full) was an OSError traceback, exit 1."""
    import errno

    from stabkit.monitor import report

    def full(g, title, path, first_bad):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "_plot", full)
    log = _log_with_one_call(tmp_path / "log")
    _one_error_line(CliRunner().invoke(app, ["monitor", "report", str(log)]),
                    f"cannot write {log / 'site-01.png'}: No space left on device", "the logs are kept")


@pytest.mark.parametrize("content, message", [
    (b"\0junk", "cannot run {path}: Exec format error"),  # was an OSError traceback
    (b"#!/no/such/interpreter\necho hi\n", "cannot run {path}: its #! interpreter /no/such/interpreter was not found"),
], ids=["not-executable-format", "missing-interpreter"])  # the latter said the script itself was missing
def test_watch_a_command_that_cannot_start_is_one_line_naming_why(tmp_path, content, message):
    path = tmp_path / "script"
    path.write_bytes(content)
    path.chmod(0o755)
    result = CliRunner().invoke(app, ["watch", "--log", str(tmp_path / "w"), "--", str(path)])
    _one_error_line(result, message.format(path=path))


@pytest.mark.parametrize("args, message", [
    (["watch", "--log", "", "--", "true"], "--log is empty"),
    (["monitor", "report", "{log}", "--out", " "], "--out is empty"),
], ids=["watch-log", "report-out"])
def test_an_empty_folder_option_is_refused_not_taken_as_the_current_folder(tmp_path, monkeypatch, args, message):
    """An empty --log/--out (an unset shell variable) was Path(''), the current folder: the logs or
    report.md and its PNGs went there, beside whatever it holds, as `run`/`report` refuse for their --out."""
    log = _log_with_one_call(tmp_path / "log")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _one_error_line(CliRunner().invoke(app, [a.format(log=log) for a in args]), message)
    assert not list(work.iterdir()) and sorted(p.name for p in log.iterdir()) == ["eig-rank0.csv"]


def test_a_python_without_torch_is_named_in_the_message(tmp_path):
    """`stabkit watch -- python train.py` with a `python` that lacks torch (a venv not activated, as
    the README's `.venv/bin/stabkit` allows) said only "monitoring not started (No module named
    'torch')" and then blamed -E/-I/-S; both lines now name the interpreters involved."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    other_python = tmp_path / "python-without-torch"
    other_python.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH{os.pathsep}{fake}" exec "{sys.executable}" "$@"\n')
    other_python.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "stabkit.cli.main", "watch", "--log", str(tmp_path / "w"), "--",
                           str(other_python), "-c", "print('ran')"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("stabkit watch:")]
    assert len(lines) == 2, done.stderr
    assert f"not started in this process, {sys.executable} (ModuleNotFoundError: No module named 'torch')" in lines[0]
    assert lines[1].startswith("stabkit watch: no eigh/eigvalsh/svd call was logged")
    assert f"its Python must import torch and stabkit, as {sys.executable} does" in lines[1]
