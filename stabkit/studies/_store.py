"""Storage of a study's cells: one writer per study directory, atomic writes (:mod:`stabkit._io`),
a checksum and the code version (a hash of the ``stabkit`` sources) in every cell file, and the
consolidated results table. Used by :mod:`.runner`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import warnings
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .._io import replace_atomic, write_text_atomic

PACKAGE = Path(__file__).resolve().parents[1]
LOCK_NAME = ".writer.lock"


class StudyLocked(ValueError):
    """Another process is writing this study."""


# ----------------------------------------------------------------------------- code version


@lru_cache(maxsize=1)
def sources_hash() -> str:
    """SHA-256 (16 hex digits) of every ``stabkit/**/*.py`` file, path and content: the code that
    computes a cell, committed or not. Cached per process (a worker hashes the code it imported)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- one writer per study


class _StudyLock:
    """An exclusive ``flock`` on ``cells/.writer.lock``: the kernel drops it when its holder dies
    (even by kill -9), so a lock left by a dead process is simply taken over. The file keeps the
    holder's pid, host and start time for the message a second writer gets."""

    def __init__(self, cells_dir: Path, study_name: str):
        self.path = cells_dir / LOCK_NAME
        self.study_name = study_name
        self.fd = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (documented limitation)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # e.g. NFS without locks
                os.close(fd)
                warnings.warn(f"{self.path.parent} cannot be locked ({exc.strerror}): nothing stops a second run "
                              "on this study from writing at the same time", RuntimeWarning, stacklevel=2)
                return
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_json(self.path) or {}
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                   f"{holder.get('started_at', '?')}") if holder else "another process"
            raise StudyLocked(f"study {self.study_name!r} is being written by {who} (lock {self.path}); "
                              "wait for that run to end or stop it, then run again") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race)
            self.fd = None


# ----------------------------------------------------------------------------- cell storage


def _cell_path(cells_dir: Path, cell: dict) -> Path:
    """A cell's file, named by all its parameters: a cell of another grid with the same id (another
    ``--set``) gets a file of its own instead of overwriting this one's."""
    key = json.dumps(_jsonable(cell), sort_keys=True, allow_nan=True)
    return cells_dir / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")


def _legacy_cell_path(cells_dir: Path, cell_id: str) -> Path:
    """Where a stabkit before cells were named by their parameters wrote a cell (named by its id): read, never written."""
    return cells_dir / (hashlib.sha256(cell_id.encode()).hexdigest()[:20] + ".json")


def cell_record(cell: dict, rows: list[dict], error: str | None, code: dict) -> tuple[dict, str | None]:
    """(the record stored for a finished cell, its error): a failed cell keeps one row naming the
    error; rows a kind returned with a non-scalar value make the cell failed (a TypeError)."""
    record = {"cell_id": cell["cell_id"], "cell": _jsonable(cell), "failed": error is not None, "code": code,
              "rows": rows if error is None else failure_rows(cell, error)}
    try:
        _dumps(record)
    except TypeError as exc:
        error = f"TypeError: {exc}"
        record.update(failed=True, rows=failure_rows(cell, error))
    record["sha256"] = _checksum(record)
    return record, error


def failure_rows(cell: dict, error: str) -> list[dict]:
    """The one row a failed cell leaves: its scalar parameters and ``error``."""
    scalars = {k: v for k, v in cell.items() if k != "cell_id" and isinstance(v, (str, int, float, bool))}
    return [{**scalars, "error": f"cell failed: {error}"}]


def write_cell(cells_dir: Path, record: dict) -> None:
    """Write a cell's record to its file, atomically and synced to disk."""
    write_text_atomic(_cell_path(cells_dir, record["cell"]), _dumps(record))


def _checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(_dumps(body).encode()).hexdigest()


def _scan_cells(cells_dir: Path, cells: list[dict], sources: str) -> dict[str, dict]:
    """Classify the cell files of the grid's cells (failed ones are simply retried).

    Returns {"done": {cell_id: record}, "stale": {cell_id: record}, "damaged": [file names]}:
    ``stale`` = valid records computed by other code (another sources hash, or none recorded);
    ``damaged`` = files that are unreadable or whose checksum does not match (edited, truncated).
    Only the files named after a cell of the grid are read (by its parameters, or by its id as older
    versions named it, when no file of the first name exists); any other file is left alone.
    """
    wanted = {c["cell_id"]: _jsonable(c) for c in cells}
    names = set()
    for cid, cell in wanted.items():
        path, legacy = _cell_path(cells_dir, cell), _legacy_cell_path(cells_dir, cid)
        names.add(legacy.name if legacy.exists() and not path.exists() else path.name)
    out = {"done": {}, "stale": {}, "damaged": []}
    if not cells_dir.is_dir():
        return out
    for path in sorted(cells_dir.iterdir()):
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # a write interrupted by a kill
            continue
        if path.name not in names:  # another grid's cell, or a file that is no cell of this grid
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a cell record")
        except (OSError, ValueError):
            out["damaged"].append(path.name)
            continue
        cid = record.get("cell_id")
        if cid not in wanted or record.get("cell") != wanted[cid] or record.get("failed"):
            continue
        if "sha256" in record and record["sha256"] != _checksum(record):
            out["damaged"].append(path.name)
        elif "sha256" in record and record.get("code", {}).get("sources") == sources:
            out["done"][cid] = record
        else:  # other code, or written before code versions were recorded
            out["stale"][cid] = record
    return out


def has_cell_file(cells_dir: Path, cell: dict) -> bool:
    """Whether a file in ``cells_dir`` holds ``cell`` (named by its parameters, or by its id as before)."""
    if _cell_path(cells_dir, cell).exists():
        return True
    legacy = _read_json(_legacy_cell_path(cells_dir, cell["cell_id"]))
    return legacy is not None and legacy.get("cell") == _jsonable(cell)


def cell_ids_in_files(cells_dir: Path, ids: set[str]) -> set[str]:
    """Which of ``ids`` a readable cell file in ``cells_dir`` holds, of whatever grid."""
    found = set()
    for path in cells_dir.glob("*.json") if ids and cells_dir.is_dir() else ():
        record = _read_json(path)
        if record is not None and record.get("cell_id") in ids:
            found.add(record["cell_id"])
    return found


def _json_default(obj):
    """numpy scalars (np.int64, np.bool_, ...) in a kind's rows become plain Python values."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    raise TypeError(f"row value {obj!r} of type {type(obj).__name__} is not a scalar")


def _dumps(obj) -> str:
    return json.dumps(obj, allow_nan=True, default=_json_default)


def _jsonable(obj):
    return json.loads(_dumps(obj))


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- the results table


def consolidate(cells: list[dict], done: dict[str, dict]) -> pd.DataFrame:
    """All rows in cell order (then the kind's row order), ``cell_id`` first and ``error`` last."""
    rows = []
    for cell in cells:
        record = done.get(cell["cell_id"])
        if record is None:
            continue
        for row in record["rows"]:
            rows.append({"cell_id": cell["cell_id"], **row})
    columns = ["cell_id"]
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    if "error" in columns:
        columns.remove("error")
    columns.append("error")
    table = pd.DataFrame(rows, columns=columns)
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    return table


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (run.json names the table it describes by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_table(table: pd.DataFrame, out_dir: Path) -> None:
    """results.parquet and results.csv, each replaced atomically."""
    replace_atomic(out_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    replace_atomic(out_dir / "results.csv", lambda p: table.to_csv(p, index=False))
