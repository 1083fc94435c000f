"""Time rebuilding a study's report (tables + figures) from its committed results, today's code
against a baseline git revision's, interleaved in one run.

    python benchmarks/bench_report.py [--study quickstart] [--baseline 530d6f1^] [--repeat 5]

Each build runs in a fresh subprocess on a scratch copy of ``reports/<study>/`` (nothing committed
is touched) and times ``build_report`` alone (matplotlib, pandas, pyarrow and the study kind are
imported before the clock in both codes: today's imports them lazily, the baseline at module import). The baseline is the whole
``stabkit`` package of revision REV (``git archive``), so its own report code draws from the same
results. Prints the median and min seconds per code and the ratio baseline / today.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot, pandas, pyarrow.parquet  # noqa: E401 — imported before the clock in both codes
import stabkit.studies.gradient_accuracy  # noqa: F401 — the quickstart's kind
try:
    from stabkit.studies.publish import build_report
except ImportError:  # before the runner split
    from stabkit.studies.runner import build_report
t = time.perf_counter(); c = time.process_time()
build_report(sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c}))
"""


def _export(rev: str, into: Path) -> Path:
    run = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "stabkit"], capture_output=True)
    if run.returncode != 0:
        raise SystemExit(f"--baseline {rev}: {run.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=run.stdout, check=True)
    return into


def _build(root: Path, study: str, scratch: Path) -> dict:
    out = scratch / "reports"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(REPO / "reports" / study, out / study)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(root), study, str(out)], capture_output=True, text=True,
                         env=env, cwd=scratch)
    if run.returncode != 0:
        raise SystemExit(f"build with {root} failed:\n{run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="quickstart")
    ap.add_argument("--baseline", default="530d6f1^", help="git revision to compare with (default: before the "
                    "quickstart's figures were simplified, issue #16)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stabkit-bench-report-") as tmp:
        tmp = Path(tmp)
        roots = {"today": REPO, f"baseline {args.baseline}": _export(args.baseline, tmp / "baseline")}
        times: dict[str, list[dict]] = {k: [] for k in roots}
        for _ in range(args.repeat):
            for name, root in roots.items():
                times[name].append(_build(root, args.study, tmp / "scratch"))
    load = os.getloadavg()[0]
    print(f"report of `{args.study}` rebuilt {args.repeat}× per code, interleaved, each in a fresh process; "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    print("| code | median s | min s | median CPU s |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rs in times.items():
        med[name] = statistics.median(r["seconds"] for r in rs)
        print(f"| {name} | {med[name]:.2f} | {min(r['seconds'] for r in rs):.2f} | "
              f"{statistics.median(r['cpu_s'] for r in rs):.2f} |")
    base = next(k for k in med if k != "today")
    print(f"baseline / today: {med[base] / med['today']:.2f}× (target ≥ 3×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
