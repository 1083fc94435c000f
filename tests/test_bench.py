"""Benchmarks run and report every configuration (they are measured elsewhere: no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stabkit.cli.main import app
from stabkit import methods

REPO = Path(__file__).resolve().parents[1]


def test_stabkit_bench_reports_every_method_against_torch():
    result = CliRunner().invoke(app, ["bench", "--d", "3", "--batch", "2", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    rows = [line.split("|") for line in result.output.splitlines() if line.startswith("| 3 ")]
    assert sorted(r[5].strip() for r in rows) == sorted(methods.NAMES)
    assert all(float(r[6]) > 0 for r in rows)
    torch_row = next(r for r in rows if r[5].strip() == "torch")
    assert float(torch_row[7]) == 1.0  # the baseline of the ratios
    assert CliRunner().invoke(app, ["bench", "--dtype", "float16"]).exit_code == 2


def test_bench_train_step_table_and_concurrency():
    args = ["--device", "cpu", "--width", "0.125", "--batch", "2", "--dims", "4", "--methods", "taylor", "pi", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--concurrency", "2", "--seconds", "0.5", "--concurrency-config", "pi:4"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    labels = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert labels[:4] == ["configuration", "BatchNorm baseline", "ZCA taylor", "ZCA pi"]
    assert "monitor overhead (taylor, d=4)" in out
    cells = {(line.split("|")[1].strip(), line.split("|")[2].strip()): (float(line.split("|")[3]), float(line.split("|")[4]))
             for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")}
    # one process is measured even where --concurrency omits it: "× one process" divides by its rate,
    # not by the first K asked for (which made `--concurrency 2` read 1.00 for two processes)
    assert set(cells) == {(k, c) for k in ("1", "2") for c in ("BatchNorm baseline", "ZCA pi d=4")}
    for config in ("BatchNorm baseline", "ZCA pi d=4"):
        (one, r1), (two, r2) = cells["1", config], cells["2", config]
        assert one > 0 and two > 0 and r1 == 1.0
        assert r2 == pytest.approx(two / one, abs=0.01 + 0.06 * two / one)  # the table's 1-decimal rates


def test_the_fast_table_divides_by_todays_one_process_row_only(monkeypatch):
    """"× today" is today's path, one run in one process, of the same run; where that row failed there
    is no baseline (the first row measured is then another path)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_train_step

    rows = [{"path": p, "runs": n, "processes": k, "steps_per_s": rate}
            for p, n, k, rate in (("fast", 1, 1, 90.0), ("today", 2, 2, 70.0), ("today", 1, 1, 40.0))]
    assert bench_train_step.today_rate(rows) == 40.0
    assert bench_train_step.today_rate(rows[:2]) is None


def test_bench_fast_path_table_feeds_the_gpu_session_plan(tmp_path):
    """The first command of a GPU window (gpu-session.sh bench-fast) on a CPU: every row measured, the
    JSON written, and the plan of the survival phase (stabkit.train.session) reads it. A row that
    raises (here a compile mode torch does not know) is reported and skipped: the rows before it stay
    in the table and the JSON, and the exit code says a row failed."""
    from stabkit.train import session

    bench = tmp_path / "bench_fast.json"
    args = ["--device", "cpu", "--skip-methods", "--fast-path", "--fast-config", "paper:analytic:4", "--width", "0.125",
            "--batch", "8", "--threads", "1", "--concurrency", "1", "2", "--interleave", "2", "--stacked", "2",
            "--seconds", "0.3", "--compile", "no-such-mode", "--json", str(bench)]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "failed row: fast + compile no-such-mode" in run.stdout, run.stdout
    rows = json.loads(bench.read_text())["rows"]
    assert [(r["path"], r["runs"], r["processes"]) for r in rows] == [
        ("today", 1, 1), ("fast", 1, 1), ("today", 2, 2), ("fast", 2, 2), ("fast, interleaved", 2, 1), ("fast, stacked", 2, 1)]
    assert all(r["steps_per_s"] > 0 and r["config"]["d"] == 4 for r in rows)
    table = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| fast") or line.startswith("| today")]
    assert [float(r[4]) for r in table] == pytest.approx([r["steps_per_s"] for r in rows], abs=0.051)
    # the plan for two concurrent fast runs of 100 steps: the measured two-process rate, shared by two runs
    fast2 = rows[3]["steps_per_s"]
    assert session.bench_run_s(json.loads(bench.read_text()), 2, 100, 0, fast=True, overhead_s=0) == pytest.approx(
        100 / (fast2 / 2) * 1.2)


def test_a_failing_bench_worker_answers_and_frees_the_others():
    """A worker that fails before the common start breaks the barrier (the others stop waiting) and
    answers with its error, so the parent never waits for an answer that cannot come."""
    import multiprocessing

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_train_step

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    threads = torch.get_num_threads()  # the worker sets one thread for its process: this one's is restored
    try:
        bench_train_step._loop_worker({"method": "no-such-method", "device": "cpu"}, 0.1, barrier, results)
    finally:
        torch.set_num_threads(threads)
    assert barrier.broken
    answer = results.get(timeout=10)
    assert isinstance(answer, str) and "no-such-method" in answer, answer


def test_bench_interleaves_methods_after_a_warmup_and_reports_the_ratio_spread(monkeypatch):
    """Every round times every method once (rotated start), after one untimed call per method; the
    ratios are paired within a round, so min/median/max come from the per-round ratios."""
    from stabkit import bench

    calls = []
    # method m in round r (0 = warm-up) takes (1 + m) * (r + 1) "seconds": every per-round ratio of
    # method m to torch (m = 0) is 1 + m, although the absolute times grow 5× over the rounds
    def fake(spec, A, loss):
        name = str(spec)
        calls.append(name)
        order = ["torch", "taylor", "pi"]
        r = (len(calls) - 1) // len(order)
        return (1 + order.index(name)) * (r + 1) + (0.5 if (name == "pi" and r == 2) else 0.0)

    monkeypatch.setattr(bench, "backward_seconds", fake)
    table = bench.bench_methods(dims=(3,), batch=2, repeats=4, names=["taylor", "pi", "torch"])
    assert calls[:3] == ["torch", "taylor", "pi"]  # warm-up, not timed
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["torch", "taylor", "pi"], ["taylor", "pi", "torch"], ["pi", "torch", "taylor"],
                      ["torch", "taylor", "pi"]]
    row = {m: table[table.method == m].iloc[0] for m in ("torch", "taylor", "pi")}
    assert row["torch"].ratio_to_torch == row["torch"].ratio_min == row["torch"].ratio_max == 1.0
    assert row["taylor"].ratio_min == row["taylor"].ratio_max == 2.0
    # pi: ratios 3, 3 + 0.5/3 (round index 1 → fake round 2), 3, 3 → median 3, max 3 + 1/6
    assert row["pi"].ratio_min == 3.0 and row["pi"].ratio_to_torch == 3.0
    assert abs(row["pi"].ratio_max - (3 + 0.5 / 3)) < 1e-12
    # backward_ms: median over the timed rounds of (1 + m)(r + 1), r = 1..4 → (1 + m) · 3.5 s
    assert abs(row["taylor"].backward_ms - 2 * 3.5e3) < 1e-9
    assert CliRunner().invoke(app, ["bench", "--repeats", "0"]).exit_code == 2


def test_bench_reference_reports_seconds_digits_and_peak_memory_per_run():
    """One subprocess per run; --baseline times another revision's engine in the same run."""
    args = ["--d", "8", "--engines", "flint", "--baseline", "HEAD"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_reference.py"), *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = {line.split("|")[2].strip(): line.split("|") for line in run.stdout.splitlines() if line.startswith("| 8 ")}
    assert set(rows) == {"flint", "flint-baseline"}
    for r in rows.values():
        seconds, cpu, digits, peak_mb = (float(r[k]) for k in (3, 4, 5, 6))
        assert seconds > 0 and cpu > 0 and digits >= 30 and peak_mb > 10
    # same engine file twice: the same certified digits
    assert rows["flint"][5] == rows["flint-baseline"][5]
    assert rows["flint-baseline"][7].strip().endswith("×")
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_reference.py"), "--baseline", "/nonexistent.py"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a valid object name" in bad.stderr


def test_bench_shows_progress_on_stderr_per_size_and_at_the_end():
    """The default bench runs ~80 s: a line per matrix size on stderr (not a terminal), none on stdout."""
    result = CliRunner().invoke(app, ["bench", "--d", "3", "--d", "5", "--batch", "2", "--repeats", "2", "-m", "taylor"])
    assert result.exit_code == 0, result.output
    total = 2 * (2 + 1) * 2  # sizes × (repeats + warm-up) × (taylor + the torch baseline)
    lines = result.stderr.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["bench: d = 3", "bench: d = 5", "bench: d = 5"]
    assert lines[-1].startswith(f"bench: d = 5, {total}/{total} backward calls")
    assert "bench:" not in result.stdout


def test_bench_methods_reports_every_backward_call_to_progress():
    from stabkit.bench import bench_methods

    seen = []
    bench_methods([3, 4], batch=2, repeats=3, names=["taylor", "clip"], progress=lambda *a: seen.append(a))
    total = 2 * (3 + 1) * 3
    assert [done for _, done, _ in seen] == list(range(1, total + 1))
    assert {t for _, _, t in seen} == {total}
    assert [d for d, _, _ in seen] == [3] * (total // 2) + [4] * (total // 2)


def test_profile_train_step_reports_both_paths_and_their_top_operators(tmp_path):
    """The next GPU window's first question (where a step's GPU time goes), on a CPU: both paths and
    the stacked one profiled, one summary row each, operator tables that name the convolutions, the
    file written."""
    args = ["--device", "cpu", "--config", "paper:analytic:4", "--width", "0.125", "--batch", "8", "--steps", "2",
            "--warmup", "1", "--top", "4", "--stacked", "2", "--out", str(tmp_path)]
    # one OpenMP thread, as the other benches here (--threads 1): two threads beside a busy core ran 2-3x slower
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_train_step.py"), *args], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:8]]
            for line in run.stdout.splitlines() if line.startswith("| today") or line.startswith("| fast")}
    assert set(rows) == {"today", "fast", "fast, stacked 2"}
    assert [r[0] for r in rows.values()] == [1, 1, 2]  # runs per step
    assert all(r[1] > 0 and r[2:] == [0, 0, 0, 0] for r in rows.values())  # host ms; a CPU has no kernels or syncs
    tables = run.stdout.split("### ")[1:]
    assert [t.split(":")[0] for t in tables] == ["today", "fast", "fast, stacked 2"]
    assert all("conv" in t for t in tables)
    assert (tmp_path / "profile_train_step.md").read_text().strip() == run.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["--d", "4", "--d", "4", "-m", "analytic"], "error: matrix size 4 is given twice"),
    (["--d", "4", "-m", "taylor", "-m", "taylor:K=9"], "error: method taylor is given twice (as 'taylor' and 'taylor:K=9')"),
])
def test_a_size_or_a_method_given_twice_is_refused_before_any_timing(args, message):
    """Each was timed twice and listed twice in the table, as if two rows; now one line, exit 2."""
    result = CliRunner().invoke(app, ["bench", "--repeats", "1", "--batch", "2", *args])
    assert result.exit_code == 2 and result.stderr.splitlines() == [message], result.output
    assert result.stdout == ""


def test_mkl_code_paths_counts_rows_that_differ_in_any_column_but_seconds_with_nan_equal_to_nan():
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from mkl_code_paths import differing_rows
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    a = pd.DataFrame({"method": ["torch", "taylor", "pi"], "angle_deg": [1.0, np.nan, 3.0], "seconds": [0.1, 0.2, 0.3]})
    b = a.assign(seconds=[9.0, 9.0, 9.0])
    assert differing_rows(a, b).tolist() == [False, False, False]  # seconds ignored, NaN == NaN
    b.loc[0, "angle_deg"] = 1.0 + 2**-52
    b.loc[1, "angle_deg"] = 0.0
    assert differing_rows(a, b).tolist() == [True, True, False]
