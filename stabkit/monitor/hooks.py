"""The patching behind :func:`watch`: one set of wrappers around ``torch.linalg.eigh``,
``eigvalsh``, ``svd``, ``stabkit.torch``'s ``eigh``, ``eigvalsh``, ``svd``, ``svdvals`` and the
Daleckii–Krein layers' decompositions (``stabkit.layers.matrix_functions.eig_dk``, ``svd_dk``),
installed while any monitor is active (reference counted over threads), each call handed to the
monitors that watch the calling thread; the optimizer post-step hook that counts steps; what a
forked child does with inherited monitors.

The rule a call's backward uses is labelled without naming methods: a plain torch.linalg call
with ``methods.EXACT`` (torch's own backward is the exact rule), a ``stabkit.torch`` call with its
Spec's text, ``values`` for torch.linalg.eigvalsh, the layers' ``DK_BACKWARD`` for a
Daleckii–Krein call (its backward is the exact derivative of g(A); ``swap_backward`` never touches it).
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

from .. import methods
import stabkit.torch
from ..layers import matrix_functions
from ..layers.matrix_functions import DK_BACKWARD
from ..methods import DEFAULT, EXACT, Spec
from .log import LiveLog, rank_file_name, refuse_a_shared_log, warn
from .recompute import recomputing
from .records import Monitor, SplitMonitor

_local = threading.local()
_lock = threading.RLock()
_active: tuple = ()            # the monitors now watching (copy-on-write under _lock)
_originals: dict | None = None  # the functions the wrappers replaced, while installed
_hook_handle = None


# --- patching: reference-counted, one set of wrappers for every monitor -------------------------
def _watchers(rerun_of: str | None = None) -> tuple:
    """The monitors a call of this thread is handed to, each Monitor reached once: a monitor active
    twice (nested) records once, and so does one that an active :class:`SplitMonitor` also logs into
    (it then gets its run's slice, as from the split alone). ``rerun_of``: the label of a call rerun in
    a backward, handed to the monitors whose forward call it repeats (:mod:`.recompute`), whichever
    thread they watch: CUDA's autograd runs the backward, and so the rerun, in a thread of its own."""
    if getattr(_local, "inside", False) or not _active:
        return ()
    tid = threading.get_ident()
    mons = dict.fromkeys(m for m in _active if (m.watches(tid) if rerun_of is None else m._reruns(rerun_of)))
    covered = {id(run) for m in mons if isinstance(m, SplitMonitor) for run in m.monitors}
    return tuple(m for m in mons if id(m) not in covered)


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
            warn(f"stabkit monitor: a call could not be logged ({type(exc).__name__}: {exc}); "
                 f"the call itself went through", stacklevel=4)


def _tensor_arg(args, kwargs):
    """The matrix a call decomposes, given positionally, as ``A=``, ``input=`` or (svd_dk) ``F=`` (None if absent)."""
    return args[0] if args else kwargs.get("A", kwargs.get("input", kwargs.get("F")))


def _watched(fn_name: str, call):
    """Wrap ``call(mons, A, args, kwargs) -> (result, backward, lam, outputs)`` of a torch function.

    While ``torch.compile`` traces, the original is called: a compiled region is not monitored
    (Dynamo cannot trace the bookkeeping, and a monitor must not break ``fullgraph=True``).
    """

    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return _originals_or_live(fn_name)(*args, **kwargs)
        rerun = recomputing()  # torch.utils.checkpoint's rerun of a logged call: run as it was, never a row
        label = _label(fn_name, args, kwargs)
        mons = _watchers(label if rerun else None)
        if not mons:
            return _originals_or_live(fn_name)(*args, **kwargs)
        A, read = _tensor_arg(args, kwargs), _triangle_read(fn_name, mons, args, kwargs)
        _local.inside = True
        try:
            try:
                result, backward, lam, outputs = call(mons, A, args, kwargs)
            except Exception as exc:
                if not rerun:  # a rerun raises checkpoint's early stop (_StopRecomputationError): no error of the model's
                    with _never_fails():
                        backward = _backward_of(fn_name, mons, A, args, kwargs)
                        for mon in mons:
                            mon._log_error(label, backward, A, exc, read)
                raise
            with _never_fails():
                for mon in mons:
                    if rerun:
                        mon._recomputed(label, A, outputs)
                    else:
                        mon._log(label, backward, A, lam, outputs, fn_name in _SINGULAR, read)
            return result
        finally:
            _local.inside = False

    wrapper.__wrapped__ = _live(fn_name)
    wrapper.__name__ = _TARGETS[fn_name][1]
    wrapper.__doc__ = getattr(wrapper.__wrapped__, "__doc__", None)
    return wrapper


#: the functions watch replaces: name → (module, attribute); ``sk_*`` are stabkit.torch's, ``dk_*``
#: the Daleckii–Krein layers' (their forward calls torch.ops.aten, which is not watched)
_TARGETS = {
    "eigh": (torch.linalg, "eigh"), "eigvalsh": (torch.linalg, "eigvalsh"), "svd": (torch.linalg, "svd"),
    "sk_eigh": (stabkit.torch, "eigh"), "sk_eigvalsh": (stabkit.torch, "eigvalsh"),
    "sk_svd": (stabkit.torch, "svd"), "sk_svdvals": (stabkit.torch, "svdvals"),
    "dk_eig": (matrix_functions, "eig_dk"), "dk_svd": (matrix_functions, "svd_dk"),
}


def _live(name):
    return getattr(*_TARGETS[name])


def _originals_or_live(name):
    orig = _originals
    return orig[name] if orig is not None else _live(name)


#: keywords of stabkit.torch's functions themselves (not method parameters)
_SK_OWN = ("A", "method", "check", "out", "UPLO", "full_matrices", "driver")


def _sk_method(fn_name, args, kwargs):
    """The method of a stabkit.torch call as given: ``method=``, else (eigh, eigvalsh) the second
    positional (the older spelling) unless it is UPLO, else the default."""
    if "method" in kwargs:
        return kwargs["method"]
    second = args[1] if len(args) > 1 and fn_name in ("sk_eigh", "sk_eigvalsh") else None
    if second is None or (isinstance(second, str) and second.upper() in ("L", "U")):
        return DEFAULT
    return second


def _label(fn_name, args, kwargs):
    """The ``fn`` column: torch's own functions by name (``eigh``); stabkit's by the dotted path they
    are imported from (``stabkit.torch.eigh[taylor]``, with the call's rule; ``stabkit.layers.matrix_functions.eig_dk``)."""
    module, attr = _TARGETS[fn_name]
    if fn_name.startswith("dk_"):
        return f"{module.__name__}.{attr}"
    if fn_name.startswith("sk_"):
        method = _sk_method(fn_name, args, kwargs)
        return f"{module.__name__}.{attr}[{method.name if isinstance(method, Spec) else method}]"
    return fn_name


def _triangle_read(fn_name, mons, args, kwargs):
    """The triangle of A the call reads ("L", "U"; None: all of A): torch's eigh and eigvalsh their UPLO
    one, eig_dk the lower one; a swapped eigh all of A (its method's forward may: power iteration does)."""
    if fn_name == "dk_eig":
        return "L"
    uplo = args[1] if len(args) > 1 else kwargs.get("UPLO", "L")
    swapped = _swap_of(mons) is not None and _swap_applies(_tensor_arg(args, kwargs), args, kwargs)
    reads_uplo = fn_name == "eigvalsh" or (fn_name == "eigh" and not swapped)
    return uplo.upper() if reads_uplo and isinstance(uplo, str) and uplo.upper() in ("L", "U") else None


def _swap_of(mons):
    return next((m for m in reversed(mons) if m.swap is not None), None)


def _backward_of(fn_name, mons, A, args, kwargs):
    if fn_name == "eigvalsh":
        return "values"
    if fn_name.startswith("dk_"):
        return DK_BACKWARD
    if fn_name.startswith("sk_"):  # the Spec the call makes of its method and parameters, as text
        method = _sk_method(fn_name, args, kwargs)
        params = {k: v for k, v in kwargs.items() if k not in _SK_OWN}
        try:
            spec = methods.spec(method)
            return str(spec.replace(**params) if params else spec)
        except Exception:  # noqa: BLE001 — an invalid spec raises in the call itself
            return str(method)
    if fn_name == "eigh" and _swap_of(mons) is not None and _swap_applies(A, args, kwargs):
        return _swap_of(mons).swap_spec
    return EXACT


def _swap_applies(A, args, kwargs):
    """The swap covers what stabkit.torch.eigh covers: real float32/float64 non-empty square matrices,
    given positionally or as ``input=`` (torch's keyword: ``A=`` is torch's TypeError), UPLO="L", no out=;
    any other call (a 1-D or non-square input: torch's own error) goes to torch unchanged."""
    return (len(args) <= 1 and set(kwargs) - {"input"} <= {"UPLO"} and kwargs.get("UPLO", "L") == "L"
            and isinstance(A, torch.Tensor) and A.dtype in (torch.float32, torch.float64)
            and A.ndim >= 2 and A.shape[-1] == A.shape[-2] > 0)


def _eigh_call(mons, A, args, kwargs):
    swapper = _swap_of(mons)
    if swapper is not None and _swap_applies(A, args, kwargs):
        # torch's contract, not stabkit's check: no symmetry test, torch's own error on NaN, no sync
        result = _originals_or_live("sk_eigh")(A, method=swapper.swap, check=False)
        backward, values = swapper.swap_spec, _sorted(result[0])  # the method's order (:func:`_sorted`)
    else:
        result = _originals_or_live("eigh")(*args, **kwargs)
        backward, values = EXACT, result[0]
    lam, U = result
    return result, backward, values, (lam, U)


def _eigvalsh_call(mons, A, args, kwargs):
    lam = _originals_or_live("eigvalsh")(*args, **kwargs)
    return lam, "values", lam, (lam,)


#: the calls whose spectrum is handed on as σ, ascending: the monitor squares it (:func:`.stats.call_stats`)
_SINGULAR = ("svd", "sk_svd", "sk_svdvals")


def _ascending(S):
    """σ ascending, detached (no autograd node per call)."""
    return S.detach().flip(-1)


def _svd_call(mons, A, args, kwargs):
    out = _originals_or_live("svd")(*args, **kwargs)
    return out, EXACT, _ascending(out[1]), tuple(out)


def _sorted(lam):
    """λ ascending, detached: a stabkit.torch method may return its pairs in another order (ascending
    |λ|, see ``stabkit.torch.eigh``), which the statistics' neighbours and λ_min would take as ascending."""
    return lam.detach().sort(-1).values


def _sk_call(fn_name, eigenvalues):
    """The call of a stabkit.torch function; ``eigenvalues(result)``: its λ ascending (σ for the SVD)."""

    def call(mons, A, args, kwargs):
        out = _originals_or_live(fn_name)(*args, **kwargs)
        return (out, _backward_of(fn_name, mons, A, args, kwargs), eigenvalues(out),
                tuple(out) if isinstance(out, tuple) else (out,))

    return call


def _dk_call(fn_name):
    """The call of a Daleckii–Krein layer's ``(g(A), λ)``: its own label, never swapped; the
    gradient norm is that reaching g(A)."""

    def call(mons, A, args, kwargs):
        C, lam = out = _originals_or_live(fn_name)(*args, **kwargs)
        return out, DK_BACKWARD, lam, (C,)

    return call


_CALLS = {
    "eigh": _eigh_call, "eigvalsh": _eigvalsh_call, "svd": _svd_call,
    "sk_eigh": _sk_call("sk_eigh", lambda out: _sorted(out[0])),
    "sk_eigvalsh": _sk_call("sk_eigvalsh", _sorted),
    "sk_svd": _sk_call("sk_svd", lambda out: _ascending(out[1])),
    "sk_svdvals": _sk_call("sk_svdvals", _ascending),
    "dk_eig": _dk_call("dk_eig"), "dk_svd": _dk_call("dk_svd"),
}


def _optimizer_hook(optimizer, args, kwargs):
    tid = threading.get_ident()
    for mon in dict.fromkeys(_active):
        if mon.watches(tid):
            mon._on_optimizer_step(optimizer)


_wrappers: dict = {}  # name → its wrapper, made once and kept: TorchScript's builtin table is keyed by id()


def _wrapper(name, original):
    """The wrapper of ``name``, made once. Where ``original`` is a TorchScript builtin (torch.linalg's), the
    wrapper is registered as that builtin, so ``torch.jit.script`` of code calling it inside ``watch``
    compiles the aten op (not monitored, as compiled code) instead of failing on the wrapper."""
    wrapper = _wrappers.get(name)
    if wrapper is None:
        wrapper = _wrappers[name] = _watched(name, _CALLS[name])
    wrapper.__wrapped__ = original
    with contextlib.suppress(Exception):  # no TorchScript: nothing to register
        from torch.jit import _builtins

        op = _builtins._find_builtin(original)
        if op is not None:
            _builtins._register_builtin(wrapper, op)
    return wrapper


def _activate(mon: Monitor):
    global _active, _originals, _hook_handle
    with _lock:
        refuse_a_shared_log(mon, _active)
        if _originals is None:
            _originals = {name: _live(name) for name in _TARGETS}
            for name, (module, attr) in _TARGETS.items():
                setattr(module, attr, _wrapper(name, _originals[name]))
            from torch.optim.optimizer import register_optimizer_step_post_hook

            _hook_handle = register_optimizer_step_post_hook(_optimizer_hook)
        _active = _active + (mon,)


def _deactivate(mon: Monitor):
    global _active, _originals, _hook_handle
    with _lock:
        mine = [i for i, m in enumerate(_active) if m is mon]
        if mine:  # one activation ends: a monitor also active in an enclosing block keeps recording
            _active = _active[:mine[-1]] + _active[mine[-1] + 1:]
        if not _active and _originals is not None:
            for name, (module, attr) in _TARGETS.items():
                setattr(module, attr, _originals[name])
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

    Nested in another ``watch``, each records every call of its own block once, into its own rows;
    a ``log_path`` that an active monitor already writes is refused (ValueError).
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
                warn(f"stabkit monitor: the log was not written ({type(error).__name__}: {error}); "
                     f"the block's own exception follows", stacklevel=3)
            else:
                raise error


@contextlib.contextmanager
def watching(mon: Monitor):
    """Let an existing :class:`Monitor` (e.g. a run's own, or a :class:`SplitMonitor`) record the
    calls of this thread inside the block; no log of its own is opened or closed."""
    _activate(mon)
    try:
        yield mon
    finally:
        _deactivate(mon)


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

