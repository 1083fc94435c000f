"""A study's report and the reports index (stabkit.studies.publish): what it accepts as a results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stabkit.errors import StudyFileError
from stabkit.studies import KINDS, kind_module, publish

REPORTS = Path(__file__).resolve().parents[1] / "reports"


@pytest.mark.parametrize("kind_name", KINDS)
def test_every_kind_declares_its_number_columns_and_its_committed_tables_pass(kind_name):
    """The check of number columns cannot refuse a table the runner wrote: every committed table
    passes under its kind, and each kind names at least one column the check covers."""
    kind = kind_module(kind_name)
    assert kind.NUMBER_COLUMNS and len(set(kind.NUMBER_COLUMNS)) == len(kind.NUMBER_COLUMNS)
    for run_json in sorted(REPORTS.glob("*/run.json")):
        if json.loads(run_json.read_text())["kind"] == kind_name:
            results = publish.read_results(run_json.parent / "results.parquet", kind)
            assert set(kind.NUMBER_COLUMNS) & set(results.columns)


def test_text_in_a_number_column_is_a_study_file_error_through_the_api(tmp_path):
    import pandas as pd

    table = tmp_path / "results.parquet"
    pd.DataFrame({"cell_id": ["a", "b"], "method": ["x", "y"], "angle_deg": ["1.5", "abc"]}).to_parquet(table)
    kind = kind_module("gradient_accuracy")
    with pytest.raises(StudyFileError, match=r"column 'angle_deg' holds text \('abc' in row 2 of 2\)"):
        publish.read_results(table, kind)
    assert list(publish.read_results(table)["angle_deg"]) == ["1.5", "abc"]  # no kind: nothing to check


def _quickstart_copy(tmp_path) -> Path:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(REPORTS / "quickstart", out / "quickstart")
    return out


def _full_disk(monkeypatch):
    """Every rename of a finished temporary over its file (how _io writes each file) fails: disk full."""
    import errno
    import os

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)


def test_a_full_disk_while_the_report_is_written_is_a_storage_error_naming_the_file_and_what_is_kept(tmp_path,
                                                                                                     monkeypatch):
    """publish raised the bare OSError to API callers (the CLI alone turned it into a message); now the
    library's StorageError, with the same text the runner and the CLI give, and nothing lost."""
    from stabkit.errors import StorageError

    out = _quickstart_copy(tmp_path)
    before = {p: p.read_bytes() for p in (out / "quickstart").rglob("*") if p.is_file() and p.suffix != ".png"}
    _full_disk(monkeypatch)
    with pytest.raises(StorageError) as caught:
        publish.build_report("quickstart", out)
    assert str(caught.value) == (f"cannot write {out / 'quickstart' / 'README.md'}: No space left on device; finished "
                                 f"cells are kept; `stabkit report quickstart --out={out}` writes the report once "
                                 "there is room")
    assert {p: p.read_bytes() for p in (out / "quickstart").rglob("*") if p.is_file() and p.suffix != ".png"} == before
    with pytest.raises(StorageError, match=rf"cannot write {out / 'README.md'}: No space left on device; the "
                                           "studies' results are kept; `stabkit report NAME --out="):
        publish.build_index(out)


def test_the_cli_gives_the_librarys_storage_message_and_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stabkit.cli.main import app
    from stabkit.errors import StorageError

    out = _quickstart_copy(tmp_path)
    _full_disk(monkeypatch)
    with pytest.raises(StorageError) as caught:
        publish.build_report("quickstart", out)
    result = CliRunner().invoke(app, ["report", "quickstart", "--out", str(out)])
    assert result.exit_code == 2 and result.stderr == f"error: {caught.value}\n", result.output
