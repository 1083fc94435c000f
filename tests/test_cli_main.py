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


def test_methods_marks_the_library_and_train_defaults():
    """`stabkit train --help` no longer names its default method (naming it imported the registry): the
    methods listing marks it, and the library's, each on exactly the method the constants parse to."""
    rows = [json.loads(line) for line in runner.invoke(app, ["methods", "--json"]).stdout.strip().splitlines()]
    marked = {row["name"]: row["default_of"] for row in rows if row["default_of"]}
    train, library = methods.spec(methods.TRAIN_DEFAULT), methods.spec(methods.DEFAULT)
    assert f"stabkit train ({train})" in marked[train.name]
    assert f"a function or layer that names none ({library})" in marked[library.name]
    assert sum(map(len, marked.values())) == 2
    text = runner.invoke(app, ["methods"]).stdout
    block = text[text.index(f"{train.name}: "):].split("\n")
    assert block[1] == f"    default of stabkit train ({train})"


def test_method_help_points_to_the_methods_command():
    """The --method help names no method (listing the registry's names imported numpy into every
    --help); it points to `stabkit methods`, which lists them with their parameters."""
    import typer

    group = typer.main.get_command(app)
    for command in ("compare", "bench", "train"):
        option = next(p for p in group.commands[command].params if p.name == "method")
        assert "`stabkit methods`" in option.help, command
        assert not [name for name in methods.NAMES if name in option.help.replace("taylor:K=19", "")], command


def test_train_compile_help_names_every_accepted_mode():
    """The --compile help is text (the config that holds the modes imports torch): it names each mode
    the run accepts, so none is found only by trial."""
    import typer

    from stabkit.train.config import COMPILE_MODES

    option = next(p for p in typer.main.get_command(app).commands["train"].params if p.name == "compile_mode")
    assert [mode for mode in COMPILE_MODES if mode not in option.help] == []


def _help_words(cmd, name: str, width: int) -> set[str]:
    out = cmd.get_help(cmd.context_class(cmd, info_name=name, terminal_width=width))
    return {word.strip(",.;:()[]`'") for word in out.split()}


def test_help_never_splits_a_word_at_its_hyphen():
    """At any terminal width each hyphenated word of a help text is printed whole (click's wrapper
    broke ``pi-forward`` into ``pi-`` / ``forward``; a reader who copies ``nan-`` gets no stop rule)."""
    import typer

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        hyphenated = {w for w in _help_words(cmd, name, 400) if "-" in w.strip("-") and not w.startswith("-") and len(w) <= 20}
        for width in range(48, 121):
            assert not hyphenated - _help_words(cmd, name, width), (name, width)
    train = group.commands["train"]
    assert {"nan-loss", "paper-svd-head", "reduce-overhead"} <= _help_words(train, "train", 400)  # the check has words to check


#: what no ``--help`` may import: the numerical libraries (numpy alone cost each subcommand's --help
#: 0.11 s of 0.50 s, mpmath 0.03 s), the rest of what the commands use, and pydantic, which typer
#: imports only to convert an option's value (0.12 s; cli/main.py says how --help converts none)
HEAVY = ("numpy", "mpmath", "torch", "pandas", "matplotlib", "scipy", "flint", "pyarrow", "PIL", "pydantic")

_EVERY_HELP = """
import contextlib, io, sys
import typer
from stabkit.cli.main import app

def paths(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*path, name))

heavy = %r
for path in paths(typer.main.get_command(app)):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        app([*path, "--help"])
    print(" ".join(["stabkit", *path, "--help:"] + [m for m in heavy if m in sys.modules]))
"""


def test_no_help_imports_a_heavy_library():
    """`stabkit --help` and every (sub)command's --help, one after another in one process: after
    each, none of HEAVY is in sys.modules (the start-up target of < 0.5 s, benchmarks/bench_cli_startup.py)."""
    out = subprocess.run([sys.executable, "-c", _EVERY_HELP % (HEAVY,)], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    reached = [line.partition(":")[0] for line in out]
    assert len(reached) >= 10 and "stabkit monitor report --help" in reached, reached  # every command was asked
    assert all(line.endswith("--help:") for line in out), "\n".join(out)


def paths(command, path=()):
    """The path of every (sub)command below ``command``, ``()`` for itself."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*path, name))


def _command(group, path):
    for name in path:
        group = group.commands[name]
    return group


def test_every_option_is_described_with_its_default_and_a_plain_metavar():
    """An option whose default is None (shown as nothing) says its default in words; repeatable
    options show KEY=VALUE / D / METHOD, never a Python type such as <list[str]>."""
    import typer

    group = typer.main.get_command(app)
    commands = [path for path in paths(group) if path and not hasattr(_command(group, path), "commands")]
    assert len(commands) >= 8, commands  # run, report, watch and `monitor report` too: --set showed <list[str]>
    for path in commands:
        command = _command(group, path)
        ctx = command.make_context(path[-1], [], resilient_parsing=True)
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            assert param.help, (path, param.opts)
            if param.default is None and not param.is_flag:
                assert "default" in param.help.lower(), (path, param.opts, param.help)
            assert "list[" not in param.get_help_record(ctx)[0], (path, param.opts)
    train = {p.name: p.help for p in group.commands["train"].params}
    assert "STABKIT_CIFAR10" in train["data"] and "cifar10-jpeg.tar.gz" in train["data"]
