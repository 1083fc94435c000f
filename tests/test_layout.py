"""The house plan (issue #14), checked on the source tree: method knowledge stays in
``stabkit/methods/``, files and study functions stay small, study kinds do not borrow each other's
private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stabkit import methods

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("stabkit", "cli") for p in (ROOT / d).rglob("*.py"))
OUTSIDE_METHODS = [p for p in SOURCES if "methods" not in p.relative_to(ROOT).parts]

#: registry names that are also ordinary words here: the library ``torch`` (module names) and the
#: spectrum family ``degenerate``; a method is still never special-cased by them (``Method.native``)
AMBIGUOUS = {"torch", "degenerate"}

#: files allowed past LONG_FILE lines, each one concept
ONE_CONCEPT = {}
LONG_FILE = 400
LONG_STUDY_FUNCTION = 60


def _docstring_nodes(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                yield body[0].value


def _named_methods(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n) for n in _docstring_nodes(tree)}
    names = set(methods.NAMES) - AMBIGUOUS
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
            if text in names or text.partition(":")[0] in names and ":" in text and "=" in text:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    return found


def test_no_file_outside_methods_names_a_method():
    found = [hit for p in OUTSIDE_METHODS for hit in _named_methods(p)]
    assert not found, "method names outside stabkit/methods/ (ask the registry instead):\n" + "\n".join(found)


def test_the_check_sees_a_method_name():
    """The AST check above is not vacuous: it flags a registry name and a spec, not a docstring."""
    sample = ROOT / "tests" / "_layout_sample.py"
    sample.write_text('"""taylor in a docstring is fine."""\nx = "taylor"\ny = "pi:steps=20"\nz = "torch"\n')
    try:
        assert [h.split(": ", 1)[1] for h in _named_methods(sample)] == ["'taylor'", "'pi:steps=20'"]
    finally:
        sample.unlink()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_are_small(path):
    rel = str(path.relative_to(ROOT))
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= LONG_FILE or rel in ONE_CONCEPT, f"{rel}: {lines} lines (> {LONG_FILE}); split it by concept"


def test_study_functions_are_short():
    long = []
    for path in (ROOT / "stabkit" / "studies").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > LONG_STUDY_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines in studies/:\n" + "\n".join(long)


def _kinds() -> list[str]:
    return sorted(p.name for p in (ROOT / "stabkit" / "studies").iterdir() if (p / "__init__.py").exists())


def test_study_kinds_do_not_borrow_private_names():
    kinds = _kinds()
    assert len(kinds) >= 7, kinds
    borrowed = []
    for kind in kinds:
        for path in (ROOT / "stabkit" / "studies" / kind).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    other = [k for k in kinds if k != kind and k in node.module.split(".")]
                    if other:
                        borrowed += [f"{path.relative_to(ROOT)}: {a.name} from {node.module}" for a in node.names
                                     if a.name.startswith("_")]
    assert not borrowed, "\n".join(borrowed)


def test_the_dtype_names_are_spelled_once():
    """float32/float64 as the names a command, a study grid or a config takes are
    ``stabkit.validation.DTYPE_NAMES``: a module that spells the pair itself drifts from it."""
    pair = '"float32", "float64"'
    found = [str(p.relative_to(ROOT)) for p in SOURCES if pair in p.read_text(encoding="utf-8")]
    assert not found, f"spell {pair} as stabkit.validation.DTYPE_NAMES in: {', '.join(found)}"
