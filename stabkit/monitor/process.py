"""The monitor for a whole process: what ``stabkit watch -- python train.py`` starts in the script.

``stabkit watch`` puts its settings in ``$STABKIT_WATCH`` (JSON) and ``stabkit/_watch_shim`` first
on ``PYTHONPATH``; that folder's ``sitecustomize`` calls :func:`start_from_environment` before the
user's code runs. The monitor records every thread, counts optimizer steps, appends
``LOG/eig-rank{R}.csv`` every N steps (R from ``RANK``/``LOCAL_RANK``: one file per DDP process)
and flushes the rest at exit; SIGTERM exits through ``atexit`` when no handler was set. A forked
child starts its own monitor writing ``eig-rank{R}-pid{PID}.csv``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading

from ..methods import Spec
from . import hooks
from .log import LiveLog, rank_file_name
from .records import Monitor

ENV_VAR = "STABKIT_WATCH"
_settings: dict | None = None   # the settings of this process's monitor, once started


def start_process_monitor(log_dir, every: int = 1, swap_backward: Spec | str | None = None, bound: Spec | str | None = None,
                          tensorboard: bool = False, _pid_in_name: bool = False) -> Monitor:
    """Watch every thread of this process until it exits; returns the :class:`~stabkit.monitor.Monitor`.

    The log is created at the first flush, so processes that never call an eigen function leave
    no file.
    """
    global _settings
    name = rank_file_name(pid=_pid_in_name)
    tb = os.path.join(str(log_dir), "tensorboard", name.rsplit(".", 1)[0]) if tensorboard else None
    log = LiveLog(os.path.join(str(log_dir), name), tb, write_empty=False)
    mon = Monitor(bound=bound or swap_backward, swap_backward=swap_backward, all_threads=True, log=log,
                           every=every, keep_records=False)
    hooks._activate(mon)
    _settings = {"log_dir": log_dir, "every": every, "swap_backward": swap_backward, "bound": bound, "tensorboard": tensorboard}

    def _finish():
        hooks._deactivate(mon)
        error = mon.close()
        if error is not None:
            print(f"stabkit watch: the log was not written completely ({type(error).__name__}: {error})", file=sys.stderr)

    atexit.register(_finish)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return mon


def _exit_on_sigterm(signum, frame_):
    sys.exit(128 + signum)


def stop_process_monitor(mon: Monitor):
    """Undo :func:`start_process_monitor` before the process exits (flush, close, unpatch); returns the log error, if any."""
    global _settings
    hooks._deactivate(mon)
    _settings = None
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
    if _settings is None:
        return
    try:
        start_process_monitor(**_settings, _pid_in_name=True)
    except Exception as exc:  # noqa: BLE001 — never break the child over its log
        print(f"stabkit watch: monitoring not started in forked child {os.getpid()} ({exc})", file=sys.stderr)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
