"""Does the fast training path change what it measures? The same short-protocol cells both ways.

Each cell (preset, method, d, float32) runs ``seeds`` times on the plain path (today's loop) and on
the fast path (``fast=True``: bf16 autocast trunk, channels_last, checks read back every 100
steps, the ZCA layer in its own dtype). Per cell the failure counts are compared by Fisher's exact
test (two-sided, on the 2×2 table failed/not × plain/fast; Fisher 1922), and over all cells pooled;
beside it the same-seed agreement (not expected to be complete on a GPU: its nondeterminism alone
changes which seeds fail) with the exact McNemar test of the paired design (McNemar 1947: the
seeds where only one path failed, two-sided binomial at ½), and the dtypes the eigensolver saw
(the monitor's records). Failure:
the paper's criterion (a NaN loss, ``paper_outcome == "nan-loss"``) and, reported apart, any
stabkit failure outcome. Default cells: the short protocol of ``studies/zca-cifar10.toml``
(120 steps on 15 360 images), chosen where that study's float32 success rates were mixed or
one-sided (SVD d = 64: 25 %, PI d = 8: 62 %, SVD-Clip d = 16: 62 %, SVD d = 32: 0 %, SVD-Taylor
d = 8: 100 %), plus the survival study's first cell (paper preset, SVD d = 16).

    python -m stabkit.train.fastcheck --out OUT [--jobs 8] [--seeds 8] [--seed-start 0] [--add EARLIER.json ...] [--device cuda] [--stacked R]

writes OUT/fastcheck.json (every run's summary) and OUT/fastcheck.md (the table). A GPU window is
short, so the evidence accumulates: ``--seed-start`` runs further seeds and ``--add`` pools the runs
of earlier windows' fastcheck.json files with this window's (the same cell, seed and path twice is refused).
Runs go seed by seed (every cell and path of a seed, then the next seed), and fastcheck.json is
rewritten after each finished run, so a command killed at its limit still leaves what it finished;
the comparison counts only whole seeds (every cell on both paths), so a cut seed, whose quickly
failing runs would be over-represented, is left out. ``--stacked R``: the fast path's runs train R
seeds at a time stacked in one network (``stabkit.train.stacked_loop``, what ``stabkit run --stack R``
does), so the comparison covers that way of training too; each run records ``stacked_runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest, fisher_exact

from .. import _io
from . import table_iv

SHORT = {"max_steps": 120, "limit_images": 15360, "limit_test": 2000, "epochs": 1.0}
#: (preset, Table IV row, d): the method is the registered one with that ``paper_name``
CELLS = [("stabkit", "SVD", 64), ("stabkit", "PI", 8), ("stabkit", "SVD-Clip", 16),
         ("stabkit", "SVD", 32), ("stabkit", "SVD-Taylor", 8), ("paper", "SVD", 16)]
KEEP = ("outcome", "step", "paper_outcome", "nan_loss_step", "steps_done", "test_error", "wall_s", "eig_dtypes", "fast")


def configs(cells=None, seeds: int = 8, device: str = "auto", protocol: dict | None = None, seed_start: int = 0) -> list[dict]:
    """Both paths' run configs, plain then fast, seed by seed and within a seed cell by cell (seeds
    ``seed_start``, … ``seed_start + seeds − 1``; ``method``: the registry name of the cell's Table IV
    row, converted to a Spec by ``train_run``)."""
    out = []
    for seed in range(seed_start, seed_start + seeds):
        for preset, row, d in cells or CELLS:
            method = table_iv.method(row).name
            for fast in (False, True):
                out.append({**(protocol or SHORT), "preset": preset, "method": method, "d": d, "dtype": "float32",
                            "seed": seed, "fast": fast, "device": device})
    return out


def units(todo: list[dict], stacked: int = 1) -> list[list[dict]]:
    """The runs in the order they run, as units of work: one run each; with ``stacked`` R > 1 the
    fast path's runs of a cell train R seeds at a time stacked in one network
    (:mod:`stabkit.train.stacked_loop`), so the order becomes blocks of R seeds: per cell, the plain
    runs of the block's seeds one by one, then its fast runs as one unit."""
    if stacked <= 1:
        return [[c] for c in todo]
    seeds = sorted({c["seed"] for c in todo})
    cell = lambda c: (c["preset"], c["method"], c["d"])  # noqa: E731
    out = []
    for b in range(0, len(seeds), stacked):
        block = set(seeds[b:b + stacked])
        runs = [c for c in todo if c["seed"] in block]
        for key in dict.fromkeys(cell(c) for c in runs):
            mine = [c for c in runs if cell(c) == key]
            out += [[c] for c in mine if not c["fast"]]
            out.append([c for c in mine if c["fast"]])
    return out


def _summary(config: dict, result: dict, stacked_runs: int) -> dict:
    return {"preset": config["preset"], "method": config["method"], "d": config["d"], "seed": config["seed"],
            **{k: result[k] for k in KEEP}, "stacked_runs": stacked_runs}


def _run(config: dict) -> dict:
    from .loop import train_run

    return _summary(config, train_run(config), 1)


def _run_unit(unit: list[dict]) -> list[dict]:
    if len(unit) == 1:
        return [_run(unit[0])]
    from .stacked_loop import train_stacked

    return [_summary(c, r, len(unit)) for c, r in zip(unit, train_stacked(unit))]


def _key(run: dict) -> tuple:
    return run["preset"], run["method"], int(run["d"]), int(run["seed"]), bool(run["fast"])


def whole_seeds(rows: list[dict]) -> list[int]:
    """The seeds that every cell of ``rows`` ran on both paths."""
    cells = {_key(r)[:3] for r in rows}
    have = {_key(r) for r in rows}
    seeds = {int(r["seed"]) for r in rows}
    return sorted(s for s in seeds if all((*c, s, fast) in have for c in cells for fast in (False, True)))


def mcnemar_exact_p(only_plain: int, only_fast: int) -> float:
    """Two-sided exact McNemar p: of the discordant pairs, how unlikely so lopsided a split is at ½."""
    n = only_plain + only_fast
    return float(binomtest(only_plain, n, 0.5).pvalue) if n else 1.0


def compare(rows: list[dict]) -> dict:
    """Per cell and pooled, over the whole seeds only: failures plain vs fast, Fisher's exact p,
    same-seed agreement and McNemar's exact p."""
    seeds_in = set(whole_seeds(rows))
    left_out = len(rows)
    rows = [r for r in rows if int(r["seed"]) in seeds_in]
    left_out -= len(rows)

    def summary(group):
        plain = {r["seed"]: r for r in group if not r["fast"]}
        fast = {r["seed"]: r for r in group if r["fast"]}
        seeds = sorted(set(plain) & set(fast))
        out = {"n": len(seeds)}
        for name, failed in (("nan_loss", lambda r: r["paper_outcome"] == "nan-loss"), ("any", lambda r: r["outcome"] != "ok")):
            k_plain = sum(failed(plain[s]) for s in seeds)
            k_fast = sum(failed(fast[s]) for s in seeds)
            p = fisher_exact([[k_plain, len(seeds) - k_plain], [k_fast, len(seeds) - k_fast]])[1] if seeds else float("nan")
            only_plain = sum(failed(plain[s]) and not failed(fast[s]) for s in seeds)
            only_fast = sum(failed(fast[s]) and not failed(plain[s]) for s in seeds)
            out[name] = {"plain_failed": k_plain, "fast_failed": k_fast, "fisher_p": float(p),
                         "same_seed_agree": len(seeds) - only_plain - only_fast,
                         "mcnemar_p": mcnemar_exact_p(only_plain, only_fast)}
        return out

    cells = {}
    for r in rows:
        cells.setdefault(f"{r['preset']} {r['method']} d={r['d']}", []).append(r)
    per_cell = {key: summary(group) for key, group in cells.items()}
    # pooled over cells: seeds are renumbered so that each (cell, seed) is one pair
    pooled_rows = [{**r, "seed": (key, r["seed"])} for key, group in cells.items() for r in group]
    stacked = Counter(int(r.get("stacked_runs") or 1) for r in rows if r["fast"])
    return {"cells": per_cell, "pooled": summary(pooled_rows), "whole_seeds": sorted(seeds_in), "runs_left_out": left_out,
            "eig_dtypes": sorted({t for r in rows for t in str(r.get("eig_dtypes") or "").split(",") if t}),
            "fast_runs_by_stack": {str(k): v for k, v in sorted(stacked.items())}}


def markdown(result: dict) -> str:
    lines = ["| cell | runs per path | NaN loss plain | NaN loss fast | Fisher p | same seed agrees | McNemar p | "
             "any failure plain | any failure fast | Fisher p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in [*result["cells"].items(), ("pooled", result["pooled"])]:
        a, b = c["nan_loss"], c["any"]
        lines.append(f"| {key} | {c['n']} | {a['plain_failed']} | {a['fast_failed']} | {a['fisher_p']:.3g} | "
                     f"{a['same_seed_agree']}/{c['n']} | {a['mcnemar_p']:.3g} | {b['plain_failed']} | {b['fast_failed']} | "
                     f"{b['fisher_p']:.3g} |")
    lines.append("")
    seeds = result["whole_seeds"]
    lines.append(f"whole seeds counted: {len(seeds)} ({', '.join(map(str, seeds))}); runs of cut seeds left out: "
                 f"{result['runs_left_out']}")
    lines.append(f"eigensolver input dtypes seen (monitor): {', '.join(result['eig_dtypes']) or 'none'}")
    by_stack = result.get("fast_runs_by_stack") or {}
    lines.append("fast-path runs by how many were stacked in one network: "
                 + (", ".join(f"{k} at a time: {n}" for k, n in by_stack.items()) or "none"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Same failure outcomes on the plain and the fast training path?")
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--add", action="append", default=[], metavar="FASTCHECK_JSON",
                    help="pool the runs of an earlier fastcheck.json with this run's (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stacked", type=int, default=1, metavar="R",
                    help="train the fast path's runs R seeds at a time stacked in one network (stabkit.train.stacked_loop)")
    args = ap.parse_args(argv)
    if args.stacked < 1:
        ap.error(f"--stacked must be ≥ 1, got {args.stacked}")
    todo = configs(seeds=args.seeds, device=args.device, seed_start=args.seed_start)
    earlier, keys = [], Counter(_key(c) for c in todo)
    for path in args.add:
        try:
            runs = json.loads(Path(path).read_text())["runs"]
            keys.update(_key(r) for r in runs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            ap.error(f"--add {path}: not a readable fastcheck.json ({type(exc).__name__}: {exc})")
        earlier += runs
    twice = sorted(k for k, n in keys.items() if n > 1)
    if twice:
        ap.error(f"{len(twice)} runs would be there twice (cell, seed and path; first: {twice[0]}): "
                 "choose other seeds with --seed-start")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(earlier)

    def save():  # after every run: a command killed at its limit keeps what finished
        result = compare(rows)
        _io.replace_atomic(out / "fastcheck.json", lambda tmp: tmp.write_text(json.dumps({"runs": rows, **result}, indent=1, default=str)),
                           durable=False)
        _io.replace_atomic(out / "fastcheck.md", lambda tmp: tmp.write_text(markdown(result)), durable=False)
        return result

    interrupted = False
    try:
        if args.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_run_unit, u) for u in units(todo, args.stacked)]  # in order: whole seeds first
                try:
                    for future in as_completed(futures):
                        rows.extend(future.result())
                        save()
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        else:
            for unit in units(todo, args.stacked):
                rows.extend(_run_unit(unit))
                save()
    except KeyboardInterrupt:  # SIGINT from a time box: the finished runs are saved
        interrupted = True
    result = save()
    print(markdown(result))
    if interrupted:
        print(f"fastcheck: interrupted after {len(rows) - len(earlier)} of {len(todo)} runs", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
