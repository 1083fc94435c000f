"""``stabkit watch [OPTIONS] -- COMMAND ARGS``: monitor the eigendecompositions of an unmodified script.

COMMAND runs as a child process whose Python starts the monitor before the user's code
(``stabkit/_watch_shim/sitecustomize.py`` first on PYTHONPATH, settings in ``$STABKIT_WATCH``), so
``from torch.linalg import eigh`` is watched too. Steps are optimizer steps. Every process of the
command writes ``LOG/eig-rank{RANK}.csv`` (one per DDP rank), appended every ``--every`` steps,
so a killed run keeps the log of every flushed step. The exit code is the command's; SIGINT and
SIGTERM are passed on to it (the watched Python then flushes its pending rows on the way out).
Every Python process started under COMMAND imports torch at start-up, and only those that call
an eigen function write a log. A COMMAND that starts Python with ``-E``, ``-I`` or ``-S`` (alone or
combined, e.g. ``python3.11 -IE``) is refused: those options skip PYTHONPATH or ``site``, so the
monitor could not start and the log would stay empty; a Python started so further down (``bash -c``)
is only named in the closing note.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

import stabkit

from ._common import folder_option, user_errors

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
SHIM = Path(stabkit.__file__).resolve().parent / "_watch_shim"


#: the interpreter options that keep the shim from running, and why
SKIPS_MONITOR = {"E": "ignores PYTHONPATH", "I": "(isolated mode) ignores PYTHONPATH", "S": "does not import site"}
_PYTHON = re.compile(r"(python|pypy)[0-9.]*[a-z]?(\.exe)?")


def monitor_skipping_options(command: List[str]) -> List[str]:
    """The options among a ``python ...`` command's own (before the script, ``-c``, ``-m``, ``-`` or
    ``--``) that skip the monitor: ``-IE`` gives ``["-I", "-E"]``; ``-W``/``-X`` arguments and
    the script's own arguments are not options."""
    if not command or not _PYTHON.fullmatch(os.path.basename(command[0])):
        return []
    found, i = [], 1
    while i < len(command):
        arg = command[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, flag in enumerate(arg[1:], start=1):
            if flag in "cm":  # the code or module follows: the options end here
                return found
            if flag in "WX":  # its argument is the rest of this word, or the next one
                i += j == len(arg) - 1
                break
            if flag in SKIPS_MONITOR and f"-{flag}" not in found:
                found.append(f"-{flag}")
        i += 1
    return found


def cannot_start(program: str, exc: OSError) -> str:
    """Why ``program`` could not be started: the OS's reason, or for a script that exists but whose
    #! interpreter does not (the OS then says the script itself is missing), that interpreter."""
    path = shutil.which(program) or program
    if exc.errno == errno.ENOENT and os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                first = f.readline(200).decode(errors="replace").strip()
        except OSError:
            first = ""
        interpreter = first[2:].strip() + " " if first.startswith("#!") else ""
        return f"cannot run {program}: its #! interpreter {interpreter}was not found"
    return f"cannot run {program}: {exc.strerror or exc}"


@user_errors
def watch_command(
    command: Optional[List[str]] = typer.Argument(None, metavar="COMMAND", help="The command to run, after --, e.g. -- python train.py --lr 0.1."),
    swap_backward: Optional[str] = typer.Option(None, "--swap-backward", help="Route torch.linalg.eigh through this registry method's backward, e.g. taylor:K=9 (default: none, torch's own backward)."),
    log: str = typer.Option("stabkit-watch", "--log", metavar="<path>", help="Folder of the logs (eig-rank{R}.csv per process)."),
    every: int = typer.Option(1, "--every", help="Append the log every N optimizer steps."),
    bound: Optional[str] = typer.Option(None, "--bound", help="Also log max|F_ij| of this method's backward (default: --swap-backward's)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard scalars under LOG/tensorboard/."),
):
    """Run COMMAND with every eigh/eigvalsh/svd call logged live; then `stabkit monitor report LOG`."""
    from stabkit import methods

    command = list(command or [])
    if not command:
        raise ValueError("no command to watch: stabkit watch [OPTIONS] -- python train.py ARGS")
    if every < 1:
        raise ValueError(f"--every must be ≥ 1, got {every}")
    log = folder_option(log, "--log", "the logs' folder", "stabkit-watch")
    # parsed once, here; the watched process gets the canonical text (its Monitor makes it a Spec again)
    swap_backward, bound = (str(methods.spec(text)) if text is not None else None for text in (swap_backward, bound))
    if command[0].startswith("-"):  # an option typo lands here: options of watch come before --
        raise ValueError(f"no such option: {command[0]} (see `stabkit watch --help`); the command to watch goes after --")
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(f"command not found: {command[0]}")
    skipping = monitor_skipping_options(command)
    if skipping:
        why = "; ".join(f"{flag} {SKIPS_MONITOR[flag[1]]}" for flag in skipping)
        raise ValueError(f"`{os.path.basename(command[0])} {' '.join(skipping)}` would run without the monitor, which stabkit "
                         f"watch starts through PYTHONPATH and site's sitecustomize ({why}): the log would stay empty; "
                         f"drop {' and '.join(skipping)}, or call stabkit.monitor.watch in the script")
    if log.exists() and not log.is_dir():
        raise ValueError(f"--log {log} exists and is not a folder")
    try:
        log.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--log {log}: cannot create the folder: it or a folder above it is a file") from None
    except OSError as exc:  # no such parent under /proc, no permission, read-only file system, ...
        raise ValueError(f"--log {log}: cannot create the folder: {exc.strerror or exc}") from None
    env = dict(os.environ)
    root = str(SHIM.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["STABKIT_WATCH"] = json.dumps({"log_dir": str(log.resolve()), "every": every, "swap_backward": swap_backward,
                                       "bound": bound, "tensorboard": tensorboard})
    stale = sorted(p.name for p in log.glob("eig-*.csv"))
    if stale:
        print(f"stabkit watch: {log} already holds {', '.join(stale)}; a process of the same rank overwrites its file, "
              f"the others stay and `stabkit monitor report` reads them too", file=sys.stderr)
    started = time.time()
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise ValueError(cannot_start(command[0], exc)) from None
    forwarded = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
    logs = sorted(p.name for p in log.glob("eig-*.csv") if p.stat().st_mtime >= started - 1.0)
    if logs:
        print(f"stabkit watch: {len(logs)} log(s) in {log}: {', '.join(logs)}; next: stabkit monitor report {log}", file=sys.stderr)
    else:
        print("stabkit watch: no eigh/eigvalsh/svd call was logged: the command made none, or the monitor did not start "
              f"in it — its Python must import torch and stabkit, as {sys.executable} does (a line above says what "
              "failed), and a Python started with -E, -I or -S skips the monitor", file=sys.stderr)
    raise typer.Exit(code=code if code >= 0 else 128 - code)
