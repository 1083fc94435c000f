"""Study kind ``zca_cifar10``: does ZCA-whitened ResNet-18 training on CIFAR-10 survive each backward?

Wang, Dang, Hu, Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, Table IV: success rate of
training (15 runs per cell, 350 epochs) with a ZCA layer of group size d after conv1. One cell here
is one training run (``stabkit.train.train_run``): method × d × dtype × seed, plus a plain
BatchNorm baseline per seed. The default protocol is *short* (a fixed step budget on a subset,
see ``studies/zca-cifar10.toml`` for the time arithmetic), so our failure rates measure failures
early in training: a lower bound on the 350-epoch rates, comparable to Table IV where the paper's
failures happen early (SVD at d ≥ 8, PI at d ≥ 8).

``preset`` (grid key; ``stabkit.train.preset``) chooses the ZCA layer and protocol: ``stabkit``
(the committed studies) or ``paper`` (the authors' public layers per method, with per-method ε;
``studies/zca-cifar10-paper.toml``). Failure outcomes: the paper's criterion is a NaN loss; every
run records it (``paper_outcome``, ``nan_loss_step``) beside this toolkit's outcome (non-finite
loss or gradient, eigensolver error, "diverged"), and the report gives both, in separate columns:
under the ``paper`` preset the rate compared with Table IV is the NaN-loss one.

The report gives success rates with Wilson 95 % intervals per method × d × dtype beside Table IV,
the test error of successful runs, the monitor's early diagnostics per cell, and "the link": a
logistic model predicting failure from the first ``early_frac`` of each run's diagnostics
(log max|K̃|, log(1 + gap events), log of the method's gradient bound max|F|), with a calibration
plot, in-sample and 5-fold cross-validated Brier scores, and the base-rate Brier score beside them.

This module: the grid (defaults, ``validate``, ``cells``) and ``run_cell``; the report in
``report`` (tables and the link in ``tables``). Method specs are parsed at the grid's edge (``validate``
keeps their canonical text, which cells and results carry) and once per cell (``run_cell``), which
hands ``train_run`` a :class:`stabkit.methods.Spec`. Table IV: ``stabkit.train.table_iv``.
"""

from __future__ import annotations

import numpy as np

from ... import methods
from ...train import table_iv
from ...train.preset import get_preset
from ...validation import DTYPE_NAMES, is_real
from .. import with_defaults
from .._grid import check_study_name

GRID_DEFAULTS = {
    "methods": table_iv.names(),  # registry specs, e.g. "taylor:K=9"; default: the Table IV rows' methods
    "dims": [4, 8, 16, 32, 64],
    "dtypes": list(DTYPE_NAMES),
    "seeds": 8,
    "bn_baseline": True,
    "epochs": 1.0,
    "max_steps": 150,
    "limit_images": 19200,
    "limit_test": 2000,
    "batch_size": 128,
    "lr": 0.1,
    "eps": None,        # None: the preset's ε (stabkit 1e-4; paper per method)
    "preset": "stabkit",
    "milestones": None,      # None: the preset's schedule
    "milestone_unit": None,
    "stop_on": None,
    "tf32": None,
    "width": 1.0,
    "early_frac": 0.2,
    "data": "",
    "device": "auto",
    "baseline_study": "",  # a sibling report (e.g. "zca-cifar10") whose cells this study reruns with another schedule
}


def validate(grid: dict) -> dict:
    g = with_defaults("zca_cifar10", grid, GRID_DEFAULTS)
    if not g["methods"]:
        raise ValueError("zca_cifar10: methods must list at least one method spec")
    specs = [methods.spec(str(m)) for m in g["methods"]]  # the grid's edge: canonical text from here on
    g["methods"] = [str(spec) for spec in specs]
    for d in g["dims"]:
        if int(d) < 1 or 64 % int(d):
            raise ValueError(f"zca_cifar10: dims must divide 64 (conv1's channels), got {d}")
    g["dims"] = [int(d) for d in g["dims"]]
    for t in g["dtypes"]:
        if t not in DTYPE_NAMES:
            raise ValueError(f"zca_cifar10: dtypes must be float32/float64, got {t!r}")
    if int(g["seeds"]) < 1:
        raise ValueError(f"zca_cifar10: seeds must be ≥ 1, got {g['seeds']}")
    for key in ("epochs", "lr", "eps", "width", "early_frac"):
        if g[key] is not None and not (is_real(g[key]) and g[key] > 0):
            raise ValueError(f"zca_cifar10: {key} must be > 0, got {g[key]}")
    if g["early_frac"] > 1:  # a share of each run's steps
        raise ValueError(f"zca_cifar10: early_frac must be in (0, 1], got {g['early_frac']}")
    preset = get_preset(g["preset"])  # ValueError naming the presets
    if preset.rows:
        for spec in specs:
            preset.layer(spec)  # ValueError: no row / parameters fixed by the preset
    if g["milestones"] is not None:
        if not isinstance(g["milestones"], list) or not all(map(is_real, g["milestones"])):
            raise ValueError(f"zca_cifar10: milestones must be a list of numbers, got {g['milestones']!r}")
        g["milestones"] = [float(m) for m in g["milestones"]]
    if not isinstance(g["baseline_study"], str):
        raise ValueError(f"zca_cifar10: baseline_study must be a report name (a string), got {g['baseline_study']!r}")
    if g["baseline_study"]:
        try:
            check_study_name(g["baseline_study"])
        except ValueError:  # "../x" read a table outside the reports' root
            raise ValueError(f"zca_cifar10: baseline_study must be a report name (a study's folder under the reports' "
                             f"root, as in study.name), got {g['baseline_study']!r}") from None
    if g["device"] != "auto" and not (g["device"] == "cpu" or str(g["device"]).startswith("cuda")):
        raise ValueError(f"zca_cifar10: device must be auto, cpu or cuda[:N], got {g['device']!r}")
    return g


OPTIONAL_KEYS = ("preset", "milestones", "milestone_unit", "stop_on", "tf32")
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = (
    "step", "test_error", "wall_s", "train_s", "steps_total", "steps_done", "final_loss", "d", "seed", "nan_loss_step",
    "steps_per_epoch", "epochs_done", "time_to_nan_loss_epochs", "censored_at_epochs", "deadline_stop", "eps", "lr",
    "gamma", "epochs", "max_steps", "width", "limit_images", "limit_test", "batch_size", "drop_last", "fast",
    "check_every", "eval_every", "zca_lam_floor", "tf32_matmul", "tf32_cudnn",
    *(f"{part}_{stat}" for part in ("early", "run") for stat in ("calls", "min_gap", "min_rel_gap", "max_K", "lam_min",
                                                              "max_bound", "max_grad_norm", "gap_events",
                                                              "nonfinite_events")),
)


def cell_axes(grid: dict) -> list[dict]:
    """The number of cells as a sum of products (``stabkit.studies._grid.cell_count``): the ZCA runs,
    then the BatchNorm baseline's seeds."""
    return [{"methods": len(grid["methods"]), "dims": len(grid["dims"]), "dtypes": len(grid["dtypes"]),
             "seeds": grid["seeds"]}, {"bn_baseline": bool(grid["bn_baseline"]), "seeds": grid["seeds"]}]


def cells(grid: dict) -> list[dict]:
    g = validate(grid)
    common = {k: g[k] for k in ("epochs", "max_steps", "limit_images", "limit_test", "batch_size", "lr", "eps", "width",
                                "early_frac", "data", "device")}
    # keys beyond the original grid only when set, so the committed studies' cells stay as they were
    common.update({k: g[k] for k in OPTIONAL_KEYS if g[k] is not None and not (k == "preset" and g[k] == "stabkit")})
    out = []
    for spec in g["methods"]:
        for d in g["dims"]:
            for dtype in g["dtypes"]:
                for seed in range(int(g["seeds"])):
                    out.append({"cell_id": f"{spec}|d{d}|{dtype}|s{seed}", "norm": "zca", "spec": spec, "d": d,
                                "dtype": dtype, "seed": seed, **common})
    if g["bn_baseline"]:
        for seed in range(int(g["seeds"])):
            out.append({"cell_id": f"bn|s{seed}", "norm": "bn", "spec": "bn", "d": 0, "dtype": "float32", "seed": seed, **common})
    from ...train.config import check_configs

    check_configs(out, key=lambda c: (c["spec"], c["d"], c["dtype"]), config=_config)
    return out


def check_inputs(cells: list[dict]) -> None:
    """The runner's check before any cell starts: the cells' CIFAR-10 loads."""
    from ...train.config import check_data

    check_data(cells)


def _config(cell: dict) -> dict:
    config = {k: cell[k] for k in ("epochs", "max_steps", "limit_images", "limit_test", "batch_size", "lr", "eps", "width",
                                   "early_frac", "device", "seed", "dtype", "norm")}
    config.update({k: cell[k] for k in OPTIONAL_KEYS if k in cell})
    if "milestones" in config:
        config["milestones"] = tuple(config["milestones"])
    config["data"] = cell["data"] or None
    if cell["norm"] == "zca":
        config.update(method=methods.spec(cell["spec"]), d=cell["d"])  # the cell's edge: parsed once
    return config


def run_cell(cell: dict) -> list[dict]:
    from ...train.loop import epoch_log_json, train_run

    result = train_run(_config(cell))
    result["epoch_log"] = epoch_log_json(result["epoch_log"])  # results hold scalar columns: JSON text
    result["backward"] = result["spec"]  # the backward the layer ran (under the paper preset: the row's spec)
    result["spec"] = cell["spec"]
    return [{k: (np.nan if v is None else v) for k, v in result.items()}]


# the report and its tables (after the grid: they validate it)
from .report import report  # noqa: E402
from .tables import FEATURES, compare_schedules, landmark_table, link, success_table, summary  # noqa: E402

__all__ = ["GRID_DEFAULTS", "OPTIONAL_KEYS", "validate", "cell_axes", "cells", "run_cell", "report", "summary", "success_table",
           "link", "landmark_table", "compare_schedules", "FEATURES"]
