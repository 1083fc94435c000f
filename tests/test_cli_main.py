"""The ``stabkit`` entry point: --version, ``stabkit methods``, help texts, a light import."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import stabkit
from stabkit.cli.main import app
from stabkit import compare as compare_mod
from stabkit import methods

from .conftest import build

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def test_version_matches_the_package_metadata():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"stabkit {stabkit.__version__}"
    assert stabkit.__version__ == metadata.version("stabkit")


def test_methods_lists_the_registry_with_defaults_domains_and_papers():
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.stdout.strip().splitlines())}
    assert tuple(rows) == methods.NAMES
    assert rows["taylor"]["params"]["K"] == {"default": 9, "domain": "an integer from 0 to 1000"}
    assert rows["clip"]["params"]["tau"] == {"default": 100.0, "domain": "a finite number > 0"}
    assert rows["analytic"]["params"] == {} and "Ionescu" in rows["analytic"]["paper"]
    text = runner.invoke(app, ["methods"]).stdout
    for name in methods.NAMES:
        assert f"{name}: " in text
    assert "eps = 1e-12  (a finite number > 0)" in text  # lorentzian


def test_method_help_lists_every_method():
    for command in ("compare", "bench", "train"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).stdout
        for name in methods.NAMES:
            assert name in out, (command, name)


def test_help_never_splits_a_method_name_at_its_hyphen():
    """At any terminal width each method name is printed whole (click's wrapper used to break
    ``pi-forward`` into ``pi-`` / ``forward``; at width 71 the compare help ended a line in ``taylor-``)."""
    import typer

    group = typer.main.get_command(app)
    heads = tuple(f"{n.split('-')[0]}-" for n in methods.NAMES if "-" in n)
    for command in ("compare", "bench", "train"):
        cmd = group.commands[command]
        for width in range(48, 121):
            out = cmd.get_help(cmd.context_class(cmd, info_name=command, terminal_width=width))
            assert not any(line.rstrip().endswith(heads) for line in out.splitlines()), (command, width)
            words = out.split()
            for name in methods.NAMES:
                assert any(w.strip(",.()`") == name for w in words), (command, width, name)


def test_importing_the_cli_imports_no_heavy_library():
    """`stabkit --help` must not pay for torch/pandas/matplotlib/scipy/flint (2 s before)."""
    code = ("import sys, stabkit.cli.main; "
            "print(' '.join(m for m in ('torch', 'pandas', 'matplotlib', 'scipy', 'flint', 'pyarrow', 'PIL') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""


def test_every_option_is_described_with_its_default_and_a_plain_metavar():
    """An option whose default is None (shown as nothing) says its default in words; repeatable
    options show KEY=VALUE / D / METHOD, never a Python type such as <list[str]>."""
    import typer

    group = typer.main.get_command(app)
    for name in ("compare", "bench", "train"):
        for param in group.commands[name].params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            assert param.help, (name, param.opts)
            if param.default is None and not param.is_flag:
                assert "default" in param.help.lower(), (name, param.opts, param.help)
        out = runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).stdout
        assert "list[" not in out, name
    train = {p.name: p.help for p in group.commands["train"].params}
    assert "STABKIT_CIFAR10" in train["data"] and "cifar10-jpeg.tar.gz" in train["data"]
