"""Where cells run (stabkit.studies._workers): one cell in any process, the default job count's choice
between inline and a pool. End to end (a real pool, Dask, Ctrl-C): test_runner, test_faults_runner."""

from __future__ import annotations

import os
import time

from stabkit.studies import _store, _workers


def test_the_default_job_count_pools_after_one_long_cell(monkeypatch):
    """A first cell far longer than the workers' start-up sends the rest to the pool at once."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(_workers, "WORKER_STARTUP_SECONDS", 0.01)
    pooled = []
    monkeypatch.setattr(_workers, "_run_pool", lambda kind, todo, jobs, on_done: pooled.append((len(todo), jobs)))
    monkeypatch.setattr(_workers, "_execute", lambda kind, cell: (time.sleep(0.05), ([], None, "x"))[1])
    done = []
    used = _workers.run_local("gradient_accuracy", [{"cell_id": str(i)} for i in range(5)], 2,
                              lambda cell, *rest: done.append(cell["cell_id"]), auto=True)
    assert used == 2 and done == ["0"] and pooled == [(4, 2)]


def test_the_pool_pays_only_for_long_cells_on_free_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    startup = _workers.WORKER_STARTUP_SECONDS
    assert _workers._cell_seconds(0, 0.0, 100.0) == 0.0  # nothing measured yet
    assert _workers._cell_seconds(1, 0.0, 1.0) == 0.0  # a short first cell pays imports: wait for a second
    assert _workers._cell_seconds(1, 0.0, 5 * startup) == 5 * startup
    assert _workers._cell_seconds(3, 4.0, 9.0) == 2.0  # the mean after the first cell
    assert not _workers._pool_pays(0.0, 4, 100)
    assert _workers._pool_pays(startup, 4, 100) and not _workers._pool_pays(0.01, 4, 10)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # the other cores are busy
    assert not _workers._pool_pays(startup, 4, 100)


def test_a_cell_that_raises_reports_type_message_and_where(monkeypatch):
    from stabkit.studies import gradient_accuracy

    def broken(cell):
        raise RuntimeError("boom")

    monkeypatch.setattr(gradient_accuracy, "run_cell", broken)
    rows, error, sources = _workers._execute("gradient_accuracy", {"cell_id": "x"})
    assert rows == [] and sources == _store.sources_hash()
    assert error.startswith("RuntimeError: boom (at test_studies_workers.py:") and error.endswith("in broken)")
