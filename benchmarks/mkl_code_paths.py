"""Does MKL's code path explain why torch's rows of a study differ between two CPUs?

    python benchmarks/mkl_code_paths.py [--study studies/quickstart.toml] [--committed reports/quickstart]

Runs the study from scratch once per setting — MKL's default path, then paths forced by
``MKL_ENABLE_INSTRUCTIONS`` / ``MKL_CBWR``, and torch's CPU capability forced by ``ATEN_CPU_CAPABILITY`` —
each in its own process (MKL reads these once, at load), and counts the rows of each table that differ
from the committed table and from the default run: every column but ``seconds``, NaN equal to NaN.
Prints a Markdown table with the code path each run's header names. Not a timing: about one study run
per setting (the quickstart: ~10 s each).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    {},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    {"MKL_CBWR": "AVX2"},
    {"MKL_CBWR": "COMPATIBLE"},
]


def differing_rows(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Per row, whether any column but ``seconds`` differs (NaN equals NaN); tables of one grid."""
    if len(a) != len(b):
        raise SystemExit(f"tables of different length ({len(a)} and {len(b)} rows): not one grid")
    cols = [c for c in a.columns if c != "seconds" and c in b.columns]
    a, b = a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)
    same = (a == b).fillna(False) | (a.isna() & b.isna())
    return ~same.all(axis=1)


def run_study(study: Path, out: Path, env: dict) -> tuple[pd.DataFrame, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    subprocess.run([sys.executable, "-m", "stabkit", "run", str(study), "--out", str(out), "--no-progress"],
                   env={**clean, **env}, check=True, capture_output=True, cwd=REPO)
    folder = next(p.parent for p in out.glob("*/results.parquet"))
    lapack = re.search(r"LAPACK ([^|]*?) \|", (folder / "README.md").read_text())
    return pd.read_parquet(folder / "results.parquet"), lapack.group(1) if lapack else "not named"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quickstart.toml")
    ap.add_argument("--committed", default="reports/quickstart")
    args = ap.parse_args()
    committed = pd.read_parquet(REPO / args.committed / "results.parquet")
    rows, default = [], None
    with tempfile.TemporaryDirectory(prefix="stabkit-mkl-") as tmp:
        for i, env in enumerate(SETTINGS):
            table, lapack = run_study(REPO / args.study, Path(tmp) / str(i), env)
            default = table if default is None else default
            vs_committed = differing_rows(committed, table)
            methods = sorted(set(table.loc[vs_committed, "method"])) if "method" in table else []
            rows.append((" ".join(f"{k}={v}" for k, v in env.items()) or "(none: MKL's default)", lapack,
                         int(vs_committed.sum()), ", ".join(methods) or "—", int(differing_rows(default, table).sum())))
    print(f"{args.study} run once per setting; rows differing from `{args.committed}` (committed) and from the "
          f"default run, of {len(committed)}; every column but `seconds`")
    print("| setting | torch's LAPACK (header) | rows ≠ committed | their methods | rows ≠ default run |")
    print("|---|---|---:|---|---:|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
