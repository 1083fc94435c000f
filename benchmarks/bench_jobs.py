"""The default job count against ``--jobs 1`` on a small study, interleaved in one run.

    python benchmarks/bench_jobs.py [--study studies/quickstart.toml] [--repeat 3]

Each run is the whole command a user waits for (``python -m stabkit run STUDY --out TMP``, a fresh
output folder, so every cell is computed), wall seconds from start to exit. Prints the median per
setting and the ratio default / ``--jobs 1`` (issue #16: never above 1 on small studies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(study: str, extra: list[str], out: Path) -> float:
    cmd = [sys.executable, "-m", "stabkit", "run", study, "--out", str(out), "--no-progress", *extra]
    t = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr.strip()[-2000:]}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quickstart.toml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    settings = {"default jobs": [], "--jobs 1": ["--jobs", "1"]}
    times: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory(prefix="stabkit-bench-jobs-") as tmp:
        for i in range(args.repeat):
            for name, extra in settings.items():
                times[name].append(_run(args.study, extra, Path(tmp) / f"{i}-{len(times[name])}-{extra and 1 or 0}"))
    print(f"`stabkit run {args.study}` from scratch, {args.repeat}× per setting, interleaved; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| setting | median wall s | min wall s |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")
    ratio = statistics.median(times["default jobs"]) / statistics.median(times["--jobs 1"])
    print(f"default / --jobs 1: {ratio:.2f} (target ≤ 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
