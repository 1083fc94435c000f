"""A study file's grid: read and checked (:func:`load_study`), changed by ``--set`` overrides
(:func:`parse_override`), expanded into cells (:func:`expand`).

A grid may expand into at most :data:`MAX_CELLS` cells (one million). The count is each kind's
``cell_axes(grid)`` multiplied out (:func:`cell_count`), read from the grid's lists without building
a cell, and a larger grid is refused before the kind validates or expands anything: expanding costs
about 1 KB of memory and a few microseconds per cell before the first cell runs or any progress
shows (19 million cells: about 19 GB, in silence), and every cell becomes a file of the study. The
largest committed study (``studies/gradient-accuracy.toml``) has 672 cells, so the cap is about
1 500 times what any study here needs; a grid past it is almost always a list typed too long (a
``seeds`` range, one axis too many), and a real sweep that large belongs in several study files.

Every mistake a user can make in a study file or an override is a
:class:`stabkit.errors.StudyFileError` (a ValueError) naming the key and what is allowed, raised
before any work; a missing file is a FileNotFoundError.
"""

from __future__ import annotations

import math
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli (a dependency only there)
    import tomli as tomllib

from .._assign import split_assignment
from ..errors import MethodSpecError, StudyFileError
from . import kind_module
from ._checks import like_defaults

STUDY_KEYS = ("name", "kind", "description")
TOP_KEYS = ("study", "grid")
#: The most cells a study's grid may expand into (see the module's docstring for why one million).
MAX_CELLS = 1_000_000


def load_study(path_or_config, overrides: dict | None = None, force: bool = True) -> tuple[dict, object, dict]:
    """(study table, kind module, validated grid) — every check happens here, before any work.

    A grid of more than :data:`MAX_CELLS` cells is refused first, counted without building one
    (:func:`check_cell_count`; ``force`` does not lift it). Then a kind's optional
    ``check_cost(grid, force)`` hook runs, before validation builds anything: it refuses a grid too big
    for memory, and (``force=False``) one estimated to take too long.
    """
    config = path_or_config if isinstance(path_or_config, dict) else read_study_file(path_or_config)
    study = check_study_table(config)
    kind = kind_module(study["kind"])
    grid = config.get("grid", {})
    if not isinstance(grid, dict):
        raise StudyFileError("[grid] must be a table")
    grid = validate(kind, apply_overrides(kind, grid, overrides), force)
    return dict(study), kind, grid


def read_study_file(path) -> dict:
    """The TOML document at ``path`` (FileNotFoundError, or StudyFileError when it is not TOML)."""
    path = Path(path)
    if path.is_dir():
        raise StudyFileError(f"study file {path} is a directory, not a TOML file")
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise StudyFileError(f"study file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyFileError(f"{path}: not valid TOML: {exc}") from None


def check_study_table(config: dict) -> dict:
    """The ``[study]`` table, once its keys, ``name`` and ``kind`` are checked."""
    unknown = sorted(set(config) - set(TOP_KEYS))
    if unknown:
        raise StudyFileError(f"unknown study table [{unknown[0]}] (allowed: {', '.join(TOP_KEYS)})")
    study = config.get("study")
    if not isinstance(study, dict):
        raise StudyFileError("the study file needs a [study] table with 'name' and 'kind'")
    bad = sorted(set(study) - set(STUDY_KEYS))
    if bad:
        raise StudyFileError(f"unknown key study.{bad[0]} (allowed: {', '.join(STUDY_KEYS)})")
    for key in ("name", "kind"):
        if not isinstance(study.get(key), str) or not study[key].strip():
            raise StudyFileError(f"study.{key} is required and must be text")
    if not isinstance(study.get("description", ""), str):  # the report's header prints it as text
        raise StudyFileError(f"study.description must be text, got {study['description']!r}")
    check_study_name(study["name"])
    return study


def check_study_name(name: str) -> str:
    """``name`` if it is a plain directory name (the study's folder under the reports' root; "" would
    be the root itself)."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip()
            or not name.isprintable() or len(name.encode("utf-8")) > 255):
        raise StudyFileError(f"study.name {name!r} must be a plain directory name (printable, at most 255 bytes)")
    return name


def apply_overrides(kind, grid: dict, overrides: dict | None) -> dict:
    """A copy of ``grid`` with the ``--set`` overrides in place; each key must be one of the kind's."""
    grid = dict(grid)
    for key, value in (overrides or {}).items():
        if key not in kind.GRID_DEFAULTS:
            raise StudyFileError(f"--set: unknown grid key {key!r} (allowed: {', '.join(kind.GRID_DEFAULTS)})")
        grid[key] = value
    return grid


def validate(kind, grid: dict, force: bool = True) -> dict:
    """Each value's type against the kind's ``GRID_DEFAULTS`` (:func:`._checks.like_defaults`), then the
    number of cells (:func:`check_cell_count`), then the kind's ``check_cost(grid, force)`` (when it has
    one), then its ``validate(grid)``; a ValueError they raise is the study file's mistake, so it
    becomes a StudyFileError with the same message (a MethodSpecError keeps its own type)."""
    try:
        grid = like_defaults(grid, getattr(kind, "GRID_DEFAULTS", {}))
        check_cell_count(kind, grid)
        if hasattr(kind, "check_cost"):
            kind.check_cost(grid, force)
        return kind.validate(grid)
    except (StudyFileError, MethodSpecError):
        raise
    except ValueError as exc:
        raise StudyFileError(*exc.args) from exc


def cell_count(kind, grid: dict) -> tuple[int, str] | None:
    """(number of cells, the sum of products it is) of ``grid`` over the kind's defaults, from the kind's
    ``cell_axes(grid)``: a list of terms, each ``{axis: size}`` whose sizes multiply to that term's
    cells (``{}`` is one cell), e.g. ``[{"families": 16, "d": 7, "dtypes": 2, "losses": 3, "seeds": 1}]``;
    the count is exact (the cells ``cells(grid)`` would build). None where the kind has no
    ``cell_axes`` or the grid holds a value it cannot read (the kind's ``validate`` names that value)."""
    axes = getattr(kind, "cell_axes", None)
    if axes is None:
        return None
    try:
        terms = [{key: max(0, int(size)) for key, size in term.items()}
                 for term in axes({**getattr(kind, "GRID_DEFAULTS", {}), **grid})]
    except (TypeError, ValueError, ArithmeticError, KeyError):
        return None
    count = sum(math.prod(term.values()) for term in terms)
    shown = [t for t in terms if math.prod(t.values())] or terms
    formula = " + ".join(" × ".join(f"{key} ({size})" for key, size in t.items()) or "1" for t in shown)
    return count, formula


def check_cell_count(kind, grid: dict) -> None:
    """StudyFileError when ``grid`` expands into more than :data:`MAX_CELLS` cells (:func:`cell_count`),
    naming the exact count and the grid keys whose sizes multiply to it; nothing is built."""
    counted = cell_count(kind, grid)
    if counted and counted[0] > MAX_CELLS:
        count, formula = counted
        raise StudyFileError(f"the grid expands into exactly {count:,} cells = {formula}, more than the "
                             f"{MAX_CELLS:,} a study may have (stabkit.studies._grid.MAX_CELLS): give those keys "
                             "fewer values, or split the sweep into several study files")


def parse_overrides(items: list[str] | None) -> dict:
    """Every ``--set`` item parsed (:func:`parse_override`); a key given twice is a StudyFileError."""
    overrides: dict = {}
    for item in items or []:
        key, value = parse_override(item)
        if key in overrides:
            raise StudyFileError(f"--set: {key!r} given twice")
        overrides[key] = value
    return overrides


def parse_override(item: str) -> tuple[str, object]:
    """``"d=[4,8]"`` → ("d", [4, 8]): the value is a TOML literal, or else plain text."""
    key, value = split_assignment(item, "--set", StudyFileError)
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def expand(study: dict, kind, grid: dict) -> list[dict]:
    """The kind's cells of ``grid``, in its order; their ids must be unique (the unit of resumption)."""
    cells = kind.cells(grid)
    ids = [c["cell_id"] for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"study kind {study['kind']!r} produced duplicate cell ids")
    return cells
