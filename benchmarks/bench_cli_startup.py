"""Start-up time of the ``stabkit`` command line against bare Python, in one run.

    python benchmarks/bench_cli_startup.py [--repeat 7]

Times, as fresh processes, ``python -c pass`` (the baseline) and ``python -m stabkit --help`` plus
every subcommand's ``--help``, interleaved round by round so machine load hits all alike; prints the
median and minimum wall seconds of each, the median CPU seconds (user + sys of the child: what the
command costs, much less sensitive to other load on a shared machine than wall time) and the ratio
of medians to the baseline (issue 16's target: every ``--help`` under 0.5 s). Also lists heavy modules (torch, pandas, matplotlib, scipy, mpmath…)
that ``import stabkit.cli.main`` pulls in — none should be, except what the help texts need.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pandas", "matplotlib", "scipy", "mpmath", "flint", "pyarrow", "PIL", "numpy")


def _run(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    py = sys.executable
    commands = {"python -c pass": [py, "-c", "pass"], "stabkit --help": [py, "-m", "stabkit", "--help"]}
    sys.path.insert(0, str(REPO))
    from typer.main import get_command

    from stabkit.cli.main import app

    for name in get_command(app).commands:
        commands[f"stabkit {name} --help"] = [py, "-m", "stabkit", name, "--help"]
    times = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, argv in commands.items():
            wall, used = _run(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    base = statistics.median(times["python -c pass"])
    base_cpu = statistics.median(cpu["python -c pass"])
    print(f"{args.repeat} rounds, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")
    print("| command | median wall s | min wall s | median CPU s | wall / bare python | CPU / bare python |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        median, median_cpu = statistics.median(values), statistics.median(cpu[name])
        print(f"| `{name}` | {median:.3f} | {min(values):.3f} | {median_cpu:.3f} | {median / base:.1f}× | {median_cpu / base_cpu:.1f}× |")
    worst = max(statistics.median(v) for k, v in times.items() if k != "python -c pass")
    probe = subprocess.run([py, "-c", "import sys, stabkit.cli.main; print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)],
                           cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()
    print(f"slowest --help: {worst:.3f} s (target < 0.5 s); heavy modules imported by `import stabkit.cli.main`: {', '.join(probe) or 'none'}")


if __name__ == "__main__":
    main()
