"""Study kind ``zca_cifar10_survival``: time to a NaN loss of ZCA-whitened ResNet-18s at the paper's horizon.

Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, Table IV: the success rate
(out of 15 runs of 350 epochs, failure = a NaN loss) of a ResNet-18 with a ZCA layer of group size
d after conv1, per backward: SVD, PI, SVD-PI, SVD-Taylor, SVD-Clip. Here each run is one cell
(``stabkit.train.train_run`` with the ``paper`` preset: the authors' layers, StepLR by epoch, full
50 000-image epochs), trained to a horizon of ``epochs`` (100: the paper's whole lr = 0.1 phase),
and analysed as survival data: the time to the first NaN loss (epochs), right-censored at the
horizon reached.

Cells run in the study file's order (``cells`` = [method, d] pairs, most informative first) and,
within that order, in blocks of ``seed_block`` seeds: the first block of every cell before the
second block of any, so a time-boxed session does the first cells first and every cell gets some
runs before any gets many. ``extend_epochs`` (e.g. 350) with ``extend`` (the cell ids of survivors,
listed by the report) adds runs of those seeds to the longer horizon, past the lr drops.

Report (``report``): Kaplan–Meier curves of time to NaN loss per cell; runs without NaN loss with
Wilson and Clopper–Pearson intervals; Fisher's exact test of each cell against the paper's count
with Holm's correction across cells and the rates the test would detect with 80 % power; test
accuracy per epoch of the surviving runs; final test errors of extended runs; the landmark link
(``stabkit.studies._landmark``). Statistics: ``stabkit.studies._stats``; Table IV:
``stabkit.train.table_iv``.

This module: the grid and ``run_cell`` (the cell's spec parsed once, a Spec handed to ``train_run``);
the tables in ``tables``, the figures and the report in ``report``.
"""

from __future__ import annotations

import json

import numpy as np

from ... import methods
from ...train import table_iv
from ...train.preset import get_preset
from ...train.session import steps_per_epoch
from ...validation import DTYPE_NAMES, is_real
from .. import with_defaults
from ..zca_cifar10 import NUMBER_COLUMNS as ZCA_NUMBER_COLUMNS

KIND = "zca_cifar10_survival"
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = (*ZCA_NUMBER_COLUMNS, "order", "horizon_epochs")

#: the issue's order: SVD d = 8, 16 (paper 0/15); SVD-Taylor d = 16 (control); PI d = 4, 8 (15/15,
#: 1/15); SVD-PI d = 16, 64 (15/15); then the rest of Table IV. Rows by their Table IV names; the
#: cells name the registered method of each row.
FIRST_ROWS = [("SVD", 8), ("SVD", 16), ("SVD-Taylor", 16), ("PI", 4), ("PI", 8), ("SVD-PI", 16), ("SVD-PI", 64)]
FIRST_CELLS = [[table_iv.method(row).name, d] for row, d in FIRST_ROWS]
REST_CELLS = [[m, d] for m in table_iv.names() for d in (4, 8, 16, 32, 64) if [m, d] not in FIRST_CELLS]

GRID_DEFAULTS = {
    "cells": FIRST_CELLS + REST_CELLS,   # [method spec, d] in run order
    "dtypes": ["float32"],
    "seeds": 15,
    "seed_start": 1000,        # disjoint from the short studies' seeds 0…7
    "seed_block": 3,
    "epochs": 100.0,           # the horizon
    "extend_epochs": 0.0,      # > epochs: a second horizon for the runs listed in ``extend``
    "extend": [],              # base cell ids (survivors) to rerun to extend_epochs
    "preset": "paper",
    "limit_images": 0,         # 0: all 50 000
    "limit_test": 0,           # 0: all 10 000 (as many as limit_images where that is smaller)
    "batch_size": 128,
    "lr": 0.1,
    "eps": None,               # None: the preset's per-method ε
    "width": 1.0,
    "landmarks": [5.0, 10.0, 25.0],   # epochs
    "fast": False,             # train_run's fast path (bf16 trunk, ...): passed only when true
    "eval_every": 1,           # test evaluation every N epochs: passed only when not 1
    "compile": None,           # torch.compile mode of the fast path: passed only when set
    "train_options": {},       # more train_run options, passed as they are
    "data": "",
    "device": "auto",
}


def validate(grid: dict) -> dict:
    g = with_defaults(KIND, grid, GRID_DEFAULTS)
    specs = _check_cells(g)
    _check_numbers(g)
    preset = get_preset(g["preset"])
    if preset.rows:
        for spec in specs:
            preset.layer(spec)  # ValueError: no row for the method under this preset
    if g["device"] != "auto" and not (g["device"] == "cpu" or str(g["device"]).startswith("cuda")):
        raise ValueError(f"{KIND}: device must be auto, cpu or cuda[:N], got {g['device']!r}")
    base_ids = {_cell_id(spec, d, t, s, float(g["epochs"])) for spec, d in g["cells"] for t in g["dtypes"] for s in _seeds(g)}
    unknown = [c for c in g["extend"] if c not in base_ids]
    if unknown:
        raise ValueError(f"{KIND}: extend names {unknown[0]!r}, not a cell of this grid")
    return g


def _check_cells(g: dict) -> list:
    """``cells`` as [canonical spec text, d] pairs (the grid's edge: each spec parsed here); the Specs."""
    kind = KIND
    if not g["cells"]:
        raise ValueError(f"{kind}: cells must list at least one [method, d] pair")
    cells, specs = [], []
    for item in g["cells"]:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"{kind}: each entry of cells must be [method, d], got {item!r}")
        spec, d = methods.spec(str(item[0])), int(item[1])
        if d < 1 or 64 % d:
            raise ValueError(f"{kind}: d must divide 64 (conv1's channels), got {d} in {item!r}")
        cells.append([str(spec), d])
        specs.append(spec)
    if len({tuple(c) for c in cells}) != len(cells):
        raise ValueError(f"{kind}: cells lists a [method, d] pair twice")
    g["cells"] = cells
    channels = int(round(64 * float(g["width"])))
    for spec, d in cells:
        if channels % d:
            raise ValueError(f"{kind}: d = {d} ({spec}) must divide conv1's {channels} channels at width {g['width']}")
    return specs


def _check_numbers(g: dict) -> None:
    kind = KIND
    for t in g["dtypes"]:
        if t not in DTYPE_NAMES:
            raise ValueError(f"{kind}: dtypes must be float32/float64, got {t!r}")
    for key in ("seeds", "seed_block"):
        if int(g[key]) < 1:
            raise ValueError(f"{kind}: {key} must be ≥ 1, got {g[key]}")
    if int(g["seed_start"]) < 0:
        raise ValueError(f"{kind}: seed_start must be ≥ 0, got {g['seed_start']}")
    for key in ("epochs", "lr", "width", "batch_size"):
        if not float(g[key]) > 0:
            raise ValueError(f"{kind}: {key} must be > 0, got {g[key]}")
    if g["eps"] is not None and not (is_real(g["eps"]) and g["eps"] > 0):
        raise ValueError(f"{kind}: eps must be > 0, got {g['eps']}")
    if float(g["extend_epochs"]) and float(g["extend_epochs"]) <= float(g["epochs"]):
        raise ValueError(f"{kind}: extend_epochs ({g['extend_epochs']}) must exceed epochs ({g['epochs']}), or be 0")
    if g["extend"] and not float(g["extend_epochs"]):
        raise ValueError(f"{kind}: extend lists runs but extend_epochs is 0")
    if not all(float(x) > 0 for x in g["landmarks"]):
        raise ValueError(f"{kind}: landmarks must be positive epochs, got {g['landmarks']}")
    if not isinstance(g["fast"], bool):
        raise ValueError(f"{kind}: fast must be true or false, got {g['fast']!r}")
    if int(g["eval_every"]) < 0:
        raise ValueError(f"{kind}: eval_every must be ≥ 0 epochs, got {g['eval_every']}")
    if not isinstance(g["train_options"], dict):
        raise ValueError(f"{kind}: train_options must be a table of train_run options, got {g['train_options']!r}")
    # a run option the grid sets itself: train_options would override it silently, the grid and report still saying otherwise
    own = {"method": "cells", "params": "cells", "d": "cells", "dtype": "dtypes", "seed": "seeds", "norm": "(zca, always)",
           **{key: key for key in GRID_DEFAULTS}}
    clash = sorted(key for key in g["train_options"] if key in own)
    if clash:
        keys = ", ".join(dict.fromkeys(own[key] for key in clash))
        raise ValueError(f"{kind}: train_options sets {', '.join(clash)}, which the grid sets itself (grid key {keys}): "
                         "set it there, once")


def _seeds(g: dict) -> list[int]:
    return list(range(int(g["seed_start"]), int(g["seed_start"]) + int(g["seeds"])))


def _cell_id(spec: str, d: int, dtype: str, seed: int, epochs: float) -> str:
    return f"{spec}|d{d}|{dtype}|s{seed}|e{epochs:g}"


def cell_axes(grid: dict) -> list[dict]:
    """The number of cells as a sum of products (``stabkit.studies._grid.cell_count``): every run to the
    horizon, then the extension runs."""
    return [{"cells": len(grid["cells"]), "dtypes": len(grid["dtypes"]), "seeds": grid["seeds"]},
            {"extend": len(grid["extend"])}]


def cells(grid: dict) -> list[dict]:
    """Every run, in run order: seed blocks outermost, then the file's cells, dtypes, seeds; the
    extension runs (if any) after all of them."""
    g = validate(grid)
    common = {k: g[k] for k in ("preset", "limit_images", "limit_test", "batch_size", "lr", "eps", "width", "data",
                                "device")}
    # the fast-path keys only when they differ from train_run's defaults, so a loop without them runs the rest
    common["train_options"] = {**({"fast": True} if g["fast"] else {}),
                               **({"eval_every": int(g["eval_every"])} if int(g["eval_every"]) != 1 else {}),
                               **({"compile": g["compile"]} if g["compile"] is not None else {}),
                               **g["train_options"]}
    seeds, block = _seeds(g), int(g["seed_block"])
    out = []
    for b in range(0, len(seeds), block):
        for order, (spec, d) in enumerate(g["cells"]):
            for dtype in g["dtypes"]:
                for seed in seeds[b:b + block]:
                    out.append({"cell_id": _cell_id(spec, d, dtype, seed, float(g["epochs"])), "spec": spec, "d": d,
                                "dtype": dtype, "seed": seed, "epochs": float(g["epochs"]), "order": order, **common})
    by_id = {c["cell_id"]: c for c in out}
    for base in g["extend"]:
        c = by_id[base]
        out.append({**c, "cell_id": _cell_id(c["spec"], c["d"], c["dtype"], c["seed"], float(g["extend_epochs"])),
                    "epochs": float(g["extend_epochs"])})
    from ...train.config import check_configs

    check_configs(out, key=lambda c: (c["spec"], c["d"], c["dtype"], c["epochs"]), config=_config)
    return out


def check_inputs(cells: list[dict]) -> None:
    """The runner's check before any cell starts: the cells' CIFAR-10 loads."""
    from ...train.config import check_data

    check_data(cells)


def _config(cell: dict) -> dict:
    spec = methods.spec(cell["spec"])  # the cell's edge: parsed once, the run carries the Spec
    return {"preset": cell["preset"], "method": spec, "d": cell["d"], "dtype": cell["dtype"],
            "norm": "zca", "seed": cell["seed"], "epochs": cell["epochs"], "batch_size": cell["batch_size"],
            "lr": cell["lr"], "eps": cell["eps"], "width": cell["width"], "device": cell["device"],
            "limit_images": cell["limit_images"] or None, "limit_test": cell["limit_test"] or None,
            "data": cell["data"] or None, **cell.get("train_options", {})}


def _row(cell: dict, result: dict, stacked_runs: int) -> dict:
    result["backward"] = result.get("spec")
    result["spec"] = cell["spec"]
    result["order"] = cell["order"]
    result["horizon_epochs"] = cell["epochs"]
    result["stacked_runs"] = stacked_runs
    return flatten(survival_fields(result))


def run_cell(cell: dict) -> list[dict]:
    from ...train.loop import train_run

    return [_row(cell, train_run(_config(cell)), 1)]


def stack_key(cell: dict):
    """Cells that may train at once, stacked in one network (``stabkit run --stack R``): the same run
    but for its seed — every cell field except ``cell_id`` and ``seed``."""
    return json.dumps({k: v for k, v in cell.items() if k not in ("cell_id", "seed")}, sort_keys=True, default=str)


def run_cells(cells: list[dict]) -> list[list[dict]]:
    """Cells of one ``stack_key`` trained at once, stacked in one network
    (:func:`stabkit.train.stacked_loop.train_stacked`); each cell's rows as ``run_cell`` gives them,
    with ``stacked_runs`` the number of runs it was stacked with."""
    from ...train.stacked_loop import train_stacked

    results = train_stacked([_config(c) for c in cells])
    return [[_row(c, r, len(cells))] for c, r in zip(cells, results)]


def survival_fields(result: dict) -> dict:
    """The survival fields of the run-record schema, derived from ``nan_loss_step``/``steps_done`` when
    the record lacks them (records written before they existed)."""
    r = dict(result)
    if r.get("steps_per_epoch") is None:
        images = int(r.get("limit_images") or 50000)
        batch = int(r["batch_size"])
        r["steps_per_epoch"] = steps_per_epoch(images, batch, bool(r.get("drop_last")))
    spe = float(r["steps_per_epoch"])
    if r.get("epochs_done") is None:
        r["epochs_done"] = float(r["steps_done"]) / spe
    if "time_to_nan_loss_epochs" not in r:
        step = r.get("nan_loss_step")
        r["time_to_nan_loss_epochs"] = None if step is None else (int(step) + 1) / spe
    if "censored_at_epochs" not in r:
        r["censored_at_epochs"] = float(r["epochs_done"]) if r["time_to_nan_loss_epochs"] is None else None
    return r


def flatten(result: dict) -> dict:
    """Scalars as they are (None → NaN); ``epoch_log`` and any other list/dict as JSON text."""
    out = {}
    for k, v in result.items():
        if isinstance(v, (list, tuple, dict)):
            out[k] = json.dumps(v, default=_json_number)
        elif v is None:
            out[k] = np.nan
        else:
            out[k] = v
    return out


def _json_number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


# the tables and the report (after the grid: the report validates it)
from .report import report  # noqa: E402
from .tables import accuracy_table, km_table, success_table, summary, survivors  # noqa: E402

__all__ = ["GRID_DEFAULTS", "FIRST_CELLS", "REST_CELLS", "validate", "cell_axes", "cells", "run_cell", "stack_key", "run_cells",
           "survival_fields", "flatten",
           "report", "summary", "success_table", "km_table", "accuracy_table", "survivors"]
