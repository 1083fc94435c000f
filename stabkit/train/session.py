"""How many WHOLE training runs fit in a GPU window (``studies/gpu-session.sh``).

A run must finish inside one command (a checkpoint is too big to carry between GPU windows), so a
chunk starts only the runs it can finish: with ``jobs`` concurrent runs each taking ``run_s``
seconds, ``seconds`` hold ⌊seconds / run_s⌋ waves of ``jobs`` runs. The script asks again after
each chunk (runs that stopped early at a NaN loss leave time for more) and stops when not even one
wave fits. A run cut by the deadline is never written (the runner writes a cell only when it
finished), so nothing half-done is counted.

``run_s`` is estimated, in this order, from

1. finished runs of the study (``reports/<name>/cells/*.json``) that ran their whole horizon
   (``steps_done == steps_total``, same ``steps_total`` as planned): the longest ``wall_s`` × 1.1;
2. the throughput bench (``bench_train_step.py --fast-path --json``): the row with ``processes ==
   jobs`` (else the nearest) of the path the study uses; per run ``steps / (rate / runs)``, plus
   the test evaluations (``eval_every``: each ≈ ``limit_test / batch / 3`` steps: a forward is a
   third of a step) and ``overhead_s`` (process start, data to the device, compilation), × 1.2.

    python -m stabkit.train.session STUDY.toml --seconds 500 --jobs 6 [--bench bench.json] [--reports reports]

prints the number of runs to start (0: none fits) and, on stderr, how it was estimated; with
``--fit-epochs`` it prints the most epochs (≤ the study's) one wave can finish — the fallback
horizon when the study's does not fit (``FIT_HORIZON=1`` in the session script: ``--set epochs=E``;
each run records its horizon, and a survival analysis censors it there); ``--epochs E`` plans runs
of that horizon (the script's later waves, once it fell back); ``--stack R`` plans waves of R runs
stacked in one process (``--jobs R``; the bench's ``fast, stacked`` rows, or finished runs that were
stacked R at a time); ``--choose-stack`` prints the R the bench favours (1: processes instead) —
with ``--seconds`` > 0 among the ways that finish the most whole runs in that time.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

from ..studies._grid import tomllib  # tomllib, or tomli on Python 3.10
from .preset import get_preset

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


def test_images(settings: dict, available: int = CIFAR10_TEST) -> int:
    """Test images a run evaluates on, of ``available``: ``limit_test``; without it (None or 0), a run
    on a ``limit_images`` subset takes as many test images; else all. ``settings``: a run's config
    or a study's grid (the same keys)."""
    return min(available, int(settings.get("limit_test") or settings.get("limit_images") or available))


def steps_per_epoch(images: int, batch: int, drop_last: bool) -> int:
    """Steps of one epoch of ``images`` in batches of ``batch``: the last partial batch dropped
    (⌊images / batch⌋) or kept as a smaller one (⌈images / batch⌉). The training loop's rule."""
    return images // batch if drop_last else -(-images // batch)


def _run_option(grid: dict, key: str):
    """A run option as a study's grid sets it: a grid key, or in its ``train_options`` table (the
    survival study's, passed to every run as it is); None where neither sets it."""
    value = grid.get(key)
    return value if value is not None else (grid.get("train_options") or {}).get(key)


def grid_steps_per_epoch(grid: dict) -> int:
    """Steps per epoch of a study grid's runs: ``drop_last`` as the grid sets it, else its preset's
    (``paper`` keeps the last partial batch: 391 steps per 50 000-image epoch; ``stabkit`` drops it: 390)."""
    images = int(grid.get("limit_images") or CIFAR10_TRAIN)
    batch = int(grid.get("batch_size") or 128)
    drop_last = _run_option(grid, "drop_last")
    return steps_per_epoch(images, batch, get_preset(grid.get("preset")).drop_last if drop_last is None else bool(drop_last))


def planned_steps(grid: dict) -> int:
    """Steps of one full-horizon run of a CIFAR-10 training study's grid (epochs × :func:`grid_steps_per_epoch`,
    capped at ``max_steps``)."""
    epochs = float(grid.get("epochs") or 1)
    steps = max(1, math.ceil(epochs * grid_steps_per_epoch(grid)))
    max_steps = _run_option(grid, "max_steps")
    return min(steps, int(max_steps)) if max_steps else steps


def eval_steps(grid: dict, steps: int) -> float:
    """Test evaluations of one run in step-equivalents (a forward pass ≈ a third of a step)."""
    batch = int(grid.get("batch_size") or 128)
    every = int(grid.get("eval_every", 1) or 0)
    evals = (steps // grid_steps_per_epoch(grid)) // every + 1 if every else 1
    return evals * test_images(grid) / batch / 3


def cell_records(cells_dir: Path) -> list:
    """The parsed JSON of the study's cell files, in file-name order (unreadable ones skipped)."""
    records = []
    for path in sorted(Path(cells_dir).glob("*.json")) if Path(cells_dir).is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def longest_finished_run_s(records: list, steps: int, stack: int = 1) -> float | None:
    """Longest wall time (× 1.1) of the finished full-horizon runs of ``steps`` steps among the study's
    :func:`cell_records`, trained ``stack`` at a time (``stacked_runs``; 1 for a run alone), or None."""
    walls = []
    for record in records:
        for row in record.get("rows") or []:
            if (row.get("steps_total") == steps and row.get("steps_done") == steps and isinstance(row.get("wall_s"), (int, float))
                    and (row.get("stacked_runs") or 1) == stack):
                walls.append(float(row["wall_s"]))
    return max(walls) * 1.1 if walls else None


def bench_run_s(bench: dict, jobs: int, steps: int, extra_steps: float, fast: bool, overhead_s: float = 60.0,
                stacked: bool = False) -> float | None:
    """Seconds of one run when ``jobs`` run at once, from the bench's rows (None if no row fits):
    ``jobs`` processes, or with ``stacked`` ``jobs`` runs stacked in one process (the fast path's
    ``fast, stacked`` rows)."""
    path = "fast, stacked" if stacked else "fast" if fast else "today"
    width = "runs" if stacked else "processes"  # what grows with jobs
    rows = [r for r in bench.get("rows", []) if r.get("path") == path and r.get("steps_per_s", 0) > 0]
    if not rows:
        return None
    row = min(rows, key=lambda r: (abs(r[width] - jobs), -r[width]))
    per_run_rate = row["steps_per_s"] / row["runs"]
    if row[width] < jobs:  # fewer measured than planned: assume no further gain in total
        per_run_rate = row["steps_per_s"] / jobs
    return ((steps + extra_steps) / per_run_rate + overhead_s) * 1.2


def choose_stack(bench: dict, jobs: int, runs_in_window=None) -> int:
    """How many runs to stack in one process (1: none, ``jobs`` processes instead), from the bench.
    Candidates: the fast path at ``jobs`` processes and the ``fast, stacked`` rows of ≥ ``jobs`` runs.
    With ``runs_in_window(stack)`` (the whole runs that way finishes in the time left, as :func:`plan`
    counts them) only the ways that finish the most runs stay: a faster stack whose runs do not fit
    would start none. Among those the highest total steps/s wins; a candidate within 10 % of it with
    fewer runs at once is preferred (fewer runs share the rate: each gets a longer horizon)."""
    rows = [r for r in bench.get("rows", []) if r.get("steps_per_s", 0) > 0]
    candidates = [(r["steps_per_s"], 1) for r in rows if r.get("path") == "fast" and r.get("processes") == jobs]
    candidates += [(r["steps_per_s"], int(r["runs"])) for r in rows if r.get("path") == "fast, stacked" and r["runs"] >= jobs]
    if not candidates:
        return 1
    if runs_in_window is not None:
        runs = {stack: runs_in_window(stack) for _, stack in candidates}
        candidates = [(rate, stack) for rate, stack in candidates if runs[stack] == max(runs.values())]
    best = max(rate for rate, _ in candidates)
    near = [(jobs if stack == 1 else stack, stack) for rate, stack in candidates if rate >= 0.9 * best]
    return min(near)[1]


def plan(seconds: float, jobs: int, run_s: float) -> int:
    """Runs to start: ``jobs`` per whole wave that fits in ``seconds``."""
    if jobs < 1 or not run_s > 0:
        raise ValueError(f"jobs must be ≥ 1 and run_s > 0, got jobs={jobs}, run_s={run_s}")
    return jobs * max(0, int(seconds // run_s))


class StudyFiles:
    """A study's TOML, its cell records (``reports/<name>/cells``) and the bench JSON, each read when
    an estimate first needs it and then kept: the estimates of ``--choose-stack``'s candidates and
    of ``--fit-epochs``' search read each file once, not once per estimate."""

    def __init__(self, study_path, bench_path=None, reports="reports"):
        self.study_path, self.bench_path, self.reports = study_path, bench_path, reports

    @functools.cached_property
    def study(self) -> dict:
        return tomllib.loads(Path(self.study_path).read_text())

    @functools.cached_property
    def grid(self) -> dict:
        """The study's grid over its kind's defaults (``GRID_DEFAULTS``): what its runs train with where
        the file leaves a key out (the survival kind's preset ``paper`` and 100 epochs, say)."""
        from ..studies import kind_module

        defaults = getattr(kind_module(self.study["study"]["kind"]), "GRID_DEFAULTS", {})
        return {**defaults, **self.study.get("grid", {})}

    @functools.cached_property
    def records(self) -> list:
        return cell_records(Path(self.reports) / self.study["study"]["name"] / "cells")

    @functools.cached_property
    def has_bench(self) -> bool:
        return bool(self.bench_path and Path(self.bench_path).is_file())

    @functools.cached_property
    def bench(self):
        """The bench's parsed JSON (read only where :attr:`has_bench`)."""
        return json.loads(Path(self.bench_path).read_text())

    def estimate(self, jobs: int, overhead_s: float = 60.0, epochs: float | None = None,
                 stack: int = 1) -> tuple[float | None, str]:
        """:func:`estimate` from these files."""
        grid, name = dict(self.grid), self.study["study"]["name"]
        if epochs is not None:
            grid["epochs"] = epochs
        steps = planned_steps(grid)
        seen = longest_finished_run_s(self.records, steps, stack)
        if seen is not None:
            return seen, f"{steps} steps per run; longest finished full-horizon run of {name} × 1.1 = {seen:.0f} s"
        if self.has_bench:
            run_s = bench_run_s(self.bench, jobs, steps, eval_steps(grid, steps), bool(grid.get("fast", False)),
                                overhead_s, stack > 1)
            if run_s is not None:
                how = f"{jobs} runs stacked in one process" if stack > 1 else f"{jobs} concurrent runs"
                return run_s, f"{steps} steps per run at {how}, from the bench {self.bench_path}: {run_s:.0f} s"
        return None, f"{steps} steps per run: no finished run and no bench row to estimate the time of one"


def estimate(study_path, jobs: int, bench_path=None, reports="reports", overhead_s: float = 60.0,
             epochs: float | None = None, stack: int = 1) -> tuple[float | None, str]:
    """(seconds per run, how it was estimated) for the study at ``study_path`` (``epochs``: in place
    of the grid's); ``stack`` > 1: ``jobs`` = ``stack`` runs stacked in one process (``stabkit run --stack``)."""
    return StudyFiles(study_path, bench_path, reports).estimate(jobs, overhead_s, epochs, stack)


def fit_epochs(study_path, seconds: float, jobs: int, bench_path=None, reports="reports", overhead_s: float = 60.0,
               stack: int = 1) -> int:
    """The largest whole number of epochs (≤ the grid's) for which one wave of ``jobs`` runs fits in
    ``seconds`` (0: not even one epoch) — the fallback horizon when the study's does not fit."""
    files = StudyFiles(study_path, bench_path, reports)
    grid = files.grid
    lo, hi = 0, int(float(grid.get("epochs") or 1))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        run_s, _ = files.estimate(jobs, overhead_s, epochs=mid, stack=stack)
        if run_s is not None and plan(seconds, jobs, run_s) >= jobs:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _runs_in_window(args, files: StudyFiles):
    """stack → the whole runs that way finishes in ``args.seconds`` (``--choose-stack`` with a window),
    from the study's ``files``."""
    def runs(stack: int) -> int:
        jobs = args.jobs if stack == 1 else stack
        run_s, _ = files.estimate(jobs, args.overhead_s, args.epochs, stack)
        return plan(args.seconds, jobs, run_s) if run_s is not None else 0
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="How many whole runs of a training study fit in SECONDS.")
    ap.add_argument("study")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--bench", default=None)
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--overhead-s", type=float, default=60.0)
    ap.add_argument("--run-s", type=float, default=None, help="seconds per run (skips the estimate)")
    ap.add_argument("--fit-epochs", action="store_true", help="print instead the most epochs one wave can finish")
    ap.add_argument("--choose-stack", action="store_true", help="print instead how many runs to stack in one process "
                    "(1: none) from the bench's rows (needs --bench); with --seconds > 0, among the ways that "
                    "finish the most whole runs in that time")
    ap.add_argument("--epochs", type=float, default=None, help="plan runs of this horizon instead of the study's "
                    "(what `--set epochs=E` gives the runs)")
    ap.add_argument("--stack", type=int, default=1, help="runs stacked in one process (`stabkit run --stack R`): "
                    "plan waves of R stacked runs (--jobs is then R) from the bench's `fast, stacked` rows")
    args = ap.parse_args(argv)
    if args.stack < 1:
        ap.error(f"--stack must be ≥ 1, got {args.stack}")
    try:
        if args.choose_stack:
            files = StudyFiles(args.study, args.bench, args.reports)
            bench = files.has_bench
            r = choose_stack(files.bench, args.jobs, _runs_in_window(args, files) if args.seconds > 0 else None) if bench else 1
            print(f"session plan: stack {r} run(s) per process" + ("" if bench else " (no bench)"), file=sys.stderr)
            print(r)
            return 0
        if args.fit_epochs:
            e = fit_epochs(args.study, args.seconds, args.jobs, args.bench, args.reports, args.overhead_s, args.stack)
            print(f"session plan: one wave of {args.jobs} runs fits {e} epoch(s) in {args.seconds:.0f} s", file=sys.stderr)
            print(e)
            return 0
        if args.run_s is not None:
            run_s, how = args.run_s, f"{args.run_s:.0f} s per run (given)"
        else:
            run_s, how = estimate(args.study, args.jobs, args.bench, args.reports, args.overhead_s, args.epochs, args.stack)
        if run_s is None:
            print(f"session plan: {how}; start none", file=sys.stderr)
            print(0)
            return 0
        n = plan(args.seconds, args.jobs, run_s)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:  # a malformed bench too
        print(f"session plan: {exc}", file=sys.stderr)
        return 2
    print(f"session plan: {how}; {args.seconds:.0f} s hold {n // args.jobs} wave(s) of {args.jobs}: start {n} run(s)", file=sys.stderr)
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
