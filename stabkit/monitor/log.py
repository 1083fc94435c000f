"""The monitor's live log: rows appended as training runs, readable after a kill.

* ``.csv``: each flush is one append of complete lines, so a killed process leaves every flushed
  row readable (:func:`read_log` drops a torn last line, should one ever exist);
* ``.parquet``: one row group per flush through ``pyarrow.parquet.ParquetWriter``; the file is
  readable only once closed (Parquet's footer is written last);
* TensorBoard: per call site and step, the step's min gap, max|K̃|, λ_min, gradient norm and
  non-finite count, ``flush()``-ed with every append.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

COLUMNS = ["step", "site", "fn", "backward", "batch", "n", "dtype", "min_gap", "min_rel_gap", "max_K", "lam_min",
           "bound", "grad_norm", "grad_in_norm", "input_nonfinite", "nonfinite", "error"]
_FLOATS = ["min_gap", "min_rel_gap", "max_K", "lam_min", "bound", "grad_norm", "grad_in_norm"]
_BOOLS = ["input_nonfinite", "nonfinite"]
_INTS = ["step", "batch", "n"]
_STRS = ["site", "fn", "backward", "dtype", "error"]
#: the columns every version of the monitor has written: a file without them is not a monitor log
REQUIRED = ["step", "site", "fn", "batch", "n", "dtype", "min_gap", "min_rel_gap", "max_K", "lam_min", "bound",
            "grad_norm", "nonfinite"]


def warn(message: str, stacklevel: int = 1) -> None:
    """``warnings.warn`` for the monitor's own trouble, which never raises into the user's code: where
    warnings are errors (``-W error``) the message goes to stderr instead."""
    try:
        warnings.warn(message, stacklevel=stacklevel + 1)
    except Warning:
        print(f"warning: {message}", file=sys.stderr)


def _scalar(value):
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def frame(rows: list[dict]) -> pd.DataFrame:
    """Monitor rows (tensor scalars allowed) → a DataFrame with :data:`COLUMNS` and fixed dtypes."""
    df = pd.DataFrame([{k: _scalar(r.get(k)) for k in COLUMNS} for r in rows], columns=COLUMNS)
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes; logs written before a column existed get its neutral value."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df:
            df[col] = "" if col in _STRS else (False if col in _BOOLS else np.nan)
    for col in _FLOATS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in _INTS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
    for col in _BOOLS:
        df[col] = df[col].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).astype(bool)
    for col in _STRS:
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def rank_file_name(prefix: str = "eig", suffix: str = ".csv", pid: bool = False) -> str:
    """``eig-rank{R}.csv``: R from ``RANK``, else ``LOCAL_RANK``, else 0; a multiprocessing child
    (e.g. a DataLoader worker) or ``pid=True`` (a forked child) adds ``-pid{PID}`` so it never
    shares a file."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    rank = rank if rank.isdigit() else "0"
    child = pid or multiprocessing.parent_process() is not None
    return f"{prefix}-rank{rank}{f'-pid{os.getpid()}' if child else ''}{suffix}"


def refuse_a_shared_log(mon, active) -> None:
    """Refuse (ValueError) ``mon``'s live log where one of the ``active`` monitors already writes its
    file: two live logs on one file overwrite each other (each truncates it at its first write), and
    a ``watch`` nested in one that wrote the same file kept 1 row of 3 steps. Called under the
    patching's lock with the activation itself: a check before it let two threads that opened
    watches on one file at once both pass."""
    path = getattr(mon.log, "path", None)
    if path is None:
        return
    mine = os.path.realpath(path)
    for other in active:
        theirs = getattr(other.log, "path", None)
        if other is not mon and theirs is not None and os.path.realpath(theirs) == mine:
            raise ValueError(f"{path} is already the log of an active stabkit watch; "
                             f"give the inner watch its own log_path (or none: it still records)")


class LiveLog:
    """Appends DataFrames of monitor rows to ``path`` (.csv or .parquet) and TensorBoard."""

    def __init__(self, path=None, tensorboard_dir=None, write_empty: bool = True):
        self.write_empty = write_empty
        self.path = Path(path) if path is not None else None
        if self.path is not None and self.path.suffix not in (".csv", ".parquet"):
            raise InputError(f"monitor log must end in .csv or .parquet, got {self.path.name!r}")
        self.tensorboard_dir = tensorboard_dir
        self._started = False
        self._parquet = None
        self._tb = None
        self._tb_failed = False

    def append(self, df: pd.DataFrame):
        if df.empty:
            return
        if self.path is not None:
            if self.path.suffix == ".csv":
                self._append_csv(df)
            else:
                self._append_parquet(df)
        if self.tensorboard_dir is not None:
            self._append_tensorboard(df)

    def _append_csv(self, df):
        buf = io.StringIO()
        df.to_csv(buf, index=False, header=not self._started)
        data = buf.getvalue().encode()
        if not self._started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self._started else os.O_TRUNC)
        fd = os.open(self.path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self._started = True

    def _append_parquet(self, df):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._parquet is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._parquet = pq.ParquetWriter(str(self.path), table.schema)
        self._parquet.write_table(table)
        self._started = True

    def _append_tensorboard(self, df):
        if self._tb_failed:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                self._tb_failed = True
                warn(f"tensorboard logging skipped: torch.utils.tensorboard is not importable ({exc}); "
                     f"install the 'tensorboard' package", stacklevel=5)
                return
            self._tb = SummaryWriter(str(self.tensorboard_dir))
        for site, group in df.groupby("site"):
            per_step = group.groupby("step").agg(min_gap=("min_gap", "min"), max_K=("max_K", "max"), lam_min=("lam_min", "min"),
                                                 grad_norm=("grad_norm", "max"), nonfinite=("nonfinite", "sum"))
            for step, row in per_step.iterrows():
                for key, value in row.items():
                    self._tb.add_scalar(f"{site}/{key}", float(value), int(step))
        self._tb.flush()

    def close(self):
        if self.write_empty and self.path is not None and self.path.suffix == ".parquet" and self._parquet is None:
            self._append_parquet(frame([]))  # an empty run still leaves a readable file with the columns
        if self.write_empty and self.path is not None and self.path.suffix == ".csv" and not self._started:
            self._append_csv(frame([]))
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(path) -> pd.DataFrame:
    """One monitor log (.csv, possibly cut by a kill, or .parquet) as a normalized DataFrame; an empty
    file gives no rows; a file without the monitor's columns, or with text in a number or true/false
    column, raises :class:`~stabkit.errors.InputError`."""
    path = Path(path)
    if path.suffix == ".parquet":
        return normalize(_checked(pd.read_parquet(path), path))
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last line
    if not text.strip():
        return frame([])
    raw = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=["", "nan", "NaN"])
    return normalize(_readable_cells(_checked(raw, path), path))


def _checked(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [col for col in REQUIRED if col not in df.columns]
    if missing:
        raise InputError(f"{path} is not a stabkit monitor log (missing columns {', '.join(missing)})")
    return df


_TRUTH_VALUES = ("true", "false", "1", "0", "1.0", "0.0")


def _readable_cells(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``df`` if every cell of its number and true/false columns is one; InputError naming the first
    that is not. The monitor writes only those there, so text means a damaged or edited file, and
    :func:`normalize` would read it as NaN or False without a word (a non-finite flag "maybe" became
    "finite")."""
    for col in _FLOATS + _INTS + _BOOLS:
        if col not in df:
            continue
        values = df[col]
        if col in _BOOLS:
            bad = values.notna() & ~values.astype(str).str.strip().str.lower().isin(_TRUTH_VALUES)
        else:
            bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            kind = "true/false" if col in _BOOLS else "number"
            raise InputError(f"{path}: column {col!r} of row {row + 1} (after the header) holds {values.iloc[row]!r}, "
                             f"not a {kind}: the log is damaged or was edited; correct or delete that row")
    return df
