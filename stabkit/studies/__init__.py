"""Studies: sweeps described by a TOML file, run cell by cell, reported as Markdown + figures.

A study file names its ``kind`` (a module of this package) and that kind's grid::

    [study]
    name = "gradient-accuracy"        # results go to reports/<name>/
    kind = "gradient_accuracy"        # module stabkit.studies.<kind>
    [grid]                            # keys the kind defines; unknown keys are errors
    ...

Every kind module provides

* ``GRID_DEFAULTS: dict`` — the allowed grid keys with their defaults;
* ``validate(grid: dict) -> dict`` — raise ValueError (a :class:`~stabkit.errors.StudyFileError`
  by :func:`check_choices` / :func:`with_defaults`) naming the key and the allowed values;
* ``cells(grid: dict) -> list[dict]`` — JSON-able cell parameters, each with a unique,
  deterministic ``"cell_id"`` string (the unit of resumption and of parallel work);
* ``run_cell(cell: dict) -> list[dict]`` — the result rows of one cell (flat, scalar values);
  pure and deterministic given the cell (seeded), safe to run in another process;
* ``report(results: pandas.DataFrame, grid: dict, out_dir: pathlib.Path) -> str`` — Markdown
  body (figures saved into ``out_dir``, referenced by relative path);
* ``NUMBER_COLUMNS: tuple`` — the result columns that hold numbers (or true/false, or nothing): a
  report refuses a table with text in one before the kind's report meets it (``publish.read_results``);
* ``cell_axes(grid: dict) -> list[dict]`` — how many cells ``cells(grid)`` builds, exactly, as a
  sum of products: one ``{grid key: its size}`` table per term (``{}``: one cell), read from the
  grid's lists and counts without building a cell; the grid it gets has the defaults filled in and
  each value's type checked, nothing more. A grid of more than ``_grid.MAX_CELLS`` cells is refused
  before ``validate`` (``_grid.cell_count``).

Optionally, ``check_cost(grid: dict, force: bool)`` refuses, before ``validate`` builds anything, a
grid too big for memory or (unless ``force``) too long to compute; ``check_inputs(cells)`` refuses,
before the study's folder is made, inputs the cells would all fail on (a training study's data that
does not load).

The machinery around the kinds: ``_grid`` (study file, ``--set`` overrides, cells), ``runner``
(runs the cells resumably, inline, on a process pool or on Dask — ``_workers`` — and stores them —
``_store``), ``provenance`` (command, commit, machine: run.json and the report header) and
``publish`` (a study's README.md and the reports index).
"""

import importlib

from ..errors import StudyFileError
from ._checks import like_defaults

KINDS = ("gradient_accuracy", "gap_probability", "angle_surfaces", "projector_rank", "zca_cifar10", "o2p_stability",
         "zca_cifar10_survival")


def kind_module(kind: str):
    """The module implementing study kind ``kind`` (StudyFileError naming the allowed kinds)."""
    if kind not in KINDS:
        raise StudyFileError(f"unknown study kind {kind!r}: choose one of {', '.join(KINDS)}")
    return importlib.import_module(f"{__name__}.{kind}")


def check_choices(kind: str, key: str, values, allowed) -> None:
    """StudyFileError unless ``values`` is a non-empty list drawn from ``allowed`` (naming both)."""
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise StudyFileError(f"{kind}: {key} {bad or list(values)!r} not allowed: choose from {', '.join(allowed)}")


def with_defaults(kind: str, grid: dict, defaults: dict) -> dict:
    """``grid`` over ``defaults``; an unknown key is a StudyFileError naming it and the allowed keys, a
    value unlike its default a ValueError (:func:`._checks.like_defaults`: the API's ``validate``
    checks types as the CLI's does, so a kind's own checks never meet a list where a seed belongs)."""
    unknown = sorted(set(grid) - set(defaults))
    if unknown:
        raise StudyFileError(f"{kind}: unknown grid key {unknown[0]!r} (allowed: {', '.join(defaults)})")
    return {**defaults, **like_defaults(grid, defaults)}
