"""A study's report and the reports index, rebuilt from the stored results alone:
``out_root/<name>/README.md`` (the provenance header + the kind's Markdown body) and
``out_root/README.md`` (one line per report: name, kind, the kind's one-line summary, link)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import write_text_atomic
from . import kind_module
from ._store import _read_json
from .provenance import git_commit, header


def build_report(name: str, out_root=Path("reports")) -> Path:
    """(Re)build ``out_root/<name>/README.md`` from results.parquet + run.json, and the index."""
    out_dir = Path(out_root) / name
    results_path = out_dir / "results.parquet"
    if not results_path.is_file():
        raise FileNotFoundError(f"no results for study {name!r}: {results_path} does not exist (run it first)")
    meta = _read_json(out_dir / "run.json")
    if meta is None:
        raise ValueError(f"{out_dir / 'run.json'} is missing or unreadable: rerun the study to record it")
    kind = kind_module(meta["kind"])
    results = pd.read_parquet(results_path)
    if _all_failed(results):
        body = _all_failed_body(results)  # the kind's report needs at least one computed row
    else:
        body = kind.report(results, meta["grid"], out_dir)
    text = header(name, meta, report_commit=git_commit(out_root)) + "\n" + body.rstrip() + "\n"
    write_text_atomic(out_dir / "README.md", text)
    build_index(out_root)
    return out_dir / "README.md"


def first_failure(results: pd.DataFrame) -> tuple[str, str, int] | None:
    """(cell_id, error, number of failed-cell rows) of the first failed cell, or None."""
    if "error" not in results or results.empty:
        return None
    mask = results["error"].fillna("").astype(str).str.startswith("cell failed:")
    if not mask.any():
        return None
    row = results[mask].iloc[0]
    return str(row.get("cell_id", "?")), str(row["error"]).removeprefix("cell failed: "), int(mask.sum())


def _all_failed(results: pd.DataFrame) -> bool:
    failed = first_failure(results)
    return failed is not None and failed[2] == len(results)


def _all_failed_body(results: pd.DataFrame) -> str:
    lines = [f"Every one of the {len(results)} cells failed; nothing was computed. The errors:\n"]
    counts = results.groupby("error", sort=False)["cell_id"].agg(["count", "first"])
    for error, row in counts.iterrows():
        lines.append(f"- {row['count']} cell(s), e.g. `{row['first']}`: {str(error).removeprefix('cell failed: ')}")
    return "\n".join(lines) + "\n"


def build_index(out_root=Path("reports")) -> Path:
    """``out_root/README.md``: one line per report (name, kind, summary, link)."""
    out_root = Path(out_root)
    entries = []
    for path in sorted(out_root.glob("*/run.json")):
        meta = _read_json(path)
        if meta is None:
            continue
        name = path.parent.name
        link = f"{name}/README.md" if (path.parent / "README.md").is_file() else f"{name}/"
        entries.append(f"| [{name}]({link}) | `{meta.get('kind', '?')}` | {_summary(meta, path.parent)} |")
    text = "\n".join(["# Reports", "", "Built by `stabkit report NAME`; each report states the command, commit and "
                      "machine that produced it.", "", "| report | kind | summary |", "|---|---|---|", *entries, ""])
    write_text_atomic(out_root / "README.md", text)
    return out_root / "README.md"


def _summary(meta: dict, out_dir: Path) -> str:
    """The index line of one study: the kind's ``summary(results)`` hook, else counts."""
    results_path = out_dir / "results.parquet"
    if not results_path.is_file():
        return "no results yet"
    results = pd.read_parquet(results_path)
    try:
        hook = getattr(kind_module(meta["kind"]), "summary", None)
    except (ValueError, ImportError):
        hook = None
    failed = first_failure(results)
    if failed is not None and failed[2] == len(results):
        return f"all {len(results)} cells failed, e.g. {failed[1][:120]}"
    if hook is not None:
        return hook(results)
    n_cells = results["cell_id"].nunique() if "cell_id" in results else len(results)
    return f"{n_cells} cells, {len(results)} rows"
