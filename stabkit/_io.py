"""Atomic writes: the one routine every file the project writes goes through (study cells and
results, the ground-truth cache, the decoded-data cache), so an interrupted run never leaves a
half-written file where a finished one is expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


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
