"""The package's public face: the lazy top-level API, ``python -m stabkit``, and an install that puts
exactly one top-level package, ``stabkit`` (the command line as ``stabkit.cli``), into site-packages."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import stabkit

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pandas", "numpy", "matplotlib", "scipy", "mpmath", "flint", "pyarrow")


def _python(code: str, cwd: Path = REPO, **env) -> str:
    """stdout of ``python -c code`` in a fresh process that sees this checkout first."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_public_name_resolves():
    assert len(set(stabkit.__all__)) == len(stabkit.__all__)
    for name in stabkit.__all__:
        assert getattr(stabkit, name) is not None, name
        assert name in dir(stabkit)
    # the names are the objects of the modules that define them, not copies
    from stabkit import errors, methods, monitor, reference

    assert stabkit.spec is methods.spec and stabkit.Spec is methods.Spec
    assert stabkit.ground_truth is reference.ground_truth and stabkit.watch is monitor.watch
    assert stabkit.InputError is errors.InputError and issubclass(stabkit.MethodSpecError, ValueError)
    assert stabkit.spec("taylor:K=19") == methods.spec("taylor:K=19")
    with pytest.raises(AttributeError):
        stabkit.no_such_name  # noqa: B018


def test_star_import_does_not_shadow_torch():
    """``stabkit.torch`` keeps its documented name, but ``from stabkit import *`` must not rebind torch."""
    assert "torch" not in stabkit.__all__
    namespace: dict = {}
    exec("from stabkit import *", namespace)
    assert "torch" not in namespace and "compare" in namespace


def test_import_stabkit_imports_no_heavy_library():
    """The entry points load on first use: ``import stabkit`` (and so ``stabkit --help``) stays cheap."""
    loaded = _python(f"import sys, stabkit; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded == ""


def test_python_m_stabkit_is_the_command_line():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "stabkit", "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage: stabkit [OPTIONS] COMMAND" in done.stdout and "methods" in done.stdout
    done = subprocess.run([sys.executable, "-m", "stabkit", "--version"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == f"stabkit {stabkit.__version__}"
    done = subprocess.run([sys.executable, "-m", "stabkit", "methods", "--bogus"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "stabkit methods --help" in done.stderr


def test_stabkit_cli_is_the_cli_folder_of_this_checkout(tmp_path):
    """Run from a source checkout (a worktree, PYTHONPATH=<checkout>), ``stabkit.cli`` is that
    checkout's top-level ``cli/`` folder — whatever an editable install points at — and no
    top-level ``cli`` module is imported."""
    code = ("import sys, stabkit.cli.main as m; "
            "print(m.__file__); print('cli' in sys.modules, 'cli.main' in sys.modules)")
    lines = _python(code, cwd=tmp_path).splitlines()
    assert Path(lines[0]) == REPO / "cli" / "main.py"
    assert lines[1] == "False False"


def test_install_puts_only_stabkit_into_site_packages(tmp_path):
    """What ``pip install .`` copies (setuptools' build_py) and records (egg_info), from a copy of
    the sources: one top-level package, every module of stabkit/ and cli/ (as stabkit/cli/), the
    console script inside the package. Needs only setuptools (no wheel, no network)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    for name in ("stabkit", "cli"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    lib, meta = tmp_path / "lib", tmp_path / "meta"
    meta.mkdir()
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib), "egg_info", "--egg-base",
                           str(meta)], cwd=src, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in lib.iterdir()) == ["stabkit"]
    built = {p.relative_to(lib).as_posix() for p in lib.rglob("*.py")}
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "stabkit").rglob("*.py")}
    expected |= {"stabkit/" + p.relative_to(REPO).as_posix() for p in (REPO / "cli").rglob("*.py")}
    assert built == expected
    (info,) = meta.glob("*.egg-info")
    assert (info / "top_level.txt").read_text().split() == ["stabkit"]
    assert "stabkit = stabkit.cli.main:app" in (info / "entry_points.txt").read_text()
