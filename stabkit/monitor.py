"""Instability monitor: log what every eigendecomposition in a model sees, without touching the model.

    with stabkit.monitor.watch(log_path="eig.parquet") as mon:
        for batch in loader:
            loss = model(batch).sum(); loss.backward(); mon.step()
    mon.records          # pandas DataFrame, one row per call

Inside ``watch`` the functions ``torch.linalg.eigh``, ``torch.linalg.eigvalsh``,
``torch.linalg.svd`` and ``stabkit.torch.eigh`` are replaced by wrappers (restored on exit, so
outside ``watch`` they are the originals: zero overhead). Each call logs, per call site
(``file:line`` of the first caller frame outside torch and stabkit's eigen internals) and step:

* ``min_gap``: smallest |λ_i − λ_j| over the batch (for svd: of σ², the eigenvalues of AᵀA);
* ``min_rel_gap``: min gap / max |λ| of the same matrix (minimum over the batch);
* ``max_K``: max |K̃_ij| = 1 / min_gap, the analytic backward's largest coefficient;
* ``lam_min``: smallest eigenvalue; ``bound``: max |F_ij| of ``bound``'s method (see ``watch``);
* ``grad_norm``: the norm of the gradient reaching the outputs (a tensor hook; NaN until the
  backward ran, or when the outputs do not require grad);
* ``nonfinite``: 1 if input, output or the incoming gradient held inf/NaN.

Calls made from inside a watched call (e.g. stabkit.torch.eigh's own torch.linalg.eigh) are not
logged twice. Callers that imported the function object before ``watch`` (``from torch.linalg
import eigh``) are not intercepted. ``swap_backward="taylor:K=9"`` routes ``torch.linalg.eigh``
through ``stabkit.torch.eigh`` with that registry method's backward. Scalars stay on the device
until ``records`` is read (no synchronisation per call).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import torch as sktorch
from .methods import get, parse_spec

_SKIP_PARTS = (os.sep + "torch" + os.sep, os.sep + "stabkit" + os.sep + "methods" + os.sep)
_SKIP_FILES = {os.path.abspath(__file__), os.path.abspath(sktorch.__file__),
               os.path.abspath(os.path.join(os.path.dirname(__file__), "_xp.py"))}
_local = threading.local()
COLUMNS = ["step", "site", "fn", "batch", "n", "dtype", "min_gap", "min_rel_gap", "max_K", "lam_min", "bound", "grad_norm", "nonfinite"]


def _call_site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        file = os.path.abspath(frame.f_code.co_filename)
        if file not in _SKIP_FILES and not any(p in file for p in _SKIP_PARTS) and "autograd" not in file:
            return f"{os.path.relpath(file) if not os.path.relpath(file).startswith('..') else file}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def bound_kernel(spec: str | None):
    """λ (..., d) → max |F_ij| of the method's backward coefficient matrix, or None.

    Kernel methods (analytic, taylor, clip, …) use their own F; ``pi`` and ``pi-forward`` use the
    degree-T Taylor magnitude (T = power-iteration steps), the bound of back-propagation through T
    power iterations (Wang et al., TPAMI 2021, Sec. 4).
    """
    if not spec:
        return None
    name, params = parse_spec(spec)
    if name in ("pi", "pi-forward"):
        from .methods import taylor

        eps = params.get("eps", 0.0)
        return lambda lam: taylor.kernel(lam, K=params["steps"], eps=0.0 if name == "pi-forward" else eps).abs().amax((-2, -1))
    kernel = getattr(get(name).backward, "kernel", None)
    if kernel is None:
        return None
    return lambda lam: torch.nan_to_num(kernel(lam, **params).abs(), nan=float("inf")).amax((-2, -1))


class Monitor:
    def __init__(self, bound=None):
        self._rows: list[dict] = []
        self._step = 0
        self._bound = bound_kernel(bound)
        self._bound_spec = bound

    def step(self, n: int = 1):
        self._step += n

    @property
    def current_step(self) -> int:
        return self._step

    def _log(self, fn, A, lam, outputs):
        with torch.no_grad():
            lam = lam.detach()
            if lam.ndim == 1:
                lam = lam[None]
            lam = lam.reshape(-1, lam.shape[-1])
            s, _ = torch.sort(lam, dim=-1)
            finite = torch.isfinite(A.detach()).all() & torch.isfinite(lam).all()
            if s.shape[-1] > 1:
                gaps = (s[:, 1:] - s[:, :-1]).abs().amin(-1)
                scale = s.abs().amax(-1).clamp_min(torch.finfo(s.dtype).tiny)
                min_gap, min_rel = gaps.amin(), (gaps / scale).amin()
            else:
                min_gap = min_rel = torch.full((), float("inf"), dtype=s.dtype, device=s.device)
            row = {"step": self._step, "site": _call_site(), "fn": fn, "batch": int(lam.shape[0]), "n": int(lam.shape[-1]),
                   "dtype": str(A.dtype).replace("torch.", ""), "min_gap": min_gap, "min_rel_gap": min_rel,
                   "max_K": 1.0 / min_gap, "lam_min": s[:, 0].amin(), "bound": np.nan, "grad_norm": np.nan,
                   "nonfinite": ~finite}
            if self._bound is not None and s.shape[-1] > 1:
                row["bound"] = self._bound(s).amax()
        self._rows.append(row)
        for out in outputs:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g, row=row: self._on_grad(g, row))
        return row

    @staticmethod
    def _on_grad(g, row):
        """Accumulate ‖∂L/∂output‖² over the call's outputs (only a scalar is kept, never the gradient)."""
        if g is None:
            return
        row["_sq"] = row.get("_sq", 0.0) + (g.detach().double() ** 2).sum()
        row["grad_norm"] = torch.sqrt(row["_sq"])
        row["nonfinite"] = row["nonfinite"] | ~torch.isfinite(row["grad_norm"])

    @property
    def records(self) -> pd.DataFrame:
        rows = [{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in r.items() if k != "_sq"} for r in self._rows]
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["nonfinite"] = df["nonfinite"].astype(bool)
        return df


def _guarded(original, wrapper):
    def call(*args, **kwargs):
        if getattr(_local, "inside", False):
            return original(*args, **kwargs)
        _local.inside = True
        try:
            return wrapper(*args, **kwargs)
        finally:
            _local.inside = False
    call.__wrapped__ = original
    return call


@contextlib.contextmanager
def watch(log_path=None, tensorboard_dir=None, swap_backward: str | None = None, bound: str | None = None):
    """Monitor eigen calls inside the block (see module doc). Yields the :class:`Monitor`.

    ``log_path``: ``.parquet`` or ``.csv`` file written at exit. ``tensorboard_dir``: scalars per
    call site written at exit if ``torch.utils.tensorboard`` imports (else a warning says so).
    ``swap_backward``: a method spec for ``torch.linalg.eigh``'s backward. ``bound``: a method spec
    whose max |F_ij| is logged as ``bound`` (default: ``swap_backward``).
    """
    swap = parse_spec(swap_backward) if swap_backward else None
    mon = Monitor(bound=bound or swap_backward)
    orig = {"eigh": torch.linalg.eigh, "eigvalsh": torch.linalg.eigvalsh, "svd": torch.linalg.svd, "sk": sktorch.eigh}

    def eigh(A, *args, **kwargs):
        if swap is not None and not args and set(kwargs) <= {"UPLO"} and kwargs.get("UPLO", "L") == "L":
            lam, U = sktorch.eigh(A, swap[0], **swap[1])
        else:
            lam, U = orig["eigh"](A, *args, **kwargs)
        mon._log("eigh", A, lam, (lam, U))
        return torch.return_types.linalg_eigh((lam, U)) if swap is None else sktorch.EighResult(lam, U)

    def eigvalsh(A, *args, **kwargs):
        lam = orig["eigvalsh"](A, *args, **kwargs)
        mon._log("eigvalsh", A, lam, (lam,))
        return lam

    def svd(A, *args, **kwargs):
        out = orig["svd"](A, *args, **kwargs)
        mon._log("svd", A, out[1] ** 2, tuple(out))
        return out

    def sk_eigh(A, method="analytic", **params):
        out = orig["sk"](A, method, **params)
        mon._log(f"stabkit.eigh[{method}]", A, out[0], tuple(out))
        return out

    torch.linalg.eigh = _guarded(orig["eigh"], eigh)
    torch.linalg.eigvalsh = _guarded(orig["eigvalsh"], eigvalsh)
    torch.linalg.svd = _guarded(orig["svd"], svd)
    sktorch.eigh = _guarded(orig["sk"], sk_eigh)
    try:
        yield mon
    finally:
        torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd = orig["eigh"], orig["eigvalsh"], orig["svd"]
        sktorch.eigh = orig["sk"]
        if log_path is not None or tensorboard_dir is not None:
            _write(mon.records, log_path, tensorboard_dir)


def _write(df: pd.DataFrame, log_path, tensorboard_dir):
    if log_path is not None:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
    if tensorboard_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            warnings.warn(f"tensorboard logging skipped: torch.utils.tensorboard is not importable ({exc}); install the 'tensorboard' package", stacklevel=3)
            return
        writer = SummaryWriter(str(tensorboard_dir))
        try:
            for site, group in df.groupby("site"):
                per_step = group.groupby("step").agg(min_gap=("min_gap", "min"), max_K=("max_K", "max"), lam_min=("lam_min", "min"),
                                                     grad_norm=("grad_norm", "max"), nonfinite=("nonfinite", "sum"))
                for step, row in per_step.iterrows():
                    for key, value in row.items():
                        writer.add_scalar(f"{site}/{key}", float(value), int(step))
        finally:
            writer.close()


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
