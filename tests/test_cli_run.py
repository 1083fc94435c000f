"""``stabkit run`` and ``stabkit report``: a mistake is one ``error:`` line and exit 2, a partial or
empty run says what is left, and a damaged study does not break the others."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from stabkit import compare, spectra
from stabkit.studies import publish
from stabkit.cli.main import app

TINY = Path(__file__).resolve().parents[1] / "studies" / "tiny.toml"
REPORTS = Path(__file__).resolve().parents[1] / "reports"


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_a_truth_too_big_for_memory_is_refused_before_any_matrix_is_built(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a matrix was built")

    monkeypatch.setattr(spectra, "make", no_build)
    for extra in ([], ["--force"]):  # memory that cannot fit is refused even with --force
        result = _invoke("run", TINY, "--set", "d=[100000]", "--out", tmp_path / "out", *extra)
        _one_error_line(result, "d = 100000", "GiB")
    assert not (tmp_path / "out").exists()


def test_a_long_truth_needs_force(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "TRUTH_SECONDS_LIMIT", 0.0)  # every truth counts as too long
    out = tmp_path / "out"
    _one_error_line(_invoke("run", TINY, "--set", "d=[6]", "--out", out), "d = 6", "--force")
    assert not out.exists()
    result = _invoke("run", TINY, "--set", "d=[6]", "--out", out, "--force", "--max-cells", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "--force" in (out / "tiny" / "run.json").read_text()  # the recorded command reruns it


def test_run_restores_the_callers_sigterm_handler(tmp_path):
    """``stabkit run`` turns SIGTERM into an interrupt only while it runs: a caller that runs it
    in-process (these tests, a notebook) gets its own handler back."""
    import signal

    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        result = _invoke("run", TINY, "--set", "d=[4]", "--out", tmp_path / "out", "--max-cells", "1", "--no-progress")
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_out_path_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    _one_error_line(_invoke("run", TINY, "--out", afile), str(afile), "not a directory")


def test_an_out_path_where_no_folder_can_be_made_is_named(tmp_path, monkeypatch):
    """A file system with no place for the folder fails mkdir with ENOENT, not a storage errno (Linux's
    /proc does; here mkdir is made to): still one line naming the folder and what to change."""
    import errno

    def refuse(self, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "nowhere"
    _one_error_line(_invoke("run", TINY, "--out", out), f"cannot create {out / 'tiny'}", "--out")


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"\xff\xfe[study]\n"), ["not UTF-8"]),
    (lambda p: p.mkdir(), ["is a directory"]),
], ids=["not-utf8", "directory"])
def test_a_study_file_that_cannot_be_read_is_named(tmp_path, make, words):
    path = tmp_path / "bad.toml"
    make(path)
    _one_error_line(_invoke("run", path, "--out", tmp_path / "out"), str(path), *words)


def test_a_grid_key_set_twice_is_refused(tmp_path):
    _one_error_line(_invoke("run", TINY, "--set", "d=[4]", "--set", "d=[6]", "--out", tmp_path), "'d' given twice")


def test_partial_and_empty_runs_say_what_is_left_and_how_to_finish(tmp_path):
    out = tmp_path / "out"
    finish = f"stabkit run {TINY} --out={out}"
    result = _invoke("run", TINY, "--out", out, "--max-cells", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "nothing computed" in result.stderr and "12 cells not computed yet" in result.stderr
    assert f"`{finish}`" in result.stderr
    _one_error_line(_invoke("report", "tiny", "--out", out), "no computed cells yet")

    result = _invoke("run", TINY, "--out", out, "--max-cells", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "9 cells not computed yet" in result.stderr and f"`{finish}`" in result.stderr
    readme = (out / "tiny" / "README.md").read_text()
    assert f"9 of 12 cells are not computed yet; `{finish}` computes them" in readme
    assert "0 failed, 9 not computed yet)" in readme


def test_a_damaged_study_is_left_out_of_the_index_and_breaks_no_other(tmp_path):
    out = tmp_path / "out"
    assert _invoke("run", TINY, "--out", out, "--max-cells", "2", "--no-progress").exit_code == 0
    other = out / "other"
    other.mkdir()
    (other / "run.json").write_text((out / "tiny" / "run.json").read_text())
    (other / "results.parquet").write_text("not parquet")
    for args in (["run", TINY, "--out", out, "--max-cells", "1", "--no-progress"], ["report", "tiny", "--out", out]):
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "'other'" in warnings[0], result.stderr
        index = (out / "README.md").read_text()
        assert "[tiny](tiny/README.md)" in index and "other" not in index
    _one_error_line(_invoke("report", "other", "--out", out), str(other / "results.parquet"), "unreadable")


def test_a_table_without_a_column_the_report_needs_names_the_column_the_file_and_the_fix(tmp_path):
    """A results table that lacks a column its kind's report reads (an older table, an edited one):
    `stabkit report` names the column and the file and says to rerun the study (before: `error:
    angle_deg`), and the index leaves that study out with a warning instead of failing the others."""
    out = tmp_path / "out"
    assert _invoke("run", TINY, "--out", out, "--max-cells", "1", "--no-progress").exit_code == 0
    old = out / "old"
    shutil.copytree(out / "tiny", old)
    table = old / "results.parquet"
    pd.read_parquet(table).drop(columns=["angle_deg"]).to_parquet(table)
    _one_error_line(_invoke("report", "old", "--out", out), f"{table} has no column 'angle_deg'",
                    "gradient_accuracy report", f"rerun the study (`stabkit run {TINY} --out={out}`)")
    result = _invoke("report", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().startswith("warning: reports index: study 'old' left out:"), result.stderr
    assert "no column 'angle_deg'" in result.stderr and "[old]" not in (out / "README.md").read_text()


@pytest.mark.parametrize("edit", ["one-value", "whole-column"])
def test_text_in_a_number_column_names_the_file_and_column_and_changes_nothing(tmp_path, edit):
    """A results table whose number column holds text (edited by hand or by another tool) was the
    kind's TypeError traceback (`agg function failed`), exit 1: now one line naming the file, the
    column and the value, exit 2, and neither the table nor the report is touched."""
    out = tmp_path / "out"
    shutil.copytree(REPORTS / "quickstart", out / "quickstart")
    table = out / "quickstart" / "results.parquet"
    edited = pd.read_parquet(table)
    edited["angle_deg"] = edited["angle_deg"].astype(str)
    edited.loc[0 if edit == "one-value" else slice(None), "angle_deg"] = "abc"
    edited.to_parquet(table, index=False)
    before = {path: path.read_bytes() for path in (out / "quickstart").rglob("*") if path.is_file()}
    result = _invoke("report", "quickstart", "--out", out)
    _one_error_line(result, f"{table}: column 'angle_deg' holds text ('abc' in row 1 of", "left as it is")
    assert "Traceback" not in result.output
    assert {path: path.read_bytes() for path in (out / "quickstart").rglob("*") if path.is_file()} == before
    assert not (out / "README.md").exists()


def test_only_a_column_pandas_cannot_find_is_reported_as_missing(tmp_path):
    table = pd.DataFrame({"angle_deg": [1.0]})
    with pytest.raises(ValueError, match="has no column 'rel_err'"):
        with publish._columns_needed(table, tmp_path / "results.parquet", {"kind": "k"}):
            table["rel_err"]
    with pytest.raises(KeyError, match="rel_err"):  # a kind's own lookup is its own error
        with publish._columns_needed(table, tmp_path / "results.parquet", {"kind": "k"}):
            {}["rel_err"]
    with pytest.raises(KeyError, match="torch"):  # so is a Series lookup inside pandas
        with publish._columns_needed(table, tmp_path / "results.parquet", {"kind": "k"}):
            pd.Series({"pi": 1.0})["torch"]
    with pytest.raises(KeyError):  # and a list of columns, whose message is no column name
        with publish._columns_needed(table, tmp_path / "results.parquet", {"kind": "k"}):
            table[["rel_err"]]
    with pytest.raises(ValueError, match="has no column 'rel_err'"):  # a frame derived from the table counts
        with publish._columns_needed(table, tmp_path / "results.parquet", {"kind": "k"}):
            table[table["angle_deg"] > 0]["rel_err"]


def test_a_published_table_whose_cells_are_not_kept_is_never_cut_down(tmp_path):
    # a fresh checkout: results.parquet is committed, cells/ is not. A check (--max-cells 0) or a
    # short run would rewrite the table from the cell files alone and drop what only the table holds:
    # refused before any work, the table untouched; the whole grid may run, and recomputes it all
    out = tmp_path / "out"
    assert _invoke("run", TINY, "--out", out, "--no-progress").exit_code == 0
    published = out / "tiny" / "results.parquet"
    before = published.read_bytes()
    shutil.rmtree(out / "tiny" / "cells")
    for short, dropped in (("0", 12), ("3", 9)):
        _one_error_line(_invoke("run", TINY, "--out", out, "--max-cells", short, "--no-progress"),
                        f"publishes {dropped} cell(s)", "no --max-cells")
        assert published.read_bytes() == before
    _one_error_line(_invoke("run", TINY, "--out", out, "--set", "d=[4]", "--no-progress"),
                    "not cells of this grid")
    assert published.read_bytes() == before
    assert _invoke("run", TINY, "--out", out, "--no-progress").exit_code == 0
    assert len(pd.read_parquet(published)) == len(pd.read_parquet(io.BytesIO(before)))


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _named(name):
    """A study file: tiny.toml under another study.name."""
    def write(folder):
        path = folder / "named.toml"
        path.write_text(TINY.read_text().replace('name = "tiny"', f'name = "{name}"'))
        return path
    return write


@pytest.mark.parametrize("study, args, words", [
    (None, ["--reuse-stale", "--recompute-stale"], ["--reuse-stale and --recompute-stale exclude each other"]),
    (None, ["--jobs", "0"], ["--jobs must be ≥ 1, got 0"]),
    (None, ["--max-cells", "-1"], ["--max-cells must be ≥ 0, got -1"]),
    (_named(".."), [], ["study.name '..' must be a plain directory name"]),
    (_named(".hidden"), [], ["study.name '.hidden' must be a plain directory name"]),
    (None, ["--scheduler", "tcp://127.0.0.1:{port}"], ["cannot connect to the Dask scheduler at tcp://127.0.0.1:{port}"]),
    (_named("a" * 256), [], ["study.name 'aaa", "must be a plain directory name"]),  # was OSError: name too long
    (_named("\\u0000"), [], ["study.name '\\x00' must be a plain directory name"]),  # was 'embedded null byte'
    (None, ["--scheduler", ""], ["--scheduler is empty"]),  # was a silent local run on every core
    (None, ["--scheduler", "nohost"], ["cannot connect to the Dask scheduler at nohost:", "nohost"]),  # was Dask's words alone
], ids=["reuse-and-recompute-stale", "jobs-0", "max-cells-negative", "name-dotdot", "name-hidden",
        "scheduler-unreachable", "name-too-long", "name-nul", "scheduler-empty", "scheduler-no-port"])
def test_a_bad_run_option_is_one_line_before_any_work(tmp_path, monkeypatch, study, args, words):
    """Each is refused with one ``error:`` line naming it, exit 2, no traceback, before anything is
    computed or written: no cell is run, the output root is not created, and nothing appears
    anywhere else under tmp_path (a study named ".." would write its cells next to the root)."""
    from stabkit.studies import _workers, runner

    if "--scheduler" in args:
        pytest.importorskip("distributed")
        monkeypatch.setattr(_workers, "SCHEDULER_CONNECT_TIMEOUT", "1s")  # 20 s by default
        port = _closed_port()
        args = [a.format(port=port) for a in args]
        words = [w.format(port=port) for w in words]
    computed = []

    def no_cells(*a, **k):
        computed.append(a)
        raise AssertionError("cells were computed")

    monkeypatch.setattr(runner, "run_local", no_cells)
    monkeypatch.setattr(runner, "run_dask", no_cells)
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = study(inputs) if study else TINY
    out = tmp_path / "root" / "out"
    result = _invoke("run", path, "--set", "d=[4]", "--out", out, "--no-progress", *args)
    _one_error_line(result, *words)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    assert not computed
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["in", *(["in/named.toml"] if study else [])]


def test_report_refuses_a_name_that_leads_out_of_the_reports_root(tmp_path):
    """`run` refuses such a study.name; `report` rebuilt the README of the study it led to and wrote
    an index entry pointing out of --out."""
    other = tmp_path / "other"
    result = _invoke("run", TINY, "--set", "d=[4]", "--out", other, "--max-cells", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    (other / "tiny" / "README.md").unlink()
    root = tmp_path / "root"
    root.mkdir()
    _one_error_line(_invoke("report", "../other/tiny", "--out", root), "'../other/tiny' must be a plain directory name")
    assert not (other / "tiny" / "README.md").exists() and not list(root.iterdir())


def test_report_refuses_an_empty_study_name(tmp_path):
    """`report ""` looked for results.parquet in the reports' root itself ("no results for study ''")."""
    _one_error_line(_invoke("report", "", "--out", tmp_path), "study.name '' must be a plain directory name")
    assert not list(tmp_path.iterdir())


def test_an_empty_out_or_a_folder_with_another_readme_is_refused_before_any_work(tmp_path, monkeypatch):
    """`--out ''` is the current folder and `--out .` in a checkout would overwrite the checkout's own
    README.md with the reports index: an empty --out is refused, and an existing README.md that is
    not a reports index is never overwritten (run refuses before computing a cell)."""
    from stabkit.studies import runner

    monkeypatch.setattr(runner, "run_local", lambda *a, **k: pytest.fail("cells were computed"))
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    for args in (["run", TINY, "--out", ""], ["report", "tiny", "--out", ""]):
        _one_error_line(_invoke(*args), "--out is empty")
    for args in (["run", TINY, "--out", ".", "--no-progress"], ["report", "tiny", "--out", "."]):
        _one_error_line(_invoke(*args), "README.md exists and is not a reports index")
    assert readme.read_text() == "# my project\n" and sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    with pytest.raises(ValueError, match="not a reports index"):
        publish.build_index(tmp_path)
    readme.write_text("# Reports\n\nold index\n")  # an index it wrote is rebuilt
    assert "old index" not in publish.build_index(tmp_path).read_text()


@pytest.mark.parametrize("damage", ["run.json-list", "run.json-no-kind", "run.json-grid-null", "text-column"])
def test_any_damaged_sibling_is_left_out_of_the_index_with_one_warning(tmp_path, damage):
    """A sibling whose run.json is not an object (was a TypeError traceback), lacks "kind" (was
    `error: kind`) or whose table holds text where the summary wants numbers (a TypeError traceback)
    is left out of the index with one warning; its own report names run.json (also for a null grid,
    which was a TypeError traceback)."""
    import json

    out = tmp_path / "out"
    assert _invoke("run", TINY, "--out", out, "--max-cells", "1", "--no-progress").exit_code == 0
    other = out / "other"
    shutil.copytree(out / "tiny", other)
    meta = json.loads((other / "run.json").read_text())
    if damage == "text-column":
        table = pd.read_parquet(other / "results.parquet")
        table["angle_deg"] = "text"
        table.to_parquet(other / "results.parquet")
    else:
        meta = {"run.json-list": [1, 2], "run.json-no-kind": {k: v for k, v in meta.items() if k != "kind"},
                "run.json-grid-null": {**meta, "grid": None}}[damage]
        (other / "run.json").write_text(json.dumps(meta))
    result = _invoke("report", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    index = (out / "README.md").read_text()
    assert "[tiny](tiny/README.md)" in index
    if damage != "run.json-grid-null":  # the index needs no grid, only the study's own report does
        assert len(warnings) == 1 and "study 'other' left out" in warnings[0], result.stderr
        assert "other" not in index
    damaged = other / ("results.parquet" if damage == "text-column" else "run.json")
    _one_error_line(_invoke("report", "other", "--out", out), str(damaged))


def test_a_full_disk_while_the_report_is_written_is_one_line_and_keeps_the_cells(tmp_path, monkeypatch):
    """Disk full after the cells are done (the report's files) was an OSError traceback, exit 1."""
    import errno

    out = tmp_path / "out"

    def full(path, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(publish, "write_text_atomic", full)
    _one_error_line(_invoke("run", TINY, "--out", out, "--set", "d=[4]", "--max-cells", "1", "--no-progress"),
                    f"cannot write {out / 'tiny' / 'README.md'}: No space left on device", "finished cells are kept",
                    f"`stabkit report tiny --out={out}`")
    assert len(pd.read_parquet(out / "tiny" / "results.parquet")) > 0
    _one_error_line(_invoke("report", "tiny", "--out", out), "No space left on device", "finished cells are kept")


@pytest.mark.parametrize("kind, sets, words", [
    ("angle_surfaces", ['parts=["k_eps"]', "cluster_params={delta=-1.0}"], ["grid key 'cluster_params'", "delta=-1.0 is impossible"]),
    ("angle_surfaces", ['parts=["gap_d"]', "gap_params={k=100}", "gap_dims=[4,8]"],
     ["grid keys 'gap_params', 'gap_param' and 'gap_deltas'", "at d=4", "k=100"]),
    ("o2p_stability", ['families=[{family="cluster",delta=-1.0}]'], ["grid key 'families'", "delta=-1.0 is impossible"]),
    ("o2p_stability", ['families=["wishart"]'], ["grid key 'families'", "wishart", "no exact eigenvalues"]),
], ids=["k_eps-negative-delta", "gap_d-cluster-larger-than-d", "o2p-negative-delta", "o2p-family-without-eigenvalues"])
def test_a_spectrum_parameter_value_the_family_refuses_is_one_line_before_any_cell(tmp_path, monkeypatch, kind, sets, words):
    """angle_surfaces checked the names of cluster_params/gap_params but not their values, o2p_stability
    neither the values of its families' parameters nor whether a family gives the eigenpairs it builds F
    from: every cell then failed ("all N cells failed", exit 1, after the work) for a mistake in the study file."""
    from stabkit.studies import runner

    monkeypatch.setattr(runner, "run_local", lambda *a, **k: pytest.fail("cells were computed"))
    study = tmp_path / "surfaces.toml"
    study.write_text(f'[study]\nname = "surfaces"\nkind = "{kind}"\n')
    out = tmp_path / "out"
    args = [arg for item in sets for arg in ("--set", item)]
    _one_error_line(_invoke("run", study, *args, "--out", out, "--jobs", "1", "--no-progress"), *words)
    assert not out.exists()


def test_an_early_window_longer_than_the_run_is_refused_before_any_cell(tmp_path, monkeypatch):
    """zca_cifar10's early_frac is the share of each run's steps its link model reads: 2.0 was accepted
    and the report spoke of "the first 200 % of the steps"."""
    from stabkit.studies import runner

    monkeypatch.setattr(runner, "run_local", lambda *a, **k: pytest.fail("cells were computed"))
    study = tmp_path / "zca.toml"
    study.write_text('[study]\nname = "zca"\nkind = "zca_cifar10"\n')
    out = tmp_path / "out"
    _one_error_line(_invoke("run", study, "--set", "early_frac=2.0", "--out", out, "--jobs", "1", "--no-progress"),
                    "zca_cifar10: early_frac must be in (0, 1], got 2.0")
    assert not out.exists()


@pytest.mark.parametrize("setting, words", [
    ("train_options={lr=1.0}", ["train_options sets lr", "grid key lr"]),
    ("train_options={d=8,method='taylor'}", ["train_options sets d, method", "grid key cells"]),
], ids=["lr", "d-and-method"])
def test_train_options_that_repeat_a_grid_key_are_refused(tmp_path, monkeypatch, setting, words):
    """zca_cifar10_survival's train_options were passed to train_run over the grid's own values: lr=1.0
    there trained every run at lr 1 while the grid, run.json and the report said 0.1."""
    from stabkit.studies import runner

    monkeypatch.setattr(runner, "run_local", lambda *a, **k: pytest.fail("cells were computed"))
    study = tmp_path / "survival.toml"
    study.write_text('[study]\nname = "survival"\nkind = "zca_cifar10_survival"\n')
    out = tmp_path / "out"
    _one_error_line(_invoke("run", study, "--set", setting, "--out", out, "--jobs", "1", "--no-progress"), *words)
    assert not out.exists()


@pytest.mark.parametrize("key", ["study", "machine"])
def test_a_run_json_whose_descriptive_table_is_damaged_still_reports(tmp_path, key):
    """run.json's "study" or "machine" as null (an edited or damaged record) was an AttributeError
    traceback, exit 1, in the report's header; like a missing field it is shown as unknown."""
    import json

    out = tmp_path / "out"
    assert _invoke("run", TINY, "--set", "d=[4]", "--out", out, "--max-cells", "1", "--no-progress").exit_code == 0
    record = out / "tiny" / "run.json"
    meta = json.loads(record.read_text())
    meta[key] = None
    record.write_text(json.dumps(meta))
    result = _invoke("report", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    readme = (out / "tiny" / "README.md").read_text()
    assert "Study kind `gradient_accuracy`" + ("." if key == "study" else " — a seconds-long demo grid.") in readme
    assert ("| machine | ?, ? cores" in readme) == (key == "machine")
