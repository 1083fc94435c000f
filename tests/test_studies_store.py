"""Storage of a study's cells (stabkit.studies._store): the code version, cell records and their
checksum, the scan of a study's cell files, the consolidated table — all written through stabkit._io."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from stabkit.studies import _store

CELLS = [{"cell_id": "a", "d": 4}, {"cell_id": "b", "d": 5}, {"cell_id": "c", "d": 6}]


def test_the_sources_hash_follows_every_byte_of_the_package(tmp_path, monkeypatch):
    package = tmp_path / "stabkit"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "methods" / "clip.py").write_text("TAU = 1e-3\n")
    monkeypatch.setattr(_store, "PACKAGE", package)

    def fresh():
        _store.sources_hash.cache_clear()
        return _store.sources_hash()

    try:
        before = fresh()
        (package / "methods" / "clip.py").write_text("TAU = 1e-2\n")  # change clip's default τ
        changed = fresh()
        (package / "methods" / "clip.py").write_text("TAU = 1e-3\n")
        assert changed != before and fresh() == before
        (package / "methods" / "new.py").write_text("")  # an added file counts too
        assert fresh() != before
    finally:
        _store.sources_hash.cache_clear()


def _write(cells_dir, cell, rows, error=None, sources="v1"):
    record, error = _store.cell_record(cell, rows, error, {"commit": "abc", "sources": sources})
    _store.write_cell(cells_dir, record)
    return record, error


def test_cell_files_are_classified_done_stale_or_damaged(tmp_path):
    cells_dir = tmp_path / "cells"
    cells_dir.mkdir()
    done, _ = _write(cells_dir, CELLS[0], [{"x": np.float64(1.5), "n": np.int64(2)}])
    assert done["rows"] == [{"x": 1.5, "n": 2}] and list(done)[-1] == "sha256"  # numpy scalars stored plainly
    _write(cells_dir, CELLS[1], [{"x": 1.0}], sources="v0")  # other code
    _write(cells_dir, CELLS[2], [], error="RuntimeError: boom")  # failed: retried, never loaded
    (cells_dir / ".x.json.123.tmp").write_text("half")  # a write interrupted by a kill
    scan = _store._scan_cells(cells_dir, CELLS, "v1")
    assert list(scan["done"]) == ["a"] and list(scan["stale"]) == ["b"] and scan["damaged"] == []
    assert not list(cells_dir.glob("*.tmp"))

    path = _store._cell_path(cells_dir, CELLS[0])
    edited = json.loads(path.read_text())
    edited["rows"][0]["x"] = 2.5  # still valid JSON, still the same cell
    path.write_text(json.dumps(edited))
    assert _store._scan_cells(cells_dir, CELLS, "v1")["damaged"] == [path.name]
    # a cell of another grid (same id, other parameters) is ignored
    assert _store._scan_cells(cells_dir, [{"cell_id": "b", "d": 7}], "v0")["done"] == {}


def test_a_file_that_is_no_cell_of_the_grid_is_left_alone(tmp_path):
    cells_dir = tmp_path / "cells"
    cells_dir.mkdir()
    _write(cells_dir, CELLS[0], [{"x": 1.0}])
    (cells_dir / "zzz.json").write_text("{not json")  # a stray file, not named after a cell
    (cells_dir / "notes.json").write_text("[1, 2]")
    _write(cells_dir, {"cell_id": "z", "d": 9}, [{"x": 2.0}])  # a cell of another grid
    _store._cell_path(cells_dir, CELLS[1]).write_text("{truncated")  # a cell of this grid, damaged
    scan = _store._scan_cells(cells_dir, CELLS, "v1")
    assert list(scan["done"]) == ["a"] and scan["damaged"] == [_store._cell_path(cells_dir, CELLS[1]).name]
    assert (cells_dir / "zzz.json").read_text() == "{not json"


def test_a_failed_cell_keeps_one_row_and_a_non_scalar_row_fails_the_cell(tmp_path):
    record, error = _store.cell_record({"cell_id": "a", "d": 4, "grid": [1]}, [], "RuntimeError: boom",
                                       {"commit": "abc", "sources": "v1"})
    assert record["failed"] and error == "RuntimeError: boom"
    assert record["rows"] == [{"d": 4, "error": "cell failed: RuntimeError: boom"}]
    record, error = _store.cell_record({"cell_id": "a", "d": 4}, [{"x": object()}], None,
                                       {"commit": "abc", "sources": "v1"})
    assert record["failed"] and error.startswith("TypeError: row value")
    assert record["sha256"] == _store._checksum(record)


def test_consolidate_orders_rows_by_cell_with_error_last_and_writes_atomically(tmp_path):
    done = {"b": {"rows": [{"x": 2.0}]}, "a": {"rows": [{"error": "cell failed: e", "d": 4}, {"x": 1.0, "y": 3}]}}
    table = _store.consolidate(CELLS, done)
    assert list(table.columns) == ["cell_id", "d", "x", "y", "error"]
    assert list(table["cell_id"]) == ["a", "a", "b"] and list(table["error"]) == ["cell failed: e", None, None]
    _store.write_table(table, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.parquet"]  # no temporaries
    back = pd.read_parquet(tmp_path / "results.parquet")
    assert list(back.columns) == list(table.columns) and len(back) == 3 and back["x"].iloc[1] == 1.0


def test_a_cell_of_another_grid_with_the_same_id_keeps_its_own_file(tmp_path):
    """Cell files were named by the cell's id alone, so a run of another grid (another `--set`) overwrote
    the cells of the first with its own: back on the first grid, everything was computed again."""
    cells_dir = tmp_path / "cells"
    cells_dir.mkdir()
    first, other = {"cell_id": "a", "methods": ["x", "y"]}, {"cell_id": "a", "methods": ["x"]}
    _write(cells_dir, first, [{"m": "x"}, {"m": "y"}])
    _write(cells_dir, other, [{"m": "x"}])
    assert len(list(cells_dir.glob("*.json"))) == 2
    assert _store._scan_cells(cells_dir, [first], "v1")["done"]["a"]["rows"] == [{"m": "x"}, {"m": "y"}]
    assert _store._scan_cells(cells_dir, [other], "v1")["done"]["a"]["rows"] == [{"m": "x"}]


def test_a_cell_file_named_by_its_id_as_before_is_still_read(tmp_path):
    """Cells written before files were named by their parameters (the survival study commits its cells)."""
    import hashlib

    cells_dir = tmp_path / "cells"
    cells_dir.mkdir()
    record, _ = _store.cell_record(CELLS[0], [{"x": 1.0}], None, {"commit": "abc", "sources": "v1"})
    (cells_dir / (hashlib.sha256(b"a").hexdigest()[:20] + ".json")).write_text(json.dumps(record))
    assert _store._scan_cells(cells_dir, CELLS, "v1")["done"] == {"a": record}
