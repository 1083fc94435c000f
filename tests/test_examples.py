"""Each script in examples/ runs on a CPU (subprocess, as a newcomer would run it) and prints what it promises."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _tables(out):
    """{case: {method: angle_deg}} from pick_backward's tables."""
    tables, case = {}, None
    for line in out.splitlines():
        if ": eigenvalues of" in line:
            case = line.split(":")[0]
            tables[case] = {}
        m = re.match(r"^  (\S+)\s+(\S+)\s+(\S+)$", line)
        if m and case and m.group(1) != "method":
            tables[case][m.group(1)] = float(m.group(2))
    return tables


def test_pick_backward_scores_every_rule_and_builds_the_layer():
    out = _run("pick_backward.py")
    tables = _tables(out)
    assert set(tables) == {"three nearly dead channels", "three dead channels (eigenvalue ε three times)"}
    near = tables["three nearly dead channels"]
    assert {"analytic", "taylor", "clip", "pade"} <= set(near)
    # the README's Daleckii–Krein point: near-equal eigenvalues, yet the analytic sqrt gradient is accurate
    assert near["analytic"] < 0.01
    dead = tables["three dead channels (eigenvalue ε three times)"]
    best = re.findall(r"best on this matrix: (\S+)", out)[-1]
    assert dead[best] == min(v for v in dead.values() if math.isfinite(v))
    assert f"method={best!r}) on the dead-channel map: gradient finite = True" in out


def test_zca_whitening_whitens_and_trains():
    out = _run("zca_whitening.py")
    before = [float(v) for v in re.search(r"before: \[(.*)\]", out).group(1).replace("'", "").split(",")]
    after = [float(v) for v in re.search(r"after:  \[(.*)\]", out).group(1).replace("'", "").split(",")]
    assert min(before) > 1.0 and max(after) < 1e-3  # ε = 1e-4 leaves cov = Σ(Σ + εI)^-1 ≈ I − ε Σ^-1
    losses = [float(v) for v in re.findall(r"loss (\S+)", out)]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert "eval mode" in out


def test_monitor_training_runs_without_stabkit():
    out = _run("monitor_training.py", "--steps", "3")
    losses = [float(v) for v in re.findall(r"^step \d+ loss (\S+)$", out, flags=re.M)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert "stabkit" not in (ROOT / "examples" / "monitor_training.py").read_text().split('"""')[2]  # the code never imports it
