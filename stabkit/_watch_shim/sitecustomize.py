"""Started by ``stabkit watch``: Python runs this file at start-up (it is first on PYTHONPATH), so
the monitor patches torch before the user's script imports anything — ``from torch.linalg
import eigh`` then binds the watched function. Another ``sitecustomize`` on the path still runs."""

import importlib.machinery
import importlib.util
import os
import sys

try:
    from stabkit.monitor.process import start_from_environment

    start_from_environment()
except Exception as exc:  # noqa: BLE001 — never stop the user's program because of the monitor
    # name the interpreter: the usual cause is a `python` on PATH other than the one with torch and stabkit
    print(f"stabkit watch: monitoring not started in this process, {sys.executable} ({type(exc).__name__}: {exc})",
          file=sys.stderr)

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
