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
        (np.full((2, 2), 1e308), [], "too large for float64"),  # A + Aᵀ overflowed: "non-finite entries (0 NaN, 4 Inf)"
        (np.full((2, 2), 1e-320), [], "positive definite"),  # subnormal, singular: the truth's condition was an OverflowError
        # a generated matrix's options were silently ignored with --matrix
        (np.eye(3), ["-p", "delta=abc"], "-p/--param only applies to a generated matrix, not to --matrix"),
        (np.eye(3), ["--spectrum", "nosuch", "--d", "5"], "--spectrum and --d only apply to a generated matrix"),
        # the projector's rank was silently ignored by every other loss
        (np.diag([1.0, 2.0, 3.0]), ["--k", "2", "-m", "analytic"], "--k is the rank of the projector loss; it does not apply to --loss zca"),
        (np.diag([1.0, 2.0, 3.0]), ["--k", "1", "--loss", "eigvec", "-m", "analytic"], "does not apply to --loss eigvec"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, array, extra, needle):
    path = _npy(tmp_path, "bad.npy", array)
    result = runner.invoke(app, ["compare", "--matrix", path, *extra])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_matrix_file_of_the_wrong_dtype_is_named_and_a_big_endian_one_is_read(tmp_path):
    """An int64 matrix said "unsupported dtype int64: use float32 or float64" without naming the
    matrix (read as --dtype's complaint); a big-endian float64 file was refused as "unsupported dtype >f8"."""
    path = _npy(tmp_path, "int.npy", np.array([[2, 1], [1, 3]]))
    result = runner.invoke(app, ["compare", "--matrix", path, "-m", "analytic"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: matrix has unsupported dtype int64: use float32 or float64"]
    path = _npy(tmp_path, "be.npy", build([1.0, 2.0, 3.5]).astype(">f8"))
    result = runner.invoke(app, ["compare", "--matrix", path, "-m", "analytic", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rel_err"] < 1e-12


def test_k_is_still_taken_with_the_projector_loss(tmp_path):
    """The refusal of --k for other losses leaves the projector's alone: k = 2 runs, and k = 3 = d is
    still out of range there."""
    path = _npy(tmp_path, "a.npy", np.diag([1.0, 2.0, 3.0]))
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss", "projector", "--k", "2", "-m", "analytic",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rel_err"] < 1e-12
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss", "projector", "--k", "3", "-m", "analytic"])
    assert result.exit_code == 2 and "1 ≤ k < d = 3" in result.stderr


def test_missing_file_and_wrong_weight(tmp_path):
    result = runner.invoke(app, ["compare", "--matrix", str(tmp_path / "nope.npy")])
    assert result.exit_code == 2 and "not found" in result.stderr
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.0]))
    weight = _npy(tmp_path, "w.npy", np.ones((2, 2)))
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss-weight", weight])
    assert result.exit_code == 2 and "shape" in result.stderr


def test_a_complex_loss_weight_is_refused_not_cast_to_real(tmp_path):
    """numpy would drop the imaginary part with a ComplexWarning and go on: refused, one line, exit 2."""
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.0]))
    weight = _npy(tmp_path, "w.npy", np.eye(3) * (1 + 2j))
    result = runner.invoke(app, ["compare", "--matrix", path, "--loss-weight", weight, "-m", "analytic"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == ["error: loss weight must be a real matrix, got dtype complex128"]



@pytest.mark.parametrize("alias", ["double", "f8", "single"])
def test_dtype_aliases_are_refused_as_by_bench(tmp_path, alias):
    """--dtype takes what `stabkit bench --dtype` takes, parsed by the same function: before, compare
    ran with a numpy alias and recorded the alias (e.g. "dtype": "double") in its output."""
    path = _npy(tmp_path, "a.npy", build([1.0, 2.0, 3.0]))
    refusals = [runner.invoke(app, args) for args in (["compare", "--matrix", path, "-m", "analytic", "--dtype", alias],
                                                      ["bench", "--d", "3", "--batch", "1", "--repeats", "1", "--dtype", alias])]
    for result in refusals:
        assert result.exit_code == 2, result.output
    assert [r.stderr.strip().splitlines() for r in refusals] == [[f"error: unsupported dtype {alias!r}: use float32 or float64"]] * 2

NUMERIC = ("angle_deg", "angle_full_deg", "rel_err", "norm_ratio")


def _computed(args):
    """The numbers of the same run, from --format json (full precision), by method."""
    result = runner.invoke(app, ["compare", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return {row["method"]: row for row in map(json.loads, result.stdout.strip().splitlines())}


def _check_numbers(printed: dict, computed: dict):
    assert set(printed) == set(computed)
    for name, values in printed.items():
        for key in NUMERIC:
            assert float(values[key]) == pytest.approx(computed[name][key], rel=6e-3), (name, key, values[key])
        assert values["kept"].split("/")[0] == str(computed[name]["kept"])
        float(values["seconds"])


@pytest.mark.parametrize("args", [[], ["--d", "6", "-m", "analytic", "-m", "taylor"]])
def test_table_on_80_columns_or_a_pipe_never_splits_a_number(args):
    """Rich used to fold numeric cells: 2.36e-10 printed as "2.36e-1" with "0" on the next line."""
    computed = _computed(args)
    result = runner.invoke(app, ["compare", *args], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    rows = [line.split() for line in lines if line.split() and line.split()[0] in computed]
    assert len(rows) == len(computed)
    keys = ("angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds")
    for cells in rows:
        assert len(cells) == 1 + len(keys), cells
    _check_numbers({cells[0]: dict(zip(keys, cells[1:])) for cells in rows}, computed)


def test_a_terminal_too_narrow_for_the_table_gets_one_block_per_method():
    args = ["--d", "6", "-m", "analytic", "-m", "taylor:K=19"]
    computed = _computed(args)
    result = runner.invoke(app, ["compare", *args], env={"COLUMNS": "50"})
    assert result.exit_code == 0, result.output
    printed, name = {}, None
    for word in result.stdout.split():
        if word in computed:
            name = word
            printed[name] = {}
        elif name and "=" in word and word.split("=")[0] in NUMERIC + ("kept", "finite", "seconds"):
            key, value = word.split("=", 1)
            printed[name][key] = value
    assert all(len(values) == 7 for values in printed.values()), printed
    _check_numbers(printed, computed)


def test_a_text_file_as_matrix_is_named_as_not_npy(tmp_path):
    for name in ("A.csv", "A.txt"):
        (tmp_path / name).write_text("1,2\n2,1\n")
        result = runner.invoke(app, ["compare", "--matrix", str(tmp_path / name)])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
        assert f"{tmp_path / name} is not a .npy file" in result.stderr and "numpy.save" in result.stderr
        assert "pickled" not in result.stderr


def test_the_same_method_twice_is_rejected_before_any_work():
    """taylor:K=9 is taylor with its default K: the same method."""
    result = runner.invoke(app, ["compare", "-m", "taylor", "-m", "taylor:K=9", "-m", "analytic"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "taylor" in result.stderr and "twice" in result.stderr


def test_a_matrix_eigh_accepts_is_accepted_by_compare(tmp_path):
    """Asymmetry of 1e-9·max|A| in float64 is within √eps·max|A|, stabkit.torch.eigh's tolerance."""
    A = build([1.0, 2.0, 3.5, 5.0])
    A[0, 1] += 1e-9 * np.abs(A).max()
    result = runner.invoke(app, ["compare", "--matrix", _npy(tmp_path, "a.npy", A), "-m", "analytic", "--format", "json"])
    assert result.exit_code == 0, result.output
    A[0, 1] += 1e-7 * np.abs(A).max()
    result = runner.invoke(app, ["compare", "--matrix", _npy(tmp_path, "b.npy", A), "-m", "analytic"])
    assert result.exit_code == 2 and "not symmetric" in result.stderr and "√eps" in result.stderr


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**70])
def test_a_seed_beyond_int64_is_refused_naming_the_range(seed):
    """A seed above 2^63 − 1 was refused as 'must be an integer ≥ 0', which it is."""
    result = runner.invoke(app, ["compare", "--seed", str(seed), "-m", "analytic"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"seed must be an integer in [0, 2^63 − 1], got {seed}" in result.stderr


def test_a_1x1_matrix_is_compared_as_by_the_library(tmp_path):
    """The CLI refused d = 1 ("need d ≥ 2") where ``compare()`` took it; both now score it. For A = [a]
    the zca loss is L = G·a^(-1/2), so ∂L/∂A = −G·a^(-3/2)/2 (closed form)."""
    from stabkit.compare import compare
    from stabkit.losses import make_loss

    a = 2.5
    G = make_loss("zca", 1, seed=0).weight[0, 0]
    result = compare(np.array([[a]]), "zca", ["analytic", "taylor", "pi-forward"])
    np.testing.assert_allclose(result.truth.grad, [[-0.5 * G * a**-1.5]], rtol=1e-15)
    assert [r["rel_err"] < 1e-15 for r in result.rows] == [True] * 3
    path = _npy(tmp_path, "one.npy", np.array([[a]]))
    cli = runner.invoke(app, ["compare", "--matrix", path, "--format", "json", "-m", "analytic", "-m", "taylor"])
    assert cli.exit_code == 0, cli.output
    assert [json.loads(line)["rel_err"] < 1e-15 for line in cli.stdout.strip().splitlines()] == [True] * 2
    empty = runner.invoke(app, ["compare", "--d", "0"])
    assert empty.exit_code == 2 and "needs d ≥ 2" in empty.stderr


@pytest.mark.parametrize("d", ["0", "1", "-3"])
def test_a_generated_matrix_below_d_2_gets_one_consistent_message(d):
    """--d 0 said "need d ≥ 1" and --d 1 then said "need 2 <= d": one message now names the real bound."""
    result = runner.invoke(app, ["compare", "--d", d, "-m", "analytic"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --d {d}: a generated matrix needs d ≥ 2 (give a 1×1 matrix with --matrix)"
