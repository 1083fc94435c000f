"""``stabkit compare``: output format, exit codes, and that bad input never shows a traceback."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stabkit.cli.main import app
from stabkit import methods

from .conftest import build

runner = CliRunner()


def _npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


JSON_KEYS = {"method", "angle_deg", "angle_full_deg", "kept", "angle_truth_digits", "rel_err", "norm_ratio", "finite", "seconds", "error",
             "matrix", "loss", "dtype", "truth_digits", "truth_certified", "truth_engine", "truth_seconds",
             "min_abs_gap", "min_rel_gap", "max_abs_K", "numerical_rank", "condition"}


def test_json_lines_have_exactly_the_documented_keys(tmp_path):
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.5, 5.0]))
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss", "zca", "--format", "json",
                                 "-m", "analytic", "-m", "taylor:K=19,eps=1e-4", "-m", "clip:tau=100"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["method"] for r in rows] == ["analytic", "taylor:K=19,eps=0.0001", "clip"]
    for r in rows:
        assert set(r) == JSON_KEYS
        assert r["kept"] == 4 and r["angle_full_deg"] == r["angle_deg"]
    assert rows[0]["rel_err"] < 1e-12 and rows[0]["finite"] is True
    assert rows[1]["angle_deg"] > 0


def test_json_carries_what_the_table_shows(tmp_path):
    """Truth digits/engine and the gap diagnostics, checked against an independent computation:
    eigenvalues 1, 2, 3.5, 5 → min gap 1, min rel gap 1/5, max|K̃| 1, condition 5."""
    from stabkit.losses import make_loss
    from stabkit.reference import ground_truth

    A = build([1.0, 2.0, 3.5, 5.0])
    path = _npy(tmp_path, "a.npy", A)
    result = runner.invoke(app, ["compare", "--matrix", path, "--format", "json", "-m", "analytic"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.strip().splitlines()]
    truth = ground_truth(A, make_loss("zca", 4, seed=0))
    assert row["truth_digits"] == pytest.approx(truth.digits) and row["truth_digits"] > 15
    assert row["truth_certified"] is True and row["truth_engine"] == truth.engine
    assert row["min_abs_gap"] == pytest.approx(1.0, rel=1e-12)
    assert row["min_rel_gap"] == pytest.approx(0.2, rel=1e-12)
    assert row["max_abs_K"] == pytest.approx(1.0, rel=1e-12)
    assert row["condition"] == pytest.approx(5.0, rel=1e-12)
    assert row["numerical_rank"] == 4 and row["error"] is None
    assert row["matrix"] == path and row["loss"] == "zca" and row["dtype"] == "float64"


def test_json_is_strict_json_when_a_gap_is_zero(tmp_path):
    """An exact tie makes max|K̃| infinite: written as the string "inf", never the invalid token Infinity."""
    path = _npy(tmp_path, "tie.npy", np.diag([1.0, 2.0, 2.0, 3.0]))
    result = runner.invoke(app, ["compare", "--matrix", path, "--format", "json", "-m", "clip", "--loss", "sqrt"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[0]
    assert "Infinity" not in line and "NaN" not in line
    row = json.loads(line)
    assert row["max_abs_K"] == "inf" and row["min_abs_gap"] == 0.0


def test_table_lists_every_method_and_truth_digits(tmp_path):
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.0]))
    result = runner.invoke(app, ["compare", "--matrix", path])
    assert result.exit_code == 0, result.output
    for name in methods.NAMES:
        assert name in result.stdout
    assert "digits" in result.stdout


@pytest.mark.parametrize(
    "array, extra, needle",
    [
        (np.ones((2, 3)), [], "not square"),
        (np.array([[1.0, 5.0], [0.0, 1.0]]), [], "not symmetric"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), [], "NaN"),
        (np.eye(3), ["--dtype", "float16"], "unsupported dtype"),
        (np.eye(3), ["-m", "magic"], "unknown method"),
        (np.eye(3), ["-m", "taylor:K=x"], "not a number"),
        (np.eye(3), ["--loss", "frob"], "unknown loss"),
        (np.diag([1.0, 1.0, 2.0]), ["--loss", "eigvec"], "degenerate spectrum"),
        (np.diag([0.0, 1.0, 2.0]), ["--loss", "zca"], "positive definite"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, array, extra, needle):
    path = _npy(tmp_path, "bad.npy", array)
    result = runner.invoke(app, ["compare", "--matrix", path, *extra])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file_and_wrong_weight(tmp_path):
    result = runner.invoke(app, ["compare", "--matrix", str(tmp_path / "nope.npy")])
    assert result.exit_code == 2 and "not found" in result.stderr
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.0]))
    weight = _npy(tmp_path, "w.npy", np.ones((2, 2)))
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss-weight", weight])
    assert result.exit_code == 2 and "shape" in result.stderr
