"""Atomic writes: the one routine every file the project writes goes through (study cells and
results, the ground-truth cache, the decoded-data cache), so an interrupted run never leaves a
half-written file where a finished one is expected; and the one message (a StorageError) for a
write the disk or its permissions refuse."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Callable

#: errno values that mean "the output cannot be written" (not a bug): a StorageError, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def storage_errors(kept: str):
    """An OSError meaning the output cannot be written (:data:`STORAGE_ERRNOS`) becomes a StorageError
    ``cannot write <path>: <cause>; <kept>``, where ``kept`` says what is kept and how to finish; any
    other OSError passes unchanged. The one place that message is built."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        from .errors import StorageError  # stabkit.errors imports numpy; this module stays light

        raise StorageError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}; {kept}") from exc


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def replace_atomic(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``; on any failure
    the temporary is removed and the old ``path`` stays as it was. ``durable`` also syncs the
    directory, so the rename survives a crash."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (:func:`replace_atomic`), synced to disk."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())

    replace_atomic(path, write, durable)


def write_text_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), durable)
