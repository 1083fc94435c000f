"""The patching behind :func:`watch`: one set of wrappers around ``torch.linalg.eigh``,
``eigvalsh``, ``svd`` and ``stabkit.torch.eigh``, installed while any monitor is active (reference
counted over threads), each call handed to the monitors that watch the calling thread; the
optimizer post-step hook that counts steps; what a forked child does with inherited monitors.

The rule a call's backward uses is labelled without naming methods: a plain torch.linalg call
with ``methods.EXACT`` (torch's own backward is the exact rule), a ``stabkit.torch.eigh`` call with
its Spec's text, ``values`` for eigvalsh.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch

from .. import methods
import stabkit.torch
from ..methods import DEFAULT, EXACT, Spec
from .log import LiveLog, rank_file_name
from .records import Monitor

_local = threading.local()
_lock = threading.RLock()
_active: tuple = ()            # the monitors now watching (copy-on-write under _lock)
_originals: dict | None = None  # the functions the wrappers replaced, while installed
_hook_handle = None


# --- patching: reference-counted, one set of wrappers for every monitor -------------------------
def _watchers() -> tuple:
    if getattr(_local, "inside", False) or not _active:
        return ()
    tid = threading.get_ident()
    return tuple(m for m in _active if m.watches(tid))


_warned_internal = False


@contextlib.contextmanager
def _never_fails():
    """The monitor's own bookkeeping never breaks the user's call: a failure there is warned about once."""
    global _warned_internal
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        if not _warned_internal:
            _warned_internal = True
            warnings.warn(f"stabkit monitor: a call could not be logged ({type(exc).__name__}: {exc}); "
                          f"the call itself went through", stacklevel=4)


def _watched(fn_name: str, call):
    """Wrap ``call(mons, *args, **kwargs) -> (result, backward, A, lam, outputs)`` of a torch function."""

    def wrapper(*args, **kwargs):
        mons = _watchers()
        if not mons:
            return _originals_or_live(fn_name)(*args, **kwargs)
        _local.inside = True
        try:
            try:
                result, backward, A, lam, outputs = call(mons, *args, **kwargs)
            except Exception as exc:
                with _never_fails():
                    backward = _backward_of(fn_name, mons, args, kwargs)
                    for mon in mons:
                        mon._log_error(_label(fn_name, args, kwargs), backward, args[0] if args else kwargs.get("A"), exc)
                raise
            with _never_fails():
                for mon in mons:
                    mon._log(_label(fn_name, args, kwargs), backward, A, lam, outputs)
            return result
        finally:
            _local.inside = False

    wrapper.__wrapped__ = _TORCH_FUNCS[fn_name]()
    wrapper.__name__ = fn_name
    wrapper.__doc__ = getattr(wrapper.__wrapped__, "__doc__", None)
    return wrapper


_TORCH_FUNCS = {
    "eigh": lambda: torch.linalg.eigh, "eigvalsh": lambda: torch.linalg.eigvalsh,
    "svd": lambda: torch.linalg.svd, "sk": lambda: stabkit.torch.eigh,
}


def _originals_or_live(name):
    orig = _originals
    return orig[name] if orig is not None else _TORCH_FUNCS[name]()


#: keywords of ``stabkit.torch.eigh`` itself (not method parameters)
_SK_OWN = ("method", "check", "out", "UPLO")


def _sk_method(args, kwargs):
    """The method of a ``stabkit.torch.eigh(A, ...)`` call as given: ``method=``, else the second
    positional (the older spelling) unless it is UPLO, else the default."""
    if "method" in kwargs:
        return kwargs["method"]
    second = args[1] if len(args) > 1 else None
    if second is None or (isinstance(second, str) and second.upper() in ("L", "U")):
        return DEFAULT
    return second


def _label(fn_name, args, kwargs):
    if fn_name == "sk":
        method = _sk_method(args, kwargs)
        return f"stabkit.eigh[{method.name if isinstance(method, Spec) else method}]"
    return fn_name


def _swap_of(mons):
    return next((m for m in reversed(mons) if m.swap is not None), None)


def _backward_of(fn_name, mons, args, kwargs):
    if fn_name == "eigvalsh":
        return "values"
    if fn_name == "sk":  # the Spec the call makes of its method and parameters, as text
        method = _sk_method(args, kwargs)
        params = {k: v for k, v in kwargs.items() if k not in _SK_OWN}
        try:
            spec = methods.spec(method)
            return str(spec.replace(**params) if params else spec)
        except Exception:  # noqa: BLE001 — an invalid spec raises in the call itself
            return str(method)
    if fn_name == "eigh" and _swap_applies(args, kwargs) and _swap_of(mons) is not None:
        return _swap_of(mons).swap_spec
    return EXACT


def _swap_applies(args, kwargs):
    """The swap covers what stabkit.torch.eigh covers: real float32/float64 input, UPLO="L", no out=;
    any other call goes to torch unchanged."""
    A = args[0] if args else None
    return (len(args) == 1 and set(kwargs) <= {"UPLO"} and kwargs.get("UPLO", "L") == "L"
            and isinstance(A, torch.Tensor) and A.dtype in (torch.float32, torch.float64))


def _eigh_call(mons, A=None, *args, **kwargs):
    if A is None:
        A = kwargs.pop("input")
    swapper = _swap_of(mons)
    if swapper is not None and _swap_applies((A, *args), kwargs):
        lam, U = _originals_or_live("sk")(A, method=swapper.swap)
        result = stabkit.torch.EighResult(lam, U)
        backward = swapper.swap_spec
    else:
        result = _originals_or_live("eigh")(A, *args, **kwargs)
        lam, U = result
        backward = EXACT
    return result, backward, A, lam, (lam, U)


def _eigvalsh_call(mons, A=None, *args, **kwargs):
    if A is None:
        A = kwargs.pop("input")
    lam = _originals_or_live("eigvalsh")(A, *args, **kwargs)
    return lam, "values", A, lam, (lam,)


def _svd_call(mons, A=None, *args, **kwargs):
    if A is None:
        A = kwargs.pop("input")
    out = _originals_or_live("svd")(A, *args, **kwargs)
    return out, EXACT, A, (out[1] ** 2).flip(-1), tuple(out)


def _sk_call(mons, A, *args, **kwargs):
    out = _originals_or_live("sk")(A, *args, **kwargs)
    return out, _backward_of("sk", mons, (A, *args), kwargs), A, out[0], tuple(out)


def _optimizer_hook(optimizer, args, kwargs):
    tid = threading.get_ident()
    for mon in _active:
        if mon.watches(tid):
            mon._on_optimizer_step(optimizer)


def _activate(mon: Monitor):
    global _active, _originals, _hook_handle
    with _lock:
        if _originals is None:
            _originals = {name: get_() for name, get_ in _TORCH_FUNCS.items()}
            torch.linalg.eigh = _watched("eigh", _eigh_call)
            torch.linalg.eigvalsh = _watched("eigvalsh", _eigvalsh_call)
            torch.linalg.svd = _watched("svd", _svd_call)
            stabkit.torch.eigh = _watched("sk", _sk_call)
            from torch.optim.optimizer import register_optimizer_step_post_hook

            _hook_handle = register_optimizer_step_post_hook(_optimizer_hook)
        _active = _active + (mon,)


def _deactivate(mon: Monitor):
    global _active, _originals, _hook_handle
    with _lock:
        _active = tuple(m for m in _active if m is not mon)
        if not _active and _originals is not None:
            torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd = _originals["eigh"], _originals["eigvalsh"], _originals["svd"]
            stabkit.torch.eigh = _originals["sk"]
            _originals = None
            if _hook_handle is not None:
                _hook_handle.remove()
                _hook_handle = None


@contextlib.contextmanager
def watch(log_path=None, tensorboard_dir=None, swap_backward: Spec | str | None = None, bound: Spec | str | None = None,
          every: int = 1, all_threads: bool = False):
    """Monitor eigen calls inside the block (see :mod:`stabkit.monitor`). Yields the :class:`Monitor`.

    ``log_path``: ``.csv`` (append per flush) or ``.parquet`` (row group per flush), flushed every
    ``every`` steps and at exit; ``{rank}`` in it becomes the DDP rank (``RANK``/``LOCAL_RANK``). ``tensorboard_dir``: scalars per call site at each flush if
    ``torch.utils.tensorboard`` imports (else a warning says so). ``swap_backward``: a method spec
    (Spec or text, made a Spec once by the Monitor) for ``torch.linalg.eigh``'s backward. ``bound``:
    a method spec whose max |F_ij| is logged as ``bound`` (default: ``swap_backward``). ``all_threads``: record every thread's calls, not only
    this thread's. A log write error never replaces an exception raised in the block: it is
    warned about and the block's exception propagates; without one it is raised at exit.
    """
    if log_path is not None and "{rank}" in str(log_path):
        log_path = str(log_path).replace("{rank}", rank_file_name(prefix="", suffix="").removeprefix("-rank"))
    log = LiveLog(log_path, tensorboard_dir) if (log_path is not None or tensorboard_dir is not None) else None
    mon = Monitor(bound=bound or swap_backward, swap_backward=swap_backward, all_threads=all_threads, log=log, every=every)
    _activate(mon)
    user_exc = None
    try:
        yield mon
    except BaseException as exc:
        user_exc = exc
        raise
    finally:
        _deactivate(mon)
        error = mon.close() if log is not None else None
        if error is not None:
            if user_exc is not None:
                warnings.warn(f"stabkit monitor: the log was not written ({type(error).__name__}: {error}); "
                              f"the block's own exception follows", stacklevel=3)
            else:
                raise error


# --- fork ---------------------------------------------------------------------------------------
def _after_fork_in_child():
    """A forked child (e.g. a DataLoader worker) drops the monitors it inherited — their rows and
    log belong to the parent. The wrappers stay installed and pass calls through."""
    global _active, _lock
    _lock = threading.RLock()
    inherited, _active = _active, ()
    for mon in inherited:
        mon.log, mon._rows = None, []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

