"""The monitor for a whole process: what ``stabkit watch -- python train.py`` starts in the script.

``stabkit watch`` puts its settings in ``$STABKIT_WATCH`` (JSON) and ``stabkit/_watch_shim`` first
on ``PYTHONPATH``; that folder's ``sitecustomize`` calls :func:`start_from_environment` before the
user's code runs. The monitor records every thread, counts optimizer steps, appends
``LOG/eig-rank{R}.csv`` every N steps (R from ``RANK``/``LOCAL_RANK``: one file per DDP process)
and flushes the rest at exit; SIGTERM exits through ``atexit`` when no handler was set. A forked
child starts its own monitor writing ``eig-rank{R}-pid{PID}.csv``; so does a process whose
``eig-rank{R}.csv`` is held (``flock``) by another live process (a second run into the same folder).
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.util
import os
import signal
import sys
import threading
from pathlib import Path

from ..methods import Spec
from . import hooks
from .log import LiveLog, rank_file_name
from .records import Monitor

ENV_VAR = "STABKIT_WATCH"
_settings: dict | None = None   # the settings of this process's monitor, once started
_finish_this_process = None     # flushes, closes and unpatches this process's monitor (once)
_running = None                 # this process's monitor, while started


def start_process_monitor(log_dir, every: int = 1, swap_backward: Spec | str | None = None, bound: Spec | str | None = None,
                          tensorboard: bool = False, _pid_in_name: bool = False) -> Monitor:
    """Watch every thread of this process until it exits; returns the :class:`~stabkit.monitor.Monitor`.

    The log is created at the first flush, so processes that never call an eigen function leave
    no file. A process has one such monitor: a second start with the same settings (``sitecustomize``
    run again, a script that starts it itself) returns the running one (a second monitor logged every
    call twice, into two files); with other settings it raises RuntimeError.
    """
    global _settings, _finish_this_process, _running
    settings = {"log_dir": log_dir, "every": every, "swap_backward": swap_backward, "bound": bound,
                "tensorboard": tensorboard}
    if _running is not None and _running in hooks._active:
        if settings == _settings:
            return _running
        raise RuntimeError(f"this process is already watched by stabkit watch ({_settings}); "
                           f"a second process monitor ({settings}) would log every call twice")
    log = _ProcessLog(log_dir, tensorboard, _pid_in_name)
    mon = Monitor(bound=bound or swap_backward, swap_backward=swap_backward, all_threads=True, log=log,
                           every=every, keep_records=False)
    hooks._activate(mon)
    _settings, _running = settings, mon

    def _finish():
        if mon.log is None and mon not in hooks._active:
            return  # already finished (a multiprocessing child runs both its finalizers and atexit)
        hooks._deactivate(mon)
        error = mon.close()
        if error is not None:
            print(f"stabkit watch: the log was not written completely ({type(error).__name__}: {error})", file=sys.stderr)

    atexit.register(_finish)
    _finish_this_process = _finish
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return mon


class _ProcessLog(LiveLog):
    """The log of one process, named at its first write: a child started by ``spawn``
    (``torch.multiprocessing.spawn``, DataLoader workers in a spawn context) runs ``sitecustomize``
    before multiprocessing knows it is a child, and named then it took (and truncated) its parent's
    ``eig-rank{R}.csv``; a ``RANK`` the script sets itself counts too."""

    def __init__(self, log_dir, tensorboard: bool, pid_in_name: bool):
        super().__init__(os.path.join(str(log_dir), rank_file_name(pid=pid_in_name)), None, write_empty=False)
        self._dir, self._with_tb, self._pid_in_name, self._named = str(log_dir), tensorboard, pid_in_name, False

    def append(self, df):
        if not self._named and not df.empty:
            self._named = True
            name = rank_file_name(pid=self._pid_in_name)
            if not self._claim(Path(self._dir) / name):  # a live process of the same rank writes it (a second
                name = rank_file_name(pid=True)          # run into the same --log): its own file, not interleaved rows
                self._claim(Path(self._dir) / name)
            self.path = Path(self._dir) / name
            if self._with_tb:
                self.tensorboard_dir = os.path.join(self._dir, "tensorboard", name.rsplit(".", 1)[0])
        super().append(df)


    _lock_fd = None

    def _claim(self, path: Path) -> bool:
        """Hold an exclusive ``flock`` on ``path`` for this process's life; False where another live
        process holds it. Where flock is unavailable, every file counts as free (as before)."""
        try:
            import fcntl
        except ImportError:
            return True
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return True  # the write itself will report it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def close(self):
        try:
            super().close()
        finally:
            if self._lock_fd is not None:
                fd, self._lock_fd = self._lock_fd, None
                os.close(fd)


def _exit_on_sigterm(signum, frame_):
    sys.exit(128 + signum)


def stop_process_monitor(mon: Monitor):
    """Undo :func:`start_process_monitor` before the process exits (flush, close, unpatch); returns the log error, if any."""
    global _settings, _running
    hooks._deactivate(mon)
    _settings = _running = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return mon.close()


def start_from_environment() -> Monitor | None:
    """:func:`start_process_monitor` with the settings ``stabkit watch`` put in ``$STABKIT_WATCH``."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    cfg = json.loads(raw)
    return start_process_monitor(cfg["log_dir"], every=cfg.get("every", 1), swap_backward=cfg.get("swap_backward"),
                                 bound=cfg.get("bound"), tensorboard=cfg.get("tensorboard", False))


def _after_fork_in_child():
    """Runs after :func:`stabkit.monitor.hooks._after_fork_in_child` has dropped the inherited monitors."""
    global _finish_this_process, _running
    _finish_this_process = _running = None
    if _settings is None:
        return
    try:
        start_process_monitor(**_settings, _pid_in_name=True)
    except Exception as exc:  # noqa: BLE001 — never break the child over its log
        print(f"stabkit watch: monitoring not started in forked child {os.getpid()} ({exc})", file=sys.stderr)


def _finish_at_multiprocessing_exit(_module):
    """In a multiprocessing child (a DataLoader worker), after multiprocessing dropped the exit
    finalizers it inherited: such a child leaves through ``os._exit``, past ``atexit``, so its
    monitor is finished by multiprocessing's own exit finalizers (or it would never write a row)."""
    if _finish_this_process is not None:
        multiprocessing.util.Finalize(None, _finish_this_process, exitpriority=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(sys.modules[__name__], _finish_at_multiprocessing_exit)
