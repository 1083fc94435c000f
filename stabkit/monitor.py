"""Instability monitor: log what every eigendecomposition in a model sees, without touching the model.

    with stabkit.monitor.watch(log_path="eig.csv") as mon:
        for x, y in loader:
            loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    mon.records          # pandas DataFrame, one row per call

or, for a script that is not edited at all, ``stabkit watch -- python train.py`` (see
:mod:`stabkit.monitor_process`).

Inside ``watch`` the functions ``torch.linalg.eigh``, ``torch.linalg.eigvalsh``,
``torch.linalg.svd`` and ``stabkit.torch.eigh`` are replaced by wrappers (restored when the last
``watch`` exits, so outside it they are the originals: zero overhead). Each call logs, per call
site (``file:line`` of the first caller frame outside torch and stabkit's eigen internals) and step:

* ``min_gap``: smallest |λ_i − λ_j| over the batch (for svd: of σ², the eigenvalues of AᵀA);
* ``min_rel_gap``: min gap / max |λ| of the same matrix (minimum over the batch);
* ``max_K``: max |K̃_ij| = 1 / min_gap, the analytic backward's largest coefficient;
* ``lam_min``: smallest eigenvalue; ``bound``: max |F_ij| of ``bound``'s method (see ``watch``);
* ``grad_norm``: the norm of the gradient reaching the outputs (a tensor hook; NaN until the
  backward ran, or when the outputs do not require grad); ``grad_in_norm``: the norm of ∂L/∂A,
  the gradient this call's backward hands on (through every use of A; NaN when A is a leaf);
  both are ∞ when the gradient held inf or NaN (so a CSV keeps "non-finite" apart from "none");
* ``input_nonfinite``: the input held inf/NaN; ``nonfinite``: input, output, incoming gradient or
  ∂L/∂A did;
* ``backward``: the rule the call's backward uses (``analytic`` for torch's own, the registry spec
  otherwise, ``values`` for eigvalsh whose backward has no 1/(λ_i − λ_j));
* ``error``: empty, or ``Type: message`` when the call raised (e.g. eigh on a NaN input): the call
  is logged, the log is flushed at once, and the exception propagates unchanged.

**Steps.** ``mon.step()`` advances the step. A user who never calls it gets optimizer steps: a
global ``torch.optim`` post-step hook counts each optimizer's steps and the step is the largest
count (several optimizers stepping once per iteration count once). The first ``mon.step()`` call
switches the monitor to manual counting for good.

**Live logs.** With ``log_path`` the rows of finished steps are appended every ``every`` steps
(``.csv``: one append per flush, so a killed process leaves every flushed step readable;
``.parquet``: one row group per flush, readable only once the file is closed — prefer ``.csv``
where the process may be killed). ``tensorboard_dir`` gets per-site scalars at each flush. A
step's rows are written once the step is over, so its backward's gradient norms are in them; a
backward run after that (gradient accumulation over steps) reaches ``records`` but not the log.

**Threads.** Patching is reference-counted: the wrappers stay installed while any ``watch`` is
active in any thread and the originals come back when the last one exits, whatever the order.
A ``watch`` records the calls of the thread that entered it (``all_threads=True``: every thread);
nested watches in one thread both record each call. A call made from inside a watched call
(stabkit.torch.eigh's own torch.linalg.eigh) is not logged twice. A forked child process (a
DataLoader worker) drops the monitors it inherited, so it never writes into its parent's log;
under ``stabkit watch`` it starts its own (``eig-rank{R}-pid{PID}.csv``, :mod:`.monitor_process`).

Callers that imported the function object before ``watch`` (``from torch.linalg import eigh``)
are not intercepted by ``watch``; ``stabkit watch`` patches before the user's code runs, so they
are. ``swap_backward="taylor:K=9"`` routes ``torch.linalg.eigh`` through ``stabkit.torch.eigh``
with that registry method's backward. Scalars stay on the device until a flush or ``records``
(no synchronisation per call).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import warnings
import weakref

import numpy as np
import pandas as pd
import torch

from . import torch as sktorch
from .methods import format_spec, get, parse_spec
from .methods import spec as methods_spec
from .monitor_log import COLUMNS, LiveLog, frame, rank_file_name

_SKIP_PARTS = (os.sep + "torch" + os.sep, os.sep + "stabkit" + os.sep + "methods" + os.sep)
_SKIP_FILES = {os.path.abspath(__file__), os.path.abspath(sktorch.__file__),
               os.path.abspath(os.path.join(os.path.dirname(__file__), "_xp.py"))}
_local = threading.local()
_lock = threading.RLock()
_active: tuple = ()            # the monitors now watching (copy-on-write under _lock)
_originals: dict | None = None  # the functions the wrappers replaced, while installed
_hook_handle = None


_site_of_file: dict = {}


def _site_file(filename: str):
    """The name a call site is shown with, or None for files to look through (cached per file)."""
    try:
        return _site_of_file[filename]
    except KeyError:
        file = os.path.abspath(filename)
        if file in _SKIP_FILES or any(p in file for p in _SKIP_PARTS) or "autograd" in file:
            shown = None
        else:
            rel = os.path.relpath(file)
            shown = rel if not rel.startswith("..") else file
        _site_of_file[filename] = shown
        return shown


def _call_site() -> str:
    frame_ = sys._getframe(2)
    while frame_ is not None:
        shown = _site_file(frame_.f_code.co_filename)
        if shown is not None:
            return f"{shown}:{frame_.f_lineno}"
        frame_ = frame_.f_back
    return "?"


def bound_kernel(spec: str | None):
    """λ (..., d) → max |F_ij| of the method's backward coefficient matrix, or None.

    Kernel methods (analytic, taylor, clip, …) use their own F; ``pi`` and ``pi-forward`` use the
    degree-T Taylor magnitude (T = power-iteration steps), the bound of back-propagation through T
    power iterations (Wang et al., TPAMI 2021, Sec. 4).
    """
    if not spec:
        return None
    bound = methods_spec(spec)
    if bound.method.kernel is None and bound.method.bound_kernel is None:
        return None
    return bound.bound


class Monitor:
    """The rows of one ``watch``; ``step()`` advances the step (see the module doc)."""

    def __init__(self, bound=None, swap_backward: str | None = None, all_threads: bool = False,
                 log: LiveLog | None = None, every: int = 1, keep_records: bool = True):
        if int(every) < 1:
            raise ValueError(f"every must be ≥ 1 step, got {every}")
        self._rows: list[dict] = []
        self._flushed = 0            # rows[:_flushed] are in the log
        self._manual = None          # step count of mon.step() once it has been called
        self._opt_counts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last_flush_step = 0
        self._bound = bound_kernel(bound)
        self._bound_spec = bound
        self.swap = parse_spec(swap_backward) if swap_backward else None
        self.swap_spec = format_spec(*self.swap) if self.swap else None
        self.thread = threading.get_ident()
        self.all_threads = all_threads
        self.log, self.every, self.keep_records = log, int(every), keep_records
        self.log_error: BaseException | None = None
        self._flush_lock = threading.Lock()

    # --- steps ---------------------------------------------------------------------------------
    def step(self, n: int = 1):
        self._manual = (self._manual if self._manual is not None else 0) + n
        self._advanced()

    @property
    def current_step(self) -> int:
        if self._manual is not None:
            return self._manual
        return max(self._opt_counts.values(), default=0)

    def _on_optimizer_step(self, optimizer):
        self._opt_counts[optimizer] = self._opt_counts.get(optimizer, 0) + 1
        if self._manual is None:
            self._advanced()

    def _advanced(self):
        if self.log is not None and self.current_step - self._last_flush_step >= self.every:
            self.flush(upto_step=self.current_step)

    def watches(self, thread_id: int) -> bool:
        return self.all_threads or thread_id == self.thread

    # --- rows ----------------------------------------------------------------------------------
    def _log(self, fn, backward, A, lam, outputs):
        with torch.no_grad():
            lam = lam.detach()
            if lam.ndim == 1:
                lam = lam[None]
            s = lam.reshape(-1, lam.shape[-1])  # ascending (the callers pass σ² flipped)
            input_finite = torch.isfinite(A.detach()).all()
            finite = input_finite & torch.isfinite(lam).all()
            if s.shape[-1] > 1:
                gaps = (s[:, 1:] - s[:, :-1]).abs().amin(-1)
                scale = s.abs().amax(-1).clamp_min(torch.finfo(s.dtype).tiny)
                min_gap, min_rel = gaps.amin(), (gaps / scale).amin()
            else:
                min_gap = min_rel = torch.full((), float("inf"), dtype=s.dtype, device=s.device)
            row = {"step": self.current_step, "site": _call_site(), "fn": fn, "backward": backward,
                   "batch": int(s.shape[0]), "n": int(s.shape[-1]), "dtype": str(A.dtype).replace("torch.", ""),
                   "min_gap": min_gap, "min_rel_gap": min_rel, "max_K": 1.0 / min_gap, "lam_min": s[:, 0].amin(),
                   "bound": np.nan, "grad_norm": np.nan, "grad_in_norm": np.nan, "input_nonfinite": ~input_finite, "nonfinite": ~finite, "error": ""}
            if self._bound is not None and s.shape[-1] > 1:
                row["bound"] = self._bound(s).amax()
        self._rows.append(row)
        for out in outputs:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g, row=row: self._on_grad(g, row))
        if A.requires_grad and A.grad_fn is not None:  # a leaf would keep the hook for good
            A.register_hook(lambda g, row=row: self._on_input_grad(g, row))
        return row

    def _log_error(self, fn, backward, A, exc: BaseException):
        """A call that raised: one row with the error, flushed at once (the run is likely to end)."""
        A = A.detach() if isinstance(A, torch.Tensor) else None
        input_finite = bool(torch.isfinite(A).all()) if A is not None and A.is_floating_point() else True
        shape = tuple(A.shape) if A is not None else ()
        row = {"step": self.current_step, "site": _call_site(), "fn": fn, "backward": backward,
               "batch": int(np.prod(shape[:-2])) if len(shape) >= 2 else 1, "n": int(shape[-1]) if shape else 0,
               "dtype": str(A.dtype).replace("torch.", "") if A is not None else "?",
               "min_gap": np.nan, "min_rel_gap": np.nan, "max_K": np.nan, "lam_min": np.nan, "bound": np.nan,
               "grad_norm": np.nan, "grad_in_norm": np.nan, "input_nonfinite": not input_finite, "nonfinite": True,
               "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
        self._rows.append(row)
        if self.log is not None:
            self.flush()

    @staticmethod
    def _on_grad(g, row):
        """Accumulate ‖∂L/∂output‖² over the call's outputs (only a scalar is kept, never the gradient)."""
        if g is not None:
            sq = g.detach().double().square().sum()
            row["_sq"] = row["_sq"] + sq if "_sq" in row else sq

    @staticmethod
    def _on_input_grad(g, row):
        """‖∂L/∂A‖² (through every use of A): non-finite with a finite incoming gradient means this
        call's own backward made it so."""
        if g is not None:
            row["_sq_in"] = g.detach().double().square().sum()

    @staticmethod
    def _materialize(row: dict) -> dict:
        """A row of Python scalars: gradient norms from the squared sums (∞ when non-finite)."""
        out = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items() if not k.startswith("_sq")}
        for key, sq in (("grad_norm", row.get("_sq")), ("grad_in_norm", row.get("_sq_in"))):
            if sq is not None:
                sq = float(sq)
                out[key] = math.sqrt(sq) if math.isfinite(sq) else math.inf
                out["nonfinite"] = bool(out["nonfinite"]) or not math.isfinite(sq)
        return out

    @property
    def records(self) -> pd.DataFrame:
        """Every row so far (with ``keep_records=False``: only those not yet flushed)."""
        return frame([self._materialize(r) for r in list(self._rows)])

    # --- live log ------------------------------------------------------------------------------
    def flush(self, upto_step: int | None = None):
        """Append the rows not yet logged (those of steps < ``upto_step`` if given) to the log.

        A write error is kept in ``log_error`` and warned about once; the log is then off (the
        training is never stopped by its log).
        """
        if self.log is None:
            return
        with self._flush_lock:
            rows = self._rows
            end = len(rows)
            if upto_step is not None:
                while end > self._flushed and rows[end - 1]["step"] >= upto_step:
                    end -= 1
            if upto_step is not None:
                self._last_flush_step = upto_step
            if end <= self._flushed:
                return
            chunk = frame([self._materialize(r) for r in rows[self._flushed:end]])
            try:
                self.log.append(chunk)
            except Exception as exc:  # noqa: BLE001 — reported, never allowed to stop the training
                self.log_error = exc
                log, self.log = self.log, None
                warnings.warn(f"stabkit monitor: writing the log failed ({type(exc).__name__}: {exc}); logging stopped", stacklevel=2)
                with contextlib.suppress(Exception):
                    log.close()
                return
            if self.keep_records:
                self._flushed = end
            else:
                del rows[:end]
                self._flushed = 0

    def close(self):
        """Flush every pending row and close the log; returns the write error, if any."""
        self.flush()
        if self.log is not None:
            try:
                self.log.close()
            except Exception as exc:  # noqa: BLE001
                self.log_error = exc
            self.log = None
        return self.log_error


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
    "svd": lambda: torch.linalg.svd, "sk": lambda: sktorch.eigh,
}


def _originals_or_live(name):
    orig = _originals
    return orig[name] if orig is not None else _TORCH_FUNCS[name]()


def _label(fn_name, args, kwargs):
    if fn_name == "sk":
        return f"stabkit.eigh[{args[1] if len(args) > 1 else kwargs.get('method', 'analytic')}]"
    return fn_name


def _swap_of(mons):
    return next((m for m in reversed(mons) if m.swap is not None), None)


def _backward_of(fn_name, mons, args, kwargs):
    if fn_name == "eigvalsh":
        return "values"
    if fn_name == "sk":
        method = args[1] if len(args) > 1 else kwargs.get("method", "analytic")
        params = {k: v for k, v in kwargs.items() if k != "method"}
        try:
            return format_spec(method, params)
        except Exception:  # noqa: BLE001 — an invalid spec raises in the call itself
            return str(method)
    if fn_name == "eigh" and _swap_applies(args, kwargs) and _swap_of(mons) is not None:
        return _swap_of(mons).swap_spec
    return "analytic"


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
        lam, U = _originals_or_live("sk")(A, swapper.swap[0], **swapper.swap[1])
        result = sktorch.EighResult(lam, U)
        backward = swapper.swap_spec
    else:
        result = _originals_or_live("eigh")(A, *args, **kwargs)
        lam, U = result
        backward = "analytic"
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
    return out, "analytic", A, (out[1] ** 2).flip(-1), tuple(out)


def _sk_call(mons, A, method="analytic", **params):
    out = _originals_or_live("sk")(A, method, **params)
    return out, _backward_of("sk", mons, (A, method), params), A, out[0], tuple(out)


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
            sktorch.eigh = _watched("sk", _sk_call)
            from torch.optim.optimizer import register_optimizer_step_post_hook

            _hook_handle = register_optimizer_step_post_hook(_optimizer_hook)
        _active = _active + (mon,)


def _deactivate(mon: Monitor):
    global _active, _originals, _hook_handle
    with _lock:
        _active = tuple(m for m in _active if m is not mon)
        if not _active and _originals is not None:
            torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd = _originals["eigh"], _originals["eigvalsh"], _originals["svd"]
            sktorch.eigh = _originals["sk"]
            _originals = None
            if _hook_handle is not None:
                _hook_handle.remove()
                _hook_handle = None


@contextlib.contextmanager
def watch(log_path=None, tensorboard_dir=None, swap_backward: str | None = None, bound: str | None = None,
          every: int = 1, all_threads: bool = False):
    """Monitor eigen calls inside the block (see module doc). Yields the :class:`Monitor`.

    ``log_path``: ``.csv`` (append per flush) or ``.parquet`` (row group per flush), flushed every
    ``every`` steps and at exit; ``{rank}`` in it becomes the DDP rank (``RANK``/``LOCAL_RANK``). ``tensorboard_dir``: scalars per call site at each flush if
    ``torch.utils.tensorboard`` imports (else a warning says so). ``swap_backward``: a method spec
    for ``torch.linalg.eigh``'s backward. ``bound``: a method spec whose max |F_ij| is logged as
    ``bound`` (default: ``swap_backward``). ``all_threads``: record every thread's calls, not only
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


def summarize(df: pd.DataFrame, until_step: int | None = None, gap_threshold: float = 1e-5) -> dict:
    """Per-run diagnostics from monitor records (optionally only steps < ``until_step``).

    ``gap_events``: calls whose min relative gap fell below ``gap_threshold``.
    """
    if until_step is not None:
        df = df[df["step"] < until_step]
    if df.empty:
        return {"calls": 0, "min_gap": np.nan, "min_rel_gap": np.nan, "max_K": np.nan, "lam_min": np.nan,
                "max_bound": np.nan, "max_grad_norm": np.nan, "gap_events": 0, "nonfinite_events": 0}
    return {
        "calls": int(len(df)),
        "min_gap": float(df["min_gap"].min()),
        "min_rel_gap": float(df["min_rel_gap"].min()),
        "max_K": float(df["max_K"].max()),
        "lam_min": float(df["lam_min"].min()),
        "max_bound": float(df["bound"].max()),
        "max_grad_norm": float(df["grad_norm"].max()),
        "gap_events": int((df["min_rel_gap"] < gap_threshold).sum()),
        "nonfinite_events": int(df["nonfinite"].sum()),
    }


__all__ = ["COLUMNS", "Monitor", "watch", "summarize", "bound_kernel"]
