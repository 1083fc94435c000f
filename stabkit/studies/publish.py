"""A study's report and the reports index, rebuilt from the stored results alone:
``out_root/<name>/README.md`` (the provenance header + the kind's Markdown body) and
``out_root/README.md`` (one line per report: name, kind, the kind's one-line summary, link)."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .._io import storage_errors, write_text_atomic
from ..errors import StudyFileError
from . import kind_module
from ._grid import check_study_name
from ._store import _read_json, file_sha256, sources_hash
from .provenance import UNFINISHED, cells_left, finishing_command, git_commit, header


def build_report(name: str, out_root=Path("reports"), log=None) -> Path:
    """(Re)build ``out_root/<name>/README.md`` from results.parquet + run.json, and the index. A later
    run that stopped before writing its table (``run.unfinished.json``) is named in one ``log`` line
    (default: a warning on stderr): the report describes the table, not that run."""
    out_dir = Path(out_root) / check_study_name(name)  # never a folder outside out_root
    check_index_target(out_root)  # before anything is written
    results_path = out_dir / "results.parquet"
    stopped = _stopped_run(out_dir)
    if not results_path.is_file():
        raise FileNotFoundError(f"no results for study {name!r}: {results_path} does not exist "
                                f"({stopped or 'run it first'})")
    meta = _read_json(out_dir / "run.json")
    if meta is None:
        raise ValueError(f"{out_dir / 'run.json'} is missing or unreadable: rerun the study to record it")
    for key, kind_of in (("kind", str), ("grid", dict)):
        if not isinstance(meta.get(key), kind_of):
            raise ValueError(f"{out_dir / 'run.json'}: {key!r} is missing or not a {kind_of.__name__}: "
                             "rerun the study to record it")
    _check_table_is_recorded(results_path, meta, _read_json(out_dir / UNFINISHED))
    kind = kind_module(meta["kind"])
    results = read_results(results_path, kind)
    if results.empty:
        raise NothingComputed(f"study {name!r} has no computed cells yet ({results_path} holds no rows): "
                              "run the study to compute them")
    rebuild = f"`{shlex.join(['stabkit', 'report', name, f'--out={out_root}'])}` writes the report once there is room"
    with storage_errors(f"finished cells are kept; {rebuild}"):  # a figure, the README or the index
        if _all_failed(results):
            body = _all_failed_body(results)  # the kind's report needs at least one computed row
        else:
            with _columns_needed(results, results_path, meta):
                body = kind.report(results, meta["grid"], out_dir)
        top = header(name, meta, report_commit=git_commit(out_root), report_sources=sources_hash())
        text = top + "\n" + body.rstrip() + "\n"
        write_text_atomic(out_dir / "README.md", text)
        build_index(out_root)
    if stopped:
        (log or _warn)(f"study {name!r}: the report describes the table of the last finished run; {stopped}")
    return out_dir / "README.md"


def _stopped_run(out_dir: Path) -> str:
    """A sentence on the run that has not written its table (``run.unfinished.json``), or ''."""
    stopped = _read_json(out_dir / UNFINISHED)
    if not stopped or not stopped.get("command"):
        return ""
    finished = _read_json(out_dir / "run.json") or {}
    # run_id: two runs of one process in one second share the rest (records from before it have none)
    same_run = all(finished.get(k) == stopped.get(k) for k in ("run_id", "started_at", "pid", "host"))
    if same_run and finished.get("status") == "finished":
        return ""  # the finished run itself, killed after writing run.json, before removing its unfinished record
    status = stopped.get("status", "?")
    if status == "running":  # its heartbeat is all that is known: it may still run, or have been killed
        status = f"running at its last heartbeat, {stopped.get('heartbeat_at', '?')}"
    return (f"a run has not written its table yet (status: {status}, started {stopped.get('started_at', '?')}); "
            f"its finished cells are kept and `{stopped['command']}` resumes it")


def _check_table_is_recorded(results_path: Path, meta: dict, unfinished: dict | None) -> None:
    """A ValueError when a run that has not finished (its record is ``unfinished``) replaced the table
    that run.json names by its hash: it was killed after writing results.parquet, before run.json,
    and the header would describe its table with the record of the run before (grid, cells, commit).
    A table edited by hand leaves no unfinished record; the checks of its columns speak for it."""
    recorded = meta.get("table_sha256")
    if not unfinished or recorded is None or file_sha256(results_path) == recorded:
        return
    rerun = unfinished.get("command") or finishing_command(meta.get("command", "stabkit run STUDY"))
    raise ValueError(f"{results_path} was written by a run that stopped before recording it in "
                     f"{results_path.parent / 'run.json'} (status: {unfinished.get('status', '?')}, started "
                     f"{unfinished.get('started_at', '?')}), which still describes the table before it: run "
                     f"`{rerun}` again to record it (its cells are kept)")


class NothingComputed(ValueError):
    """A study's results hold no cell yet, so there is nothing to report."""


def read_results(path: Path, kind=None) -> pd.DataFrame:
    """results.parquet at ``path``; a damaged file is a ValueError naming it, and text in a column the
    study ``kind`` declares numeric (its ``NUMBER_COLUMNS``: a table edited by hand or by another tool)
    a StudyFileError naming the file, the column and the value, before the kind's report meets it."""
    try:
        results = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}): run the study again to rebuild it from its cells") from None
    for column in getattr(kind, "NUMBER_COLUMNS", ()):
        if column in results.columns:
            _check_no_text(results[column], path, kind.__name__.rpartition(".")[2])
    return results


def _check_no_text(values: pd.Series, path: Path, kind_name: str) -> None:
    """StudyFileError naming the first value of ``values`` that is not a number (or, where all of its
    text reads as numbers, the first text) when the column holds any text."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return
    texts = [(row, v) for row, v in enumerate(values) if isinstance(v, (str, bytes))]
    if not texts:
        return
    row, value = next(((row, v) for row, v in texts if not _reads_as_number(v)), texts[0])
    raise StudyFileError(f"{path}: column {values.name!r} holds text ({value!r} in row {row + 1} of {len(values)}) "
                         f"where the {kind_name} report needs numbers; the file is left as it is: restore it, or "
                         "run the study again to rebuild it from its cells")


def _reads_as_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


@contextmanager
def _columns_needed(results: pd.DataFrame, path: Path, meta: dict):
    """A KeyError pandas raises for a column the table lacks (a kind's report or summary reading it)
    becomes a ValueError naming the column and the file, and saying how to rebuild the table; any
    other KeyError (a kind's own dict lookup, say) passes unchanged."""
    try:
        yield
    except KeyError as exc:
        column = exc.args[0] if len(exc.args) == 1 else None
        if not isinstance(column, str) or column in results.columns or not _frame_lookup_failed(exc, column):
            raise
        rerun = finishing_command(meta.get("command", "stabkit run STUDY"))
        raise ValueError(f"{path} has no column {column!r}, which the {meta.get('kind', '?')} report needs: "
                         f"rerun the study (`{rerun}`) to rebuild the table") from None


def _frame_lookup_failed(exc: BaseException, column: str) -> bool:
    """Whether ``exc`` came from ``frame[column]`` on a DataFrame (a column lookup), not from a Series
    or a dict lookup of the kind's own, nor from a list of columns."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if (frame.f_code.co_name == "__getitem__" and isinstance(frame.f_locals.get("self"), pd.DataFrame)
                and frame.f_locals.get("key") == column):
            return True
        tb = tb.tb_next
    return False


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


#: The first line of the reports index: a README.md that starts otherwise is not ours to overwrite.
INDEX_TITLE = "# Reports"


def check_index_target(out_root) -> None:
    """Refuse an ``out_root`` whose README.md exists and is not a reports index (a checkout's own
    README.md, with ``--out .``): a ValueError naming the file."""
    path = Path(out_root) / "README.md"
    if not path.is_file():
        return
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror or exc}): choose another --out") from None
    if first.strip() != INDEX_TITLE:
        raise ValueError(f"{path} exists and is not a reports index (its first line is not {INDEX_TITLE!r}): "
                         "it is left as it is; choose another --out")


def build_index(out_root=Path("reports"), log=_warn) -> Path:
    """``out_root/README.md``: one line per report (name, kind, summary, link); a study whose results
    cannot be read is left out, with one ``log`` line naming it."""
    out_root = Path(out_root)
    check_index_target(out_root)
    entries = []
    for path in sorted(out_root.glob("*/run.json")):
        meta = _read_json(path)
        name = path.parent.name
        # Deliberately broad: a damaged sibling (a run.json without "kind", a table whose column
        # holds text where the kind's summary wants numbers) must not stop the index of the others.
        try:
            if meta is None:
                raise ValueError(f"{path} is unreadable or not a JSON object")
            summary = _summary(meta, path.parent)
        except Exception as exc:  # noqa: BLE001
            why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            log(f"reports index: study {name!r} left out: {why}")
            continue
        link = f"{name}/README.md" if (path.parent / "README.md").is_file() else f"{name}/"
        entries.append(f"| [{name}]({link}) | `{meta.get('kind', '?')}` | {summary} |")
    text = "\n".join([INDEX_TITLE, "", "Built by `stabkit report NAME`; each report states the command, commit and "
                      "machine that produced it.", "", "| report | kind | summary |", "|---|---|---|", *entries, ""])
    rebuild = f"`stabkit report NAME {shlex.quote(f'--out={out_root}')}` rebuilds the index once there is room"
    with storage_errors(f"the studies' results are kept; {rebuild}"):
        write_text_atomic(out_root / "README.md", text)
    return out_root / "README.md"


def _summary(meta: dict, out_dir: Path) -> str:
    """The index line of one study: the kind's ``summary(results)`` hook, else counts; for a partial
    study (cells of its grid not computed yet), led by how many, as its README's header says."""
    line = _counts_line(meta, out_dir)
    left = cells_left(meta)
    return f"partial, {left} of {meta['cells_total']} cells not computed: {line}" if left else line


def _counts_line(meta: dict, out_dir: Path) -> str:
    results_path = out_dir / "results.parquet"
    if not results_path.is_file():
        return "no results yet"
    try:
        kind = kind_module(meta["kind"])
    except (ValueError, ImportError):
        kind = None
    results = read_results(results_path, kind)
    if results.empty:
        return "no cells computed yet"
    hook = getattr(kind, "summary", None)
    failed = first_failure(results)
    if failed is not None and failed[2] == len(results):
        return f"all {len(results)} cells failed, e.g. {failed[1][:120]}"
    if hook is not None:
        with _columns_needed(results, results_path, meta):
            return hook(results)
    n_cells = results["cell_id"].nunique() if "cell_id" in results else len(results)
    return f"{n_cells} cells, {len(results)} rows"
