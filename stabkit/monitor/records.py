"""A :class:`Monitor`: the rows of one ``watch`` (one per eigen call: gap, max|K̃|, λ_min, the
bound, gradient norms, errors), its step counting and its live log; :func:`summarize` for the
per-run diagnostics. The patching that feeds it is :mod:`.hooks`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref

import numpy as np
import pandas as pd
import torch

from .. import methods
from ..errors import InputError
from ..validation import is_integer
from .log import LiveLog, frame, warn
from .grads import grad_hooks, physical
from .recompute import Recomputations
from .sites import SiteLabels
from .stats import call_stats, entries_read_finite


class Monitor:
    """The rows of one ``watch``; ``step()`` advances the step (see :mod:`stabkit.monitor`).

    ``bound`` and ``swap_backward``: method specs (a Spec or text), made Specs once, here. ``bound``
    is the method whose max |F_ij| (``Spec.bound``) is logged per call; ``swap_backward`` the rule
    a watched ``torch.linalg.eigh`` is routed through.
    """

    def __init__(self, bound: methods.Spec | str | None = None, swap_backward: methods.Spec | str | None = None,
                 all_threads: bool = False, log: LiveLog | None = None, every: int = 1, keep_records: bool = True):
        if not is_integer(every, 1, math.inf):
            raise InputError(f"stabkit monitor: every (optimizer steps between log flushes) must be an integer ≥ 1, "
                             f"got {every!r}")
        self._rows: list[dict] = []
        self._flushed = 0            # rows[:_flushed] are in the log
        self._manual = None          # step count of mon.step() once it has been called
        self._opt_counts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last_flush_step = 0
        self.bound = methods.spec(bound) if bound else None
        self.swap = methods.spec(swap_backward) if swap_backward else None
        self.swap_spec = str(self.swap) if self.swap else None
        self.thread = threading.get_ident()
        self.all_threads = all_threads
        self.log, self.every, self.keep_records = log, int(every), keep_records
        self.log_error: BaseException | None = None
        self._flush_lock = threading.Lock()
        self._lock = threading.Lock()  # rows vs the gradient hooks, which may run in other threads
        self._sites = SiteLabels()     # the site of each call: file:line, and which module made it (:mod:`.sites`)
        self._recomputations = Recomputations()  # this step's calls, for torch.utils.checkpoint's reruns (:mod:`.recompute`)

    # --- steps ---------------------------------------------------------------------------------
    def step(self, n: int = 1):
        self._manual = (self._manual if self._manual is not None else 0) + n
        self._advanced()

    @property
    def current_step(self) -> int:
        if self._manual is not None:
            return self._manual
        with self._lock:  # another thread's optimizer may be added meanwhile
            return max(self._opt_counts.values(), default=0)

    def _on_optimizer_step(self, optimizer):
        with self._lock:
            self._opt_counts[optimizer] = self._opt_counts.get(optimizer, 0) + 1
        if self._manual is None:
            self._advanced()

    def _advanced(self):
        if self.log is not None and self.current_step - self._last_flush_step >= self.every:
            self.flush(upto_step=self.current_step)

    def watches(self, thread_id: int) -> bool:
        return self.all_threads or thread_id == self.thread

    # --- rows ----------------------------------------------------------------------------------
    def _log(self, fn, backward, A, lam, outputs, squared: bool = False, triangle: str | None = None, site: str | None = None):
        """``site``: the call's, if a :class:`SplitMonitor` labelled it already (else this monitor's label)."""
        stats = call_stats(physical(A), physical(lam), self.bound, 1, squared, [physical(o) for o in outputs], triangle)
        row = self._add_row(fn, backward, A, {k: v if k in ("batch", "n") else v[0] for k, v in stats.items()},
                            site or self._sites.site())
        hooked = grad_hooks(outputs, A, [row], self._lock)
        self._recomputations.forward((row["site"], fn), row["step"], [] if hooked else [[row]])
        return row

    def _reruns(self, fn) -> bool:
        """Whether a call of ``fn`` made now, in a backward, reruns one of this step's calls (:mod:`.recompute`)."""
        return self._recomputations.pending((self._sites.site(), fn), self.current_step)

    def _recomputed(self, fn, A, outputs, site: str | None = None):
        """A call rerun inside a backward (torch.utils.checkpoint, :mod:`.recompute`): no row; where the
        forward call it reruns measured no gradient, its gradient norms go into that call's row."""
        for rows in self._recomputations.recomputed((site or self._sites.site(), fn), self.current_step) or ():
            grad_hooks(outputs, A, rows, self._lock)

    def _add_row(self, fn, backward, A, stats: dict, site: str) -> dict:
        """A call's row from its statistics (:func:`call_stats` of one run: device scalars, read back
        only when logged or read)."""
        row = {"step": self.current_step, "site": site, "fn": fn, "backward": backward, "batch": int(stats["batch"]),
               "n": int(stats["n"]), "dtype": str(A.dtype).replace("torch.", ""),
               "min_gap": stats["min_gap"], "min_rel_gap": stats["min_rel_gap"], "max_K": 1.0 / stats["min_gap"],
               "lam_min": stats["lam_min"], "bound": stats.get("bound", np.nan), "grad_norm": np.nan, "grad_in_norm": np.nan,
               "input_nonfinite": ~stats["input_finite"], "nonfinite": ~stats["finite"], "error": ""}
        self._rows.append(row)
        return row

    def _log_error(self, fn, backward, A, exc: BaseException, triangle: str | None = None, site: str | None = None):
        """A call that raised: one row with the error, flushed at once (the run is likely to end)."""
        A = physical(A).detach() if isinstance(A, torch.Tensor) else None
        input_finite = (bool(entries_read_finite(A, triangle).all())
                        if A is not None and A.is_floating_point() and not A.is_meta else True)
        shape = tuple(A.shape) if A is not None else ()
        row = {"step": self.current_step, "site": site or self._sites.site(), "fn": fn, "backward": backward,
               "batch": int(np.prod(shape[:-2])) if len(shape) >= 2 else 1, "n": int(shape[-1]) if shape else 0,
               "dtype": str(A.dtype).replace("torch.", "") if A is not None else "?",
               "min_gap": np.nan, "min_rel_gap": np.nan, "max_K": np.nan, "lam_min": np.nan, "bound": np.nan,
               "grad_norm": np.nan, "grad_in_norm": np.nan, "input_nonfinite": not input_finite, "nonfinite": True,
               "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
        self._rows.append(row)
        if self.log is not None:
            self.flush()

    def _settled(self, row: dict) -> dict:
        """Under the lock (a gradient hook in another thread may be adding to the row): the row's
        tensors replaced by Python scalars in place, so a row once read or logged holds no device
        memory, and a copy of it."""
        with self._lock:
            for key, value in row.items():
                if isinstance(value, torch.Tensor):
                    row[key] = value.item()
            return dict(row)

    @staticmethod
    def _materialize(row: dict) -> dict:
        """The row as logged, from a settled copy: the gradient norms measured (∞ when non-finite;
        ∂L/∂A non-finite with a finite incoming gradient means this call's own backward made it so)."""
        out = {k: v for k, v in row.items() if not k.startswith("_grad")}
        for key in ("grad_norm", "grad_in_norm"):
            if f"_{key}" in row:
                norm = float(row[f"_{key}"])
                out[key] = norm if math.isfinite(norm) else math.inf
                out["nonfinite"] = bool(out["nonfinite"]) or not math.isfinite(norm)
        return out

    def drop_from(self, step: int) -> None:
        """Forget the rows of steps ≥ ``step`` that are not yet logged (a step about to be run again)."""
        with self._lock:
            while len(self._rows) > self._flushed and self._rows[-1]["step"] >= step:
                self._rows.pop()

    @property
    def records(self) -> pd.DataFrame:
        """Every row so far (with ``keep_records=False``: only those not yet flushed)."""
        return frame([self._materialize(self._settled(r)) for r in list(self._rows)])

    # --- live log ------------------------------------------------------------------------------
    def flush(self, upto_step: int | None = None):
        """Append the rows not yet logged (those of steps < ``upto_step`` if given) to the log.

        An error (writing, or making the rows) is kept in ``log_error`` and warned about once; the
        log is then off (the training is never stopped by its log).
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
            try:
                self.log.append(frame([self._materialize(self._settled(r)) for r in rows[self._flushed:end]]))
            except Exception as exc:  # noqa: BLE001 — reported, never allowed to stop the training
                self.log_error = exc
                log, self.log = self.log, None
                warn(f"stabkit monitor: writing the log failed ({type(exc).__name__}: {exc}); logging stopped", stacklevel=2)
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



class SplitMonitor(Monitor):
    """The monitor of R runs stacked in one network (``stabkit.train.stacked``): each call's batch
    holds the runs' matrices one run after another, so run r's slice (the r-th of R equal parts of
    the leading dimension) is logged into ``monitors[r]``, its own :class:`Monitor`, as if that run
    had made the call alone; gradient norms are split the same way. ``monitors`` may be changed in
    place (a run leaving the stack). A call whose batch does not split into R parts is logged whole
    into every run's monitor. Inside ``torch.func.vmap`` the run's slice is that of the call's own leading
    dimension, wherever vmap put its batch dimension (:func:`.grads.physical`). ``step()`` advances every
    run's monitor."""

    def __init__(self, monitors: list[Monitor]):
        super().__init__()
        self.monitors = monitors

    def step(self, n: int = 1):
        for mon in self.monitors:
            mon.step(n)

    def _splits(self, A) -> bool:
        """Whether ``A`` is a batch of matrices of R equal parts, one per run."""
        return isinstance(A, torch.Tensor) and A.ndim >= 3 and A.shape[0] % len(self.monitors) == 0

    def _log(self, fn, backward, A, lam, outputs, squared: bool = False, triangle: str | None = None):
        mons = list(self.monitors)
        if not mons:
            return None
        site = self._sites.site()  # the stacked network's modules: one label for every run's row
        if not (self._splits(A) and lam.ndim >= 2 and lam.shape[0] == A.shape[0]):  # every run logs the whole call
            return [mon._log(fn, backward, A, lam, outputs, squared, triangle, site) for mon in mons]
        runs = len(mons)
        # the statistics of all runs at once (one set of kernels, not one per run); the runs share a method
        stats = call_stats(physical(A, lead=True), physical(lam, lead=True), mons[0].bound, runs, squared,
                           [physical(o, lead=True) for o in outputs], triangle)
        rows = [mon._add_row(fn, backward, A, {k: v if k in ("batch", "n") else v[r] for k, v in stats.items()}, site)
                for r, mon in enumerate(mons)]
        hooked = grad_hooks(outputs, A, rows, self._lock)  # every run's norm at once, each row a view of them
        self._recomputations.forward((site, fn), rows[0]["step"], [] if hooked else [rows])
        return rows

    def _reruns(self, fn) -> bool:
        site, mons = self._sites.site(), list(self.monitors)
        return bool(mons) and (self._recomputations.pending((site, fn), mons[0].current_step)
                               or any(m._recomputations.pending((site, fn), m.current_step) for m in mons))

    def _recomputed(self, fn, A, outputs, site: str | None = None):
        mons = list(self.monitors)
        if not mons:
            return
        site = self._sites.site()
        groups = self._recomputations.recomputed((site, fn), mons[0].current_step)
        if groups is None:  # the forward call was logged whole into every run's monitor
            for mon in mons:
                mon._recomputed(fn, A, outputs, site)
        for rows in groups or ():
            grad_hooks(outputs, A, rows, self._lock)

    def _log_error(self, fn, backward, A, exc: BaseException, triangle: str | None = None):
        runs = len(self.monitors)
        parts = list(A.detach().unflatten(0, (runs, -1))) if runs and self._splits(A) else [A] * runs
        site = self._sites.site()
        for mon, part in zip(list(self.monitors), parts):
            mon._log_error(fn, backward, part, exc, triangle, site)


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

