"""Where a study's cells run: inline, on a pool of spawned local processes, or on a Dask cluster.

Every backend calls ``on_done(cell, rows, error, sources)`` in the parent process for each cell as
it finishes (``error`` is the text of the exception a cell raised, ``sources`` the code version of
the process that ran it), so the runner stores each cell the moment it is done. Every cell runs with
one BLAS/torch thread, in any process; workers ignore Ctrl-C (the parent's to handle) and die with
their parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from . import _store, kind_module

#: Seconds a spawned worker takes to start (spawn + import torch and the kind) on a 2-core machine,
#: ~2.2 s measured; the default job count starts a pool only when it saves twice that.
WORKER_STARTUP_SECONDS = 3.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------- one cell, in any process


def _warm_up(kind_name: str, cell: dict) -> None:
    """The kind's optional ``warm_up(cell)`` before each cell (the kind remembers what it has
    already warmed in this process): first-call costs (lazy imports, torch's first kernels) are
    then not timed as a method's cost. Errors are left to the cell itself to report."""
    hook = getattr(kind_module(kind_name), "warm_up", None)
    if hook is None:
        return
    try:
        hook(cell)
    except Exception:  # noqa: BLE001 — the real cell reports any problem
        pass


def _error_text(exc: BaseException) -> str:
    """``Type: message (at file.py:line in function)`` — the innermost frame of the traceback."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return text


#: One cell at a time per process: a Dask worker with several threads would otherwise run cells side by
#: side, and mpmath's and flint's working precision is process-wide (two truths at once corrupt each
#: other). The cells are CPU-bound Python, so threads would gain nothing anyway: use processes.
_ONE_CELL = threading.Lock()


def _execute(kind_name: str, cell: dict) -> tuple[list[dict], str | None, str]:
    """Run one cell (in any process): (rows, error text or None, sources hash of this process)."""
    with _ONE_CELL:
        return _execute_alone(kind_name, [cell])[0]


def _execute_alone(kind_name: str, unit: list[dict]) -> list[tuple[list[dict], str | None, str]]:
    """One (rows, error, sources) per cell of ``unit``: one cell by the kind's ``run_cell``, several at
    once by its ``run_cells``; an exception fails every cell of the unit. The sources are hashed (once
    per process) before the kind and its methods are imported: hashed after the cell, a worker's first
    cell took the hash of an edit saved while it ran, and a later run of the edited code reused it."""
    sources = _store.sources_hash()
    try:
        _warm_up(kind_name, unit[0])
        with _one_thread():
            kind = kind_module(kind_name)
            per_cell = kind.run_cells(unit) if len(unit) > 1 else [kind.run_cell(unit[0])]
        return [([dict(r) for r in rows], None, sources) for rows in per_cell]
    except Exception as exc:  # noqa: BLE001 — a failing cell must not stop the study
        return [([], _error_text(exc), sources)] * len(unit)


def _units(kind_name: str, todo: list[dict], stack: int) -> list[list[dict]]:
    """The cells as units of work: one cell each, or with ``stack`` > 1 and a kind that can train
    several cells at once (``stack_key(cell)``, not None for such a cell; ``run_cells(cells)``), up to
    ``stack`` consecutive cells with the same key together (in the todo order: nothing runs earlier)."""
    key = getattr(kind_module(kind_name), "stack_key", None) if stack > 1 else None
    units: list[list[dict]] = []
    for cell in todo:
        k = key(cell) if key is not None else None
        if k is not None and units and len(units[-1]) < stack and key(units[-1][0]) == k:
            units[-1].append(cell)
        else:
            units.append([cell])
    return units


def _execute_unit(kind_name: str, unit: list[dict]) -> list[tuple[list[dict], str | None, str]]:
    """Run a unit (in any process): one (rows, error, sources) per cell (:func:`_execute_alone`)."""
    if len(unit) == 1:
        return [_execute(kind_name, unit[0])]
    with _ONE_CELL:
        return _execute_alone(kind_name, unit)


def _deliver(unit: list[dict], results, on_done) -> None:
    for cell, result in zip(unit, results):
        on_done(cell, *result)


@contextlib.contextmanager
def _one_thread():
    """One torch thread and one BLAS/OpenMP thread for a cell, in whatever process runs it (inline,
    pool worker, Dask worker): its numbers and timings then do not depend on --jobs. Inline cells used
    numpy's OpenBLAS with all cores (and torch too, for a study's first cell, before torch was imported),
    which rounded float32 results at d ≥ 128 differently from the pool's (angles ~1e-5° apart); on a
    busy 2-core machine torch's own pool made the ``torch`` method ~40× slower inline. Entered after the
    warm-up, so that the libraries the cell uses are loaded; the caller's settings are restored."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- a local process pool


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this worker as soon as its parent is gone (kill -9 included): a worker blocked on the
    task queue would otherwise live forever, and with it the resource tracker."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_init(parent_pid: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="stabkit-parent-watch").start()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _run_pool(kind_name, units, jobs, on_done):
    import multiprocessing

    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})  # one BLAS thread per worker process
    try:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(),))
        futures = {pool.submit(_execute_unit, kind_name, unit): unit for unit in units}
        try:
            for fut in as_completed(futures):
                unit = futures[fut]
                try:
                    results = fut.result()
                except Exception as exc:  # noqa: BLE001 — e.g. a worker died
                    results = [([], f"{type(exc).__name__}: {exc}", None)] * len(unit)
                _deliver(unit, results, on_done)
        except BaseException:
            # Ctrl-C or an error here: cells in flight would be lost anyway, so stop the workers now
            # instead of waiting for them; finished cells are already on disk.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    finally:
        _restore_env(saved)


def _restore_env(saved: dict) -> None:
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def _free_cores(cores: int) -> float:
    """Cores not busy with other work: ``cores`` minus the 1-minute load average, not counting
    the ~1 this process adds itself (all of them where the load average is unknown)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return float(cores)
    return max(1.0, cores - max(0.0, load - 1.0))


# ----------------------------------------------------------------------------- inline, or inline then a pool


def run_local(kind_name, todo, jobs, on_done, auto: bool = False, stack: int = 1) -> int:
    """Run ``todo`` inline (jobs = 1) or on a pool of ``jobs`` spawned processes; return the most
    processes used. ``auto`` (the default job count): start inline, and move the rest to a pool only
    once the measured cell time (first cell excluded: it pays imports and warm-up) says that the
    pool, on the cores other work leaves free, saves more than twice the workers' start-up — so the
    default is never much slower than ``--jobs 1`` on a small study or a loaded machine. ``stack``:
    up to that many cells trained at once by one process (:func:`_units`)."""
    units = _units(kind_name, todo, stack)
    jobs = min(jobs, len(units))
    if jobs <= 1 or not units:
        for unit in units:
            _deliver(unit, _execute_unit(kind_name, unit), on_done)
        return 1
    if not auto:
        _run_pool(kind_name, units, jobs, on_done)
        return jobs
    return _run_inline_then_pool(kind_name, units, jobs, on_done)


def _run_inline_then_pool(kind_name, units, jobs, on_done) -> int:
    spent, first = 0.0, 0.0
    for i, unit in enumerate(units):
        rest = len(units) - i
        workers = min(jobs, rest)
        if workers >= 2 and _pool_pays(_cell_seconds(i, spent, first), workers, rest):
            _run_pool(kind_name, units[i:], workers, on_done)
            return workers
        t0 = time.perf_counter()
        _deliver(unit, _execute_unit(kind_name, unit), on_done)
        if i:
            spent += time.perf_counter() - t0
        else:
            first = time.perf_counter() - t0
    return 1


def _cell_seconds(done: int, spent: float, first: float) -> float:
    """The cell time measured so far: the mean after the first cell, or the first cell itself when
    it is so long that its one-off costs hardly matter (long cells should not wait for a second one);
    0 while unknown."""
    if done >= 2:
        return spent / (done - 1)
    if done == 1 and first > 4 * WORKER_STARTUP_SECONDS:
        return first
    return 0.0


def _pool_pays(per_cell: float, workers: int, rest: int) -> bool:
    """Whether ``workers`` processes, on the cores other work leaves free, save more on the ``rest``
    cells than twice their start-up."""
    if not per_cell:
        return False
    speedup = min(workers, _free_cores(os.cpu_count() or 1))
    return speedup >= 1.5 and per_cell * rest * (1 - 1 / speedup) > 2 * WORKER_STARTUP_SECONDS


# ----------------------------------------------------------------------------- Dask


#: How long :func:`dask_client` tries to reach the scheduler before it gives up (tests shorten it).
SCHEDULER_CONNECT_TIMEOUT = "20s"


def dask_client(address: str):
    """A client of the Dask scheduler at ``address`` (ValueError when missing or unreachable)."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs dask[distributed]: pip install 'stabkit[cluster]'") from None
    try:
        return Client(address, timeout=SCHEDULER_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an address Dask cannot parse ("no port")
        raise ValueError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None


def run_dask(kind_name, todo, client, on_done, stack: int = 1):
    """Run ``todo`` on the cluster behind ``client`` (closed at the end), in units of up to ``stack`` cells."""
    from distributed import as_completed as dask_completed

    try:
        futures = {}
        for unit in _units(kind_name, todo, stack):
            ids = "|".join(c["cell_id"] for c in unit)
            key = "stabkit-cell-" + hashlib.sha256(f"{kind_name}|{ids}".encode()).hexdigest()[:24]
            futures[client.submit(_execute_unit, kind_name, unit, key=key, pure=False)] = unit
        for fut in dask_completed(list(futures)):
            unit = futures[fut]
            try:
                results = fut.result()
            except Exception as exc:  # noqa: BLE001 — a worker lost, a pickling error, ...
                results = [([], f"{type(exc).__name__}: {exc}", None)] * len(unit)
            _deliver(unit, results, on_done)
            fut.release()
    finally:
        client.close()
