"""Benchmarks run and report every configuration (they are measured elsewhere: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
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
            "--warmup", "0", "--threads", "1", "--concurrency", "1", "2", "--seconds", "0.5", "--concurrency-config", "pi:4"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    labels = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert labels[:4] == ["configuration", "BatchNorm baseline", "ZCA taylor", "ZCA pi"]
    assert "monitor overhead (taylor, d=4)" in out
    rates = {(line.split("|")[1].strip(), line.split("|")[2].strip()): float(line.split("|")[3])
             for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")}
    assert set(rates) == {(k, c) for k in ("1", "2") for c in ("BatchNorm baseline", "ZCA pi d=4")}
    assert all(rate > 0 for rate in rates.values())
