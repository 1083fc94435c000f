"""Start-up time of the ``stabkit`` command line against bare Python, in one run.

    python benchmarks/bench_cli_startup.py [--repeat 7]

Times, as fresh processes, ``python -c pass`` (the baseline) and ``python -m cli.main --help`` plus
every subcommand's ``--help``, interleaved round by round so machine load hits all alike; prints the
median and minimum wall seconds of each and the ratio of medians to the baseline (issue 16's target:
every ``--help`` under 0.5 s). Also lists heavy modules (torch, pandas, matplotlib, scipy, mpmath…)
that ``import cli.main`` pulls in — none should be, except what the help texts need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pandas", "matplotlib", "scipy", "mpmath", "flint", "pyarrow", "PIL", "numpy")


def _wall(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    py = sys.executable
    commands = {"python -c pass": [py, "-c", "pass"], "stabkit --help": [py, "-m", "cli.main", "--help"]}
    sys.path.insert(0, str(REPO))
    from typer.main import get_command

    from cli.main import app

    for name in get_command(app).commands:
        commands[f"stabkit {name} --help"] = [py, "-m", "cli.main", name, "--help"]
    times = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, argv in commands.items():
            times[name].append(_wall(argv, env))
    base = statistics.median(times["python -c pass"])
    print(f"{args.repeat} rounds, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print("| command | median s | min s | median / bare python |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {min(values):.3f} | {median / base:.1f}× |")
    worst = max(statistics.median(v) for k, v in times.items() if k != "python -c pass")
    probe = subprocess.run([py, "-c", "import sys, cli.main; print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)],
                           cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()
    print(f"slowest --help: {worst:.3f} s (target < 0.5 s); heavy modules imported by `import cli.main`: {', '.join(probe) or 'none'}")


if __name__ == "__main__":
    main()
