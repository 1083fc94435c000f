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


def test_units_group_consecutive_cells_of_one_stack_key_up_to_the_stack_size():
    """``--stack R``: runs of consecutive cells that the kind can train at once (same ``stack_key``),
    at most R each, in the todo order; a kind without ``stack_key`` (or R = 1) keeps one cell per unit."""
    from stabkit.studies import zca_cifar10_survival as surv

    grid = {"cells": [["taylor", 16], ["analytic", 8]], "seeds": 5, "seed_block": 5}
    todo = surv.cells(grid)
    ids = lambda units: [[c["seed"] for c in u] for u in units]  # noqa: E731
    units = _workers._units("zca_cifar10_survival", todo, 2)
    assert ids(units) == [[1000, 1001], [1002, 1003], [1004], [1000, 1001], [1002, 1003], [1004]]
    assert [u[0]["spec"] for u in units] == ["taylor"] * 3 + ["analytic"] * 3
    assert ids(_workers._units("zca_cifar10_survival", todo, 1)) == [[c["seed"]] for c in todo]
    assert ids(_workers._units("zca_cifar10_survival", todo[1:4] + todo[6:8], 6)) == [[1001, 1002, 1003], [1001, 1002]]
    cells = [{"cell_id": str(i)} for i in range(3)]
    assert _workers._units("gradient_accuracy", cells, 4) == [[c] for c in cells]


def test_a_unit_that_raises_fails_each_of_its_cells(monkeypatch):
    from stabkit.studies import zca_cifar10_survival as surv

    monkeypatch.setattr(surv, "run_cells", lambda cells: (_ for _ in ()).throw(RuntimeError("stack broke")))
    results = _workers._execute_unit("zca_cifar10_survival", [{"cell_id": "a"}, {"cell_id": "b"}])
    assert [(rows, error.split(" (at")[0]) for rows, error, _ in results] == [([], "RuntimeError: stack broke")] * 2


def test_a_cell_carries_the_hash_of_the_code_before_it_ran_not_of_an_edit_saved_meanwhile(tmp_path, monkeypatch):
    """A worker hashed the sources after its first cell: an edit saved while that cell ran gave the cell
    (computed by the code imported before) the edited code's hash, so a run of the edited code took it
    as its own. In a fresh process (an empty cache) the hash is now that of the sources before the cell."""
    import hashlib

    from stabkit.studies import kind_module

    package = tmp_path / "stabkit"
    package.mkdir()
    (package / "a.py").write_text("X = 1\n")
    monkeypatch.setattr(_store, "PACKAGE", package)
    _store.sources_hash.cache_clear()
    # sha256 over (relative path, NUL, content, NUL) of each file, as _store documents, written out here
    before = hashlib.sha256(b"a.py\0X = 1\n\0").hexdigest()[:16]

    def edited_while_running(cell):
        (package / "a.py").write_text("X = 2\n")
        return [{"value": 1.0}]

    kind = kind_module("gradient_accuracy")
    monkeypatch.setattr(kind, "run_cell", edited_while_running)
    monkeypatch.setattr(kind, "warm_up", lambda cell: None, raising=False)
    try:
        rows, error, sources = _workers._execute("gradient_accuracy", {"cell_id": "c"})
    finally:
        _store.sources_hash.cache_clear()  # the next test hashes the real package
    assert (rows, error) == ([{"value": 1.0}], None)
    assert sources == before
