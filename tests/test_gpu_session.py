"""studies/gpu-session.sh's survival phase, end to end on a CPU: the script that a short GPU window runs
once, on a copy of the checkout without .git. Real (tiny) training runs of a survival study; the plan
is given (RUN_S) or read from a bench file, so what the script starts does not depend on this
machine's speed. Most sessions run one run at a time (JOBS=1: in the runner's process, no worker to
start); the one killed mid-window runs a wave of two in worker processes, as on the GPU."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import write_tiny_batches

REPO = Path(__file__).resolve().parents[1]
STUDY = "zca-cifar10-tiny-survival"  # the script saves reports/zca-cifar10*/ as its state

pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")), reason="needs bash and coreutils' timeout")


def _checkout(tmp_path, tiny_batches, seeds, epochs=2.0, cells=(("analytic", 4), ("taylor", 4))):
    """A copy of the package and the script, and a survival study of the `cells` (2 by default) × `seeds` tiny runs."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "stabkit", root / "stabkit", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "studies").mkdir()
    shutil.copy(REPO / "studies" / "gpu-session.sh", root / "studies")
    (root / "studies" / f"{STUDY}.toml").write_text(f'''[study]
name = "{STUDY}"
kind = "zca_cifar10_survival"
[grid]
cells = {json.dumps([list(c) for c in cells])}
seeds = {seeds}
seed_block = {seeds}
epochs = {epochs}
limit_images = 64
limit_test = 16
batch_size = 32
width = 0.125
landmarks = [1.0]
fast = true
eval_every = 1
data = "{tiny_batches}"
device = "cpu"
''')
    return root


def _env(root, **env):
    env = {**os.environ, "PYTHON": sys.executable, "STABKIT_GIT_COMMIT": "0" * 40, "OMP_NUM_THREADS": "1",
           "STABKIT_DATA_CACHE": str(root / "data-cache"), "SURVIVAL_STUDY": f"studies/{STUDY}.toml", "JOBS": "1", **env}
    # the script decodes $STABKIT_CIFAR10 once before any run: the study's own data
    env["STABKIT_CIFAR10"] = next(line.split('"')[1] for line in (root / "studies" / f"{STUDY}.toml").read_text().splitlines()
                                  if line.startswith("data ="))
    return env


def _session(root, out, seconds, **env):
    done = subprocess.run(["bash", "studies/gpu-session.sh", str(out), str(seconds), "survival"], cwd=root, env=_env(root, **env),
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def _cells(root, name=STUDY):
    return [json.loads(p.read_text()) for p in sorted((root / "reports" / name / "cells").glob("*.json"))]


def _saved_cells(state):
    with tarfile.open(state) as tar:
        return [n for n in tar.getnames() if n.startswith(f"reports/{STUDY}/cells/") and n.endswith(".json")]


@pytest.fixture(scope="module")
def earlier_window(tmp_path_factory):
    """The runs of an earlier window (1 seed of each of the 2 cells), made here in process (the copy's
    code is this code): its checkout and its saved state."""
    from stabkit.studies import runner

    tmp = tmp_path_factory.mktemp("earlier")
    root = _checkout(tmp, write_tiny_batches(tmp), seeds=1)
    runner.run_study(root / "studies" / f"{STUDY}.toml", {}, jobs=1, out_root=root / "reports", progress=False)
    state = tmp / "state.tar.gz"
    with tarfile.open(state, "w:gz") as tar:
        tar.add(root / "reports" / STUDY, arcname=f"reports/{STUDY}")
    assert len(_cells(root)) == 2 and len(_saved_cells(state)) == 2
    return root, state


def test_survival_chunks_until_the_grid_is_done_and_saves_its_state(tmp_path, tiny_batches):
    root = _checkout(tmp_path, tiny_batches, seeds=1)
    # a run is planned at 1 000 s: of the 1 400 s, a wave's runs have 1 400 − 30 (margin) − 60 (their deadline)
    # = 1 310 s, one wave of 1 run, and so do the ≈ 1 300 s left after it
    rc, log = _session(root, tmp_path / "out", 1400, RUN_S="1000")
    assert rc == 0, log
    assert log.count("survival chunk of 1 run(s) exited with 0") == log.count("survival chunk of") == 2, log
    assert f"every cell of studies/{STUDY}.toml is finished" in log, log
    rows = [c["rows"][0] for c in _cells(root)]
    assert sorted((r["spec"], r["seed"]) for r in rows) == [("analytic", 1000), ("taylor", 1000)]
    assert all(r["steps_done"] == r["steps_total"] == 4 for r in rows), rows  # ⌈64/32⌉ × 2 epochs, whole runs
    meta = json.loads((root / "reports" / STUDY / "run.json").read_text())
    assert (meta["cells_reused"], meta["cells_computed"]) == (1, 1)
    assert len(_saved_cells(tmp_path / "out" / "state.tar.gz")) == 2


def test_stack_auto_lets_the_bench_choose_and_stacks_a_cell_s_seeds_in_one_network(tmp_path, tiny_batches):
    """STACK=auto: the bench's stacked row of 2 runs beats one process 10×, so each wave is one process
    training a cell's 2 seeds stacked (`--stack 2`, and `--set seed_block=2` over the study's 1),
    planned from that row: (4 steps + evaluations) / 50 steps/s + 60 s, × 1.2 ≈ 72 s per run; one wave
    per chunk. Both ways finish every run of the window's plan only if they fit: here both do (2 runs
    per 72 s stacked, 1 per ≈ 73 s alone), so the window holds more runs stacked and the stack wins."""
    root = _checkout(tmp_path, tiny_batches, seeds=2)
    toml = root / "studies" / f"{STUDY}.toml"
    toml.write_text(toml.read_text().replace("seed_block = 2", "seed_block = 1"))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 1, "processes": 1, "steps_per_s": 10.0},
                                          {"path": "fast, stacked", "runs": 2, "processes": 1, "steps_per_s": 100.0}]}))
    rc, log = _session(root, tmp_path / "out", 1400, STACK="auto", BENCH_JSON=str(bench))
    assert rc == 0, log
    assert "STACK=auto → 2" in log and "at 2 runs stacked in one process" in log, log
    # the plan holds many waves (2 × ⌊(≈1310 s)/72 s⌋ runs), but stacked chunks are one wave each
    assert "hold 18 wave(s) of 2" in log or "hold 17 wave(s) of 2" in log, log
    assert log.count("survival chunk of 2 run(s) exited with 0") == log.count("survival chunk of") == 2, log
    rows = [c["rows"][0] for c in _cells(root)]
    assert sorted((r["spec"], r["seed"], r["stacked_runs"]) for r in rows) == [
        ("analytic", 1000, 2), ("analytic", 1001, 2), ("taylor", 1000, 2), ("taylor", 1001, 2)]
    assert all(r["steps_done"] == r["steps_total"] == 4 for r in rows), rows
    assert json.loads((root / "reports" / STUDY / "run.json").read_text())["stack"] == 2


def test_a_wave_s_runs_come_back_when_a_later_wave_is_killed(tmp_path, tiny_batches):
    # the device kills a command at its limit with SIGKILL, which skips the EXIT trap: the state
    # must already hold every finished wave when the next one starts. A wave of 2 runs in 2 worker
    # processes, as on the GPU (1 310 s hold one wave of 2 at 1 000 s per run; 4 cells)
    root = _checkout(tmp_path, tiny_batches, seeds=2)
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", "studies/gpu-session.sh", str(out), "1400", "survival"], cwd=root,
                            env=_env(root, RUN_S="1000", JOBS="2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    plans, log = 0, []
    try:
        for line in proc.stdout:  # the second plan is printed when the first wave is done and saved
            log.append(line)
            plans += line.startswith("session plan:")
            if plans == 2:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert plans == 2, "".join(log)
    assert "survival chunk of 2 run(s) exited with 0" in "".join(log), "".join(log)
    assert len(_saved_cells(out / "state.tar.gz")) == 2, "".join(log)


def test_no_wave_starts_when_its_runs_deadline_has_already_passed(tmp_path, tiny_batches):
    """Planned at 1 s per run, 80 s leave 50 s for a wave, but its runs would get a deadline 60 s before
    the wave's end, already past: nothing is planned, no wave starts and no run is spent (each would be
    censored at its first epoch; the loop's own stop at an epoch's end is tested in test_fast_path)."""
    root = _checkout(tmp_path, tiny_batches, seeds=1)
    rc, log = _session(root, tmp_path / "out", 80, RUN_S="1")
    assert rc == 0 and "too little for a wave's runs to start" in log and "survival chunk of" not in log, log
    assert not (root / "reports" / STUDY / "cells").exists() or not _cells(root)


def test_nothing_starts_when_no_whole_wave_fits_and_a_resumed_state_is_kept(tmp_path, tiny_batches, earlier_window):
    # a fresh copy of the checkout, the state of the earlier window, a larger grid, too little time
    root = _checkout(tmp_path, tiny_batches, seeds=2)
    rc, log = _session(root, tmp_path / "out", 500, RUN_S="1000", RESUME_FROM=str(earlier_window[1]))
    assert rc == 0, log
    assert "no whole wave of 1 runs fits" in log and "survival chunk" not in log, log
    assert len(_cells(root)) == 2  # the two runs of the earlier window, nothing new, nothing half-done
    assert len(_saved_cells(tmp_path / "out" / "state.tar.gz")) == 2


def test_a_later_window_resumes_from_cells_in_the_checkout_that_other_code_computed(tmp_path, earlier_window):
    """The survival study's cells are committed: the next window's checkout holds them, computed by an
    earlier commit. They are kept (a run cannot be redone cheaply), only the missing seeds run, and the
    loop stops when every cell has a record."""
    root = tmp_path / "copy"
    shutil.copytree(earlier_window[0], root)
    first = {c["cell_id"]: c["code"]["sources"] for c in _cells(root)}
    with open(root / "stabkit" / "__init__.py", "a") as f:
        f.write("# a later commit\n")  # other code: another sources hash
    toml = root / "studies" / f"{STUDY}.toml"
    toml.write_text(toml.read_text().replace("seeds = 1\n", "seeds = 2\n"))
    rc, log = _session(root, tmp_path / "out2", 2200, RUN_S="1000")  # 2 200 − 90 s hold 2 waves of 1: one chunk of 2 runs
    assert rc == 0, log
    assert log.count("survival chunk of") == 1, log
    assert f"every cell of studies/{STUDY}.toml is finished" in log, log
    cells = {c["cell_id"]: c["code"]["sources"] for c in _cells(root)}
    assert len(cells) == 4 and all(cells[k] == v for k, v in first.items())  # the old runs kept as they were
    assert len(set(cells.values())) == 2
    meta = json.loads((root / "reports" / STUDY / "run.json").read_text())
    assert (meta["cells_computed"], meta["cells_reused_from_other_code"]) == (2, 2)


def test_fit_horizon_falls_back_and_the_next_waves_plan_for_the_fallback_horizon(tmp_path, tiny_batches):
    """When the study's horizon does not fit one wave, FIT_HORIZON runs the longest that does; once the
    script fell back to 1 epoch, its later waves are planned at 1 epoch too (not at the study's 2, which
    never fit): the time the first wave left runs the other cell's wave."""
    root = _checkout(tmp_path, tiny_batches, seeds=1)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 1, "processes": 1, "steps_per_s": 0.01}]}))
    # 0.01 steps/s per run; a paper-preset epoch of 64 images is ⌈64/32⌉ = 2 steps, each test pass
    # 16/32/3 step-equivalents, + 60 s start: 2 epochs ((4 + 3/6)/0.01 + 60) × 1.2 = 612 s do not fit
    # in 600 − 30 − 60 s, 1 epoch ((2 + 2/6)/0.01 + 60) × 1.2 = 352 s does; the first wave's real run takes
    # seconds, so at 1 epoch the second wave fits too (at the study's 2 epochs it would not)
    rc, log = _session(root, tmp_path / "out", 600, BENCH_JSON=str(bench), FIT_HORIZON="1")
    assert rc == 0, log
    assert log.count("running 1 epoch(s) instead") == 1 and "survival chunk of 1 run(s) exited with 0" in log, log
    assert log.count("survival chunk of") >= 2, log
    rows = [c["rows"][0] for c in _cells(root)]
    assert len(rows) == 2 and all(r["steps_done"] == r["steps_total"] == 2 for r in rows), rows


def test_extend_epochs_in_survival_set_is_no_horizon(tmp_path, tiny_batches):
    """SURVIVAL_SET="--set extend_epochs=5" (a longer horizon for listed survivors, none listed here) sets
    no horizon: the waves are planned at the study's 2 epochs, which do not fit (612 s, as above), and
    FIT_HORIZON falls back to 1 epoch, which does. Read as a horizon of 5 epochs it planned no wave,
    and as a pinned horizon it kept FIT_HORIZON from falling back: the window ran nothing. Both show at
    the first wave, so the study has one cell (one chunk; the later waves' plan is the test above's)."""
    root = _checkout(tmp_path, tiny_batches, seeds=1, cells=[("analytic", 4)])
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 1, "processes": 1, "steps_per_s": 0.01}]}))
    rc, log = _session(root, tmp_path / "out", 600, BENCH_JSON=str(bench), FIT_HORIZON="1",
                       SURVIVAL_SET="--set extend_epochs=5")
    assert rc == 0, log
    assert "running 1 epoch(s) instead" in log and "survival chunk of 1 run(s) exited with 0" in log, log
    rows = [c["rows"][0] for c in _cells(root)]
    assert len(rows) == 1 and all(r["steps_done"] == r["steps_total"] == 2 for r in rows), rows


def test_a_copy_without_git_must_name_its_commit(tmp_path, tiny_batches):
    root = _checkout(tmp_path, tiny_batches, seeds=1)
    rc, log = _session(root, tmp_path / "out", 100, RUN_S="1000", STABKIT_GIT_COMMIT="")
    assert rc == 2 and "export STABKIT_GIT_COMMIT" in log, log
    assert not (root / "reports").exists()  # nothing ran


@pytest.mark.parametrize("seconds", ["abc", "-5", "0", "1.5"])
def test_seconds_that_is_not_a_positive_integer_is_refused_before_anything(tmp_path, seconds):
    """Before, a word ended in bash's "unbound variable" (exit 1) and a count ≤ 0 ran no phase and exited 0."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "STABKIT_GIT_COMMIT": "0" * 40}
    done = subprocess.run(["bash", str(REPO / "studies" / "gpu-session.sh"), str(out), seconds, "bench"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"gpu-session: SECONDS must be a positive whole number of seconds, got '{seconds}'"]
    assert not out.exists()  # nothing ran, not even the OUTDIR was made
