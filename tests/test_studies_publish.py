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
