"""A study file's grid (stabkit.studies._grid): loading and its user errors (StudyFileError, one line
and exit 2 from the CLI, before any work), --set overrides, cells, Python 3.10 through tomli."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stabkit.cli.main import app
from stabkit.errors import StudyFileError
from stabkit.studies import _grid, check_choices, kind_module, with_defaults

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, grid: str, name: str = "mini") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[study]\nname = "{name}"\nkind = "gradient_accuracy"\n[grid]\n{grid}\n')
    return path


@pytest.mark.parametrize(
    "grid, extra, named",
    [
        ('colour = "red"', [], "'colour'"),
        ('methods = ["analytic", "magic"]', [], "'magic'"),
        ('methods = ["taylor:Q=3"]', [], "'Q'"),
        ('families = ["separated", "banana"]', [], "'banana'"),
        ("d = [1, 4]", [], "'d'"),
        ('dtypes = ["float16"]', [], "'dtypes'"),
        ("", ["--set", "d=[4,1]"], "'d'"),
        ("", ["--set", "nonsense=3"], "'nonsense'"),
    ],
)
def test_bad_study_files_exit_2_naming_the_key_before_any_work(tmp_path, grid, extra, named):
    study = _study(tmp_path, grid)
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2, result.output
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert message.startswith("error: ") and named in message and len(message.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # failed before any work


def test_bad_study_tables_and_missing_files(tmp_path):
    bad_kind = tmp_path / "k.toml"
    bad_kind.write_text('[study]\nname = "x"\nkind = "nope"\n')
    no_name = tmp_path / "n.toml"
    no_name.write_text('[study]\nkind = "gradient_accuracy"\n')
    broken = tmp_path / "b.toml"
    broken.write_text("[study\n")
    for path, text in ((bad_kind, "unknown study kind 'nope'"), (no_name, "study.name"),
                       (broken, "not valid TOML"), (tmp_path / "missing.toml", "not found")):
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and text in result.output, result.output
    result = CliRunner().invoke(app, ["report", "ghost", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "ghost" in result.output


GOOD = {"name": "x", "kind": "gradient_accuracy"}


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ({"study": GOOD, "extra": {}}, None, r"unknown study table \[extra\]"),
        ({"grid": {}}, None, r"needs a \[study\] table"),
        ({"study": {**GOOD, "owner": "me"}}, None, "unknown key study.owner"),
        ({"study": {"name": "x"}}, None, "study.kind is required"),
        ({"study": {**GOOD, "description": 5}}, None, "study.description must be text, got 5"),  # was accepted
        ({"study": {**GOOD, "name": "../x"}}, None, "plain directory name"),
        ({"study": {**GOOD, "kind": "nope"}}, None, "unknown study kind 'nope'"),
        ({"study": GOOD, "grid": [1]}, None, r"\[grid\] must be a table"),
        ({"study": GOOD}, {"nonsense": 3}, "--set: unknown grid key 'nonsense'"),
        ({"study": GOOD, "grid": {"colour": "red"}}, None, "unknown grid key 'colour'"),
    ],
)
def test_every_study_file_mistake_is_a_study_file_error(config, overrides, message):
    with pytest.raises(StudyFileError, match=message) as caught:
        _grid.load_study(config, overrides)
    assert isinstance(caught.value, ValueError)  # existing `except ValueError` handlers keep working


def test_a_kinds_validation_error_becomes_a_study_file_error_and_a_method_spec_error_stays_one():
    from stabkit.errors import MethodSpecError

    class Kind:
        @staticmethod
        def validate(grid):
            if grid.get("spec"):
                raise MethodSpecError("bad spec")
            raise ValueError("k: d [1] not allowed")

    with pytest.raises(StudyFileError, match=r"^k: d \[1\] not allowed$"):
        _grid.validate(Kind, {})
    with pytest.raises(MethodSpecError) as caught:
        _grid.validate(Kind, {"spec": 1})
    assert not isinstance(caught.value, StudyFileError)
    for grid in ({"d": [1, 4]}, {"dtypes": ["float16"]}):
        with pytest.raises(StudyFileError):
            _grid.load_study({"study": GOOD, "grid": grid})


def test_the_shared_grid_checks_raise_study_file_errors():
    with pytest.raises(StudyFileError, match="choose one of"):
        kind_module("nope")
    with pytest.raises(StudyFileError, match=r"k: x \['c'\] not allowed: choose from a, b"):
        check_choices("k", "x", ["a", "c"], ("a", "b"))
    with pytest.raises(StudyFileError, match="not allowed"):
        check_choices("k", "x", [], ("a", "b"))
    with pytest.raises(StudyFileError, match=r"k: unknown grid key 'z' \(allowed: a\)"):
        with_defaults("k", {"z": 1}, {"a": 0})
    assert with_defaults("k", {"a": 2}, {"a": 0, "b": 1}) == {"a": 2, "b": 1}


def test_overrides_are_toml_literals():
    assert _grid.parse_override("d=[4, 8]") == ("d", [4, 8])
    assert _grid.parse_override("dtypes=['float32']") == ("dtypes", ["float32"])
    assert _grid.parse_override("losses=zca") == ("losses", "zca")
    assert _grid.parse_override("seeds=3") == ("seeds", 3)
    assert _grid.parse_override(" d = [4, 8] ") == ("d", [4, 8])  # the one grammar: stabkit._assign
    with pytest.raises(StudyFileError, match="--set: expected KEY=VALUE, got 'd'"):
        _grid.parse_override("d")


def test_overrides_replace_grid_keys_before_validation():
    study, kind, grid = _grid.load_study({"study": GOOD, "grid": {"d": [4, 6]}}, {"d": [5]})
    assert study == GOOD and kind is kind_module("gradient_accuracy") and grid["d"] == [5]


def test_expand_keeps_the_kinds_order_and_refuses_duplicate_cell_ids():
    class Kind:
        @staticmethod
        def cells(grid):
            return [{"cell_id": c} for c in grid["ids"]]

    assert [c["cell_id"] for c in _grid.expand({"kind": "k"}, Kind, {"ids": ["b", "a"]})] == ["b", "a"]
    with pytest.raises(ValueError, match="study kind 'k' produced duplicate cell ids"):
        _grid.expand({"kind": "k"}, Kind, {"ids": ["a", "a"]})


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_loads_and_names_its_report(path):
    study, kind, grid = _grid.load_study(path)
    cells = _grid.expand(study, kind, grid)
    assert study["name"] == path.stem and cells  # `stabkit run studies/X.toml` writes reports/X/
    assert len({c["cell_id"] for c in cells}) == len(cells)


def test_python_3_10_is_supported_through_tomli():
    text = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in text
    assert re.search(r'"tomli>=[\d.]+; python_version < \'3.11\'"', text)
    # no module imports tomllib except the grid's, whose fallback is exercised below
    for path in [*(REPO / "stabkit").rglob("*.py"), *(REPO / "cli").rglob("*.py")]:
        tree = ast.parse(path.read_text(), feature_version=(3, 10))  # no 3.11-only syntax either
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "tomllib" in imports:
            assert path.relative_to(REPO).as_posix() == "stabkit/studies/_grid.py", path
    code = ("import sys, tomllib as real\n"
            "sys.modules['tomllib'] = None\n"  # as on 3.10, where the module does not exist
            "sys.modules['tomli'] = real\n"
            "from stabkit.studies import _grid\n"
            "from stabkit.train import session\n"
            "assert _grid.tomllib is real and session.tomllib is real\n"
            "print(_grid.load_study(sys.argv[1])[0]['name'])")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "studies" / "tiny.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "tiny", proc.stderr


def _kind_study(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.toml"
    path.write_text(f'[study]\nname = "typed"\nkind = "{kind}"\n[grid]\n')
    return path


@pytest.mark.parametrize("kind, setting, message", [
    ("gap_probability", "sources=0", "grid key 'sources': each value must be text, got 0"),
    ("gap_probability", "n_matrices=inf", "grid key 'n_matrices' must be an integer, got inf"),
    ("gap_probability", "cifar_batch=true", "grid key 'cifar_batch' must be an integer, got True"),
    ("gap_probability", "zca_eps=nan", "grid key 'zca_eps' must be a finite number, got nan"),
    ("gap_probability", "taus=[1e-3,1e-3]", "grid key 'taus': 0.001 appears twice"),
    ("angle_surfaces", 'energy_ratios="x"', "grid key 'energy_ratios' must be an integer, got 'x'"),
    ("angle_surfaces", "cluster_params=[]", "grid key 'cluster_params' must be a table, got []"),
    ("projector_rank", "descent_k=[]", "grid key 'descent_k' is empty"),
    ("projector_rank", "descent_steps=1.5", "grid key 'descent_steps' must be an integer, got 1.5"),
    ("projector_rank", "descent_lr=inf", "grid key 'descent_lr' must be a finite number, got inf"),
    ("zca_cifar10", "dims=true", "grid key 'dims': each value must be an integer, got True"),
    ("zca_cifar10_survival", "seeds=[1,2]", "grid key 'seeds' must be an integer, got [1, 2]"),
    # keys whose default is None (the kind or the training configuration checks them)
    ("zca_cifar10", "eps=[1]", "zca_cifar10: eps must be > 0, got [1]"),
    ("zca_cifar10", "milestones=0.5", "zca_cifar10: milestones must be a list of numbers, got 0.5"),
    ("zca_cifar10", 'baseline_study="../zca-cifar10"', "zca_cifar10: baseline_study must be a report name (a study's folder"),
    ("zca_cifar10_survival", "compile=[]", "unknown compile mode []"),
    ("zca_cifar10_survival", "train_options={check_every=[]}", "check_every must be an integer in [1, 2^63 − 1], got []"),
])
def test_a_grid_value_of_the_wrong_type_is_named_for_every_kind(tmp_path, kind, setting, message):
    """Each once raised a TypeError/OverflowError traceback (exit 1) in the kind's checks, or was
    accepted (a NaN ε, an empty or duplicated list, a bool or a fraction as a count); now one line
    naming the key and the value, exit 2, nothing written."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(_kind_study(tmp_path, kind)), "--set", setting, "--out", str(out),
                                      "--max-cells", "0", "--no-progress"])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {message}"), result.output
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_a_scalar_for_a_list_key_is_a_one_element_list_for_every_kind():
    _, _, grid = _grid.load_study({"study": {"name": "x", "kind": "gap_probability"}}, {"dims": 4})
    assert grid["dims"] == [4]
    _, _, grid = _grid.load_study({"study": GOOD}, {"d": 4, "seeds": 0, "methods": "analytic"})
    assert (grid["d"], grid["seeds"]) == ([4], [0])


@pytest.mark.parametrize("kind, key", [("gap_probability", "seed"), ("angle_surfaces", "seeds"),
                                       ("angle_surfaces", "loss_seed"), ("projector_rank", "lemma1_seeds"),
                                       ("projector_rank", "descent_seeds"), ("projector_rank", "seed")])
def test_a_negative_seed_is_refused_before_any_cell(kind, key):
    """It was accepted, then every cell it reached failed with numpy's 'expected non-negative integer'."""
    with pytest.raises(StudyFileError, match=f"grid key '{key}': seed must be an integer in \\[0, 2\\^63 − 1\\], got -1"):
        _grid.load_study({"study": {"name": "x", "kind": kind}}, {key: -1})


def _survival_extension() -> dict:
    """A survival grid of 2 seeds with its first run extended to 350 epochs."""
    study, kind, grid = _grid.load_study({"study": {"name": "x", "kind": "zca_cifar10_survival"}}, {"seeds": 2})
    return {"seeds": 2, "extend_epochs": 350.0, "extend": [_grid.expand(study, kind, grid)[0]["cell_id"]]}


CELL_GRIDS = [
    ("gradient_accuracy", {}), ("gradient_accuracy", {"d": [4, 8], "seeds": [0, 1, 2], "losses": ["zca"]}),
    ("o2p_stability", {}), ("o2p_stability", {"eps": [0.5], "seeds": [0], "d": [4, 8, 16]}),
    ("angle_surfaces", {}), ("angle_surfaces", {"parts": ["energy", "gap_d"], "seeds": [0, 1]}),
    ("angle_surfaces", {"parts": ["angle3"]}), ("angle_surfaces", {"parts": ["k_eps"], "k_values": [1, 2, 3]}),
    ("projector_rank", {}), ("projector_rank", {"parts": ["lemma2"], "lemma2_cells": 7}),
    ("projector_rank", {"parts": ["lemma1", "descent"], "descent_seeds": [0, 1], "lemma1_dims": [6]}),
    ("gap_probability", {}), ("gap_probability", {"reduced": {"cifar10:512": 2000}}),
    ("gap_probability", {"sources": ["gaussian"], "n_matrices": 10, "chunk_size": 3,
                         "reduced": {"gaussian:4": 7, "gaussian:8": 1, "cifar10:4": 50}}),
    ("zca_cifar10", {}), ("zca_cifar10", {"bn_baseline": False, "seeds": 3, "dtypes": ["float32"]}),
    ("zca_cifar10_survival", {}), ("zca_cifar10_survival", "extended"),
]


@pytest.mark.parametrize("kind_name, overrides", CELL_GRIDS, ids=lambda v: str(v)[:40])
def test_the_cell_count_is_the_number_of_cells_the_kind_builds(kind_name, overrides):
    """_grid.cell_count reads the grid (defaults filled in, nothing validated or built); its count is
    exactly len(cells), counted here by building them."""
    overrides = _survival_extension() if overrides == "extended" else overrides
    study, kind, grid = _grid.load_study({"study": {"name": "x", "kind": kind_name}}, overrides)
    count, formula = _grid.cell_count(kind, overrides)
    assert count == len(_grid.expand(study, kind, grid)) > 0, formula


def test_every_kind_counts_its_cells():
    from stabkit.studies import KINDS

    assert {kind for kind, _ in CELL_GRIDS} == set(KINDS)
    assert all(callable(getattr(kind_module(kind), "cell_axes", None)) for kind in KINDS)


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_is_far_below_the_cell_cap(path):
    study, kind, grid = _grid.load_study(path)
    count, _ = _grid.cell_count(kind, _grid.read_study_file(path).get("grid", {}))
    assert count == len(_grid.expand(study, kind, grid)) and 1000 * count <= _grid.MAX_CELLS


@pytest.mark.parametrize("kind_name, overrides, named", [
    ("gradient_accuracy", {"seeds": list(range(100_000)), "d": [4, 8]},
     ["exactly 19,200,000 cells", "families (16) × d (2) × dtypes (2) × losses (3) × seeds (100000)"]),
    ("zca_cifar10", {"seeds": 19_000_000},
     ["exactly 969,000,000 cells", "methods (5) × dims (5) × dtypes (2) × seeds (19000000) + bn_baseline (1) × seeds"]),
    ("zca_cifar10_survival", {"seeds": 19_000_000, "cells": [["svd", 8]]},
     ["exactly 19,000,000 cells", "cells (1) × dtypes (1) × seeds (19000000)"]),
    ("gap_probability", {"chunk_size": 1, "n_matrices": 1_000_000, "reduced": {"cifar10:512": 5}},
     ["exactly 15,000,005 cells", "sources × dims not in reduced (15) × ⌈n_matrices / chunk_size⌉ (1000000)",
      "⌈reduced cifar10:512 / chunk_size⌉ (5)"]),
])
def test_a_grid_past_the_cap_is_refused_before_any_cell_is_built(monkeypatch, kind_name, overrides, named):
    """A grid of 19 million cells was expanded in silence (gigabytes, minutes) before any message;
    now it is refused at once, counted without the kind's validate or cells, naming the count and
    the grid keys whose sizes multiply to it."""
    kind = kind_module(kind_name)

    def no_build(*args, **kwargs):
        raise AssertionError("the grid was validated or expanded")

    monkeypatch.setattr(kind, "cells", no_build)
    monkeypatch.setattr(kind, "validate", no_build)
    start = time.perf_counter()
    with pytest.raises(StudyFileError, match="more than the 1,000,000 a study may have") as caught:
        _grid.load_study({"study": {"name": "x", "kind": kind_name}}, overrides, force=True)
    assert time.perf_counter() - start < 5
    for words in named:
        assert words in str(caught.value), str(caught.value)


def test_the_cli_refuses_a_grid_past_the_cap_in_one_line(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(kind_module("zca_cifar10"), "cells", no_build)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(_kind_study(tmp_path, "zca_cifar10")), "--set", "seeds=19000000",
                                      "--out", str(out), "--force", "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the grid expands into exactly 969,000,000 cells = "), lines
    assert "seeds (19000000)" in lines[0] and "MAX_CELLS" in lines[0] and "Traceback" not in result.output
    assert not out.exists()
