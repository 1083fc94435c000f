"""A training run's options: ``DEFAULTS``, their validation (``resolve_config``), the device, the
lr schedule in steps, the TF32 flags and what a run record carries to be reproduced
(``run_settings``). The option keys and their meaning: ``stabkit.train.loop``'s module doc.

The backward arrives as ``config["method"]``: a :class:`stabkit.methods.Spec` (what the CLI and the
study kinds pass: parsed once at their edge) is used as it is; text or a Method (a Python call, with
``params``) is converted once, here, and the run carries the Spec from then on.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import methods
from ..data import check_loads, check_path
from ..methods import Spec
from ..validation import DTYPE_NAMES, is_count
from .preset import MILESTONE_UNITS, STOP_ON, get_preset
from .resnet import stage_channels

DEFAULTS = {
    "method": methods.DEFAULT, "params": {}, "norm": "zca", "d": 16, "dtype": "float32", "preset": "stabkit", "eps": None,
    "epochs": None, "max_steps": None, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "milestones": None, "milestone_unit": None, "gamma": None, "stop_on": None, "tf32": None, "input_std": None, "drop_last": None,
    "limit_images": None, "limit_test": None, "data": None,
    "device": "auto", "seed": 0, "width": 1.0, "diverge_loss": 50.0, "chance_step": None, "chance_acc": 0.15,
    "chance_error": 0.88, "early_frac": 0.2, "check_every": None, "eval_batch": 1000, "gap_threshold": 1e-5,
    "fast": False, "compile": None, "eval_every": 1,
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def method_spec(method, params: dict | None = None) -> Spec:
    """The run's backward as a Spec: a Spec without ``params`` passes unchanged; text, a Method or a
    Spec with ``params`` is converted (validated) once — the Python-call edge of ``train_run``."""
    if isinstance(method, Spec) and not params:
        return method
    spec = methods.spec(method)
    return spec.replace(**params) if params else spec


def resolve_config(config: dict) -> dict:
    """``config`` over ``DEFAULTS`` with the preset's values filled in, checked (ValueError naming
    the option and the allowed values); ``method`` becomes a Spec, ``zca`` the layer's ZCAConfig."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    preset = cfg["preset"] = get_preset(cfg["preset"])
    for key, value in (("epochs", preset.epochs), ("milestones", preset.milestones), ("gamma", preset.gamma),
                       ("milestone_unit", preset.milestone_unit), ("stop_on", preset.stop_on), ("tf32", preset.tf32),
                       ("input_std", preset.input_std), ("drop_last", preset.drop_last)):
        if cfg[key] is None:
            cfg[key] = value
    cfg["method"] = method_spec(cfg["method"], cfg["params"])
    cfg["params"] = cfg["method"].params
    _check_model(cfg)
    _check_rules(cfg)
    _check_schedule(cfg)
    if cfg["norm"] == "zca":
        cfg["zca"] = preset.layer(cfg["method"], cfg["eps"])  # ValueError for a method without a row / a bad ε
        cfg["eps"] = cfg["zca"].eps
    if cfg["limit_images"] is not None and int(cfg["limit_images"]) < int(cfg["batch_size"]):
        raise ValueError(f"limit_images={cfg['limit_images']} is smaller than one batch ({cfg['batch_size']})")
    _check_path(cfg)
    cfg["device"] = pick_device(cfg["device"])
    _check_cpu_layout(cfg)
    return cfg


def check_configs(cells: list[dict], key, config) -> None:
    """:func:`check_config` once for each distinct ``key(cell)`` of a study's cells, on ``config(cell)``
    (the cell as the training loop will see it), before any cell starts."""
    first = {}
    for cell in cells:
        first.setdefault(key(cell), cell)
    for cell in first.values():
        check_config(config(cell))


def check_data(cells: list[dict]) -> None:
    """Each distinct ``data`` path of a training study's cells loaded once (:func:`stabkit.data.check_loads`):
    what the study runner calls before any cell starts (not part of expanding the grid, which needs no data)."""
    for path in dict.fromkeys(cell.get("data") or "" for cell in cells):
        check_loads("data", path)


def check_config(config: dict) -> None:
    """What ``resolve_config`` refuses, and a missing data path, before a study's cells start (a
    training study otherwise meets a bad number in its first cell, exit 1). The device and the fast
    path's layout are left to the run, on the machine that has them."""
    resolve_config({**config, "device": "cpu", "fast": False})
    check_path("data", config.get("data"))


# torch 2.13's CPU (oneDNN) backward of a channels_last 1×1 stride-2 convolution with fewer than 8
# input channels corrupts the heap (reproduced on an AVX2 AMD EPYC: "double free or corruption", a
# segfault or a hang): the fast path's channels_last needs ≥ 8 channels in the first stage on a CPU
_CPU_CHANNELS_LAST_MIN = 8


def _check_cpu_layout(cfg: dict) -> None:
    stem = stage_channels(float(cfg["width"]))[0]
    if cfg["fast"] and cfg["device"].startswith("cpu") and stem < _CPU_CHANNELS_LAST_MIN:
        raise ValueError(f"fast=True on a CPU needs ≥ {_CPU_CHANNELS_LAST_MIN} stem channels (width ≥ ≈"
                         f"{_CPU_CHANNELS_LAST_MIN / 64}; this width gives {stem}): torch's CPU channels_last 1×1 stride-2 convolution "
                         "corrupts memory below that; use fast=False or a wider network")


def _check_model(cfg: dict) -> None:
    if cfg["norm"] not in ("zca", "bn"):
        raise ValueError(f"unknown norm {cfg['norm']!r}: choose 'zca' or 'bn'")
    if cfg["dtype"] not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {cfg['dtype']!r}: choose float32 or float64")
    for key in ("epochs", "batch_size", "lr", "width", "gamma"):
        if not _number(cfg, key) > 0 or not math.isfinite(_number(cfg, key)):
            raise ValueError(f"{key} must be a finite number > 0, got {cfg[key]}")
    for key in ("momentum", "weight_decay"):
        if not _number(cfg, key) >= 0 or not math.isfinite(_number(cfg, key)):
            raise ValueError(f"{key} must be a finite number ≥ 0, got {cfg[key]}")
    if cfg["eps"] is not None and not math.isfinite(_number(cfg, "eps")):
        raise ValueError(f"eps must be finite, got {cfg['eps']}")
    _check_count(cfg, "batch_size", 1)
    _check_count(cfg, "seed", 0)
    for key in ("max_steps", "limit_test"):  # 0 as None: no cap, all test images
        _check_count(cfg, key, 0, " (0: none)", optional=True)
    _check_count(cfg, "limit_images", 1, " (or none)", optional=True)


def _check_rules(cfg: dict) -> None:
    """The failure rules' numbers and the test pass's batch size: a NaN switched a rule off unseen (it
    compares false), a negative ``eval_batch`` tested no image (test error 0) and 0 raised only at the
    first test pass, after an epoch of training."""
    _check_count(cfg, "eval_batch", 1)
    for key in ("chance_acc", "chance_error"):
        if not 0 <= _number(cfg, key) <= 1:
            raise ValueError(f"{key} must be a fraction in [0, 1], got {cfg[key]!r}")
    if not 0 < _number(cfg, "early_frac") <= 1:
        raise ValueError(f"early_frac must be a fraction in (0, 1] of the steps, got {cfg['early_frac']!r}")
    if not _number(cfg, "diverge_loss") > 0:
        raise ValueError(f"diverge_loss must be a number > 0 (inf: never), got {cfg['diverge_loss']!r}")
    if not _number(cfg, "gap_threshold") >= 0:
        raise ValueError(f"gap_threshold must be a number ≥ 0, got {cfg['gap_threshold']!r}")


def _number(cfg: dict, key: str) -> float:
    try:
        return float(cfg[key])
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {cfg[key]!r}") from None


def _check_count(cfg: dict, key: str, minimum: int, note: str = "", optional: bool = False) -> None:
    """An integer option in [minimum, 2^63 − 1] (``optional``: or None)."""
    value = cfg[key]
    if not (optional and value is None) and not is_count(value, minimum):
        raise ValueError(f"{key} must be an integer in [{minimum}, 2^63 − 1]{note}, got {value!r}")


def _check_schedule(cfg: dict) -> None:
    if cfg["milestone_unit"] not in MILESTONE_UNITS:
        raise ValueError(f"unknown milestone unit {cfg['milestone_unit']!r}: choose {', '.join(MILESTONE_UNITS)}")
    try:
        cfg["milestones"] = tuple(float(m) for m in cfg["milestones"])
    except (TypeError, ValueError):
        raise ValueError(f"milestones must be a list of numbers, got {cfg['milestones']!r}") from None
    if not all(math.isfinite(m) for m in cfg["milestones"]):  # inf/nan would overflow as a step or epoch
        raise ValueError(f"milestones must be finite numbers, got {cfg['milestones']}")
    if any(m < 0 for m in cfg["milestones"]) or (cfg["milestone_unit"] == "fraction" and any(m > 1 for m in cfg["milestones"])):
        raise ValueError(f"milestones {cfg['milestones']} out of range for unit {cfg['milestone_unit']!r}")
    if cfg["stop_on"] not in STOP_ON:
        raise ValueError(f"unknown stop_on {cfg['stop_on']!r}: choose {', '.join(STOP_ON)}")
    if cfg["tf32"] is not None and not isinstance(cfg["tf32"], bool):  # set_tf32 would take bool("false") as on
        raise ValueError(f"tf32 must be true or false (or none: torch's setting), got {cfg['tf32']!r}")
    if len(tuple(cfg["input_std"])) != 3 or not all(float(v) > 0 for v in cfg["input_std"]):
        raise ValueError(f"input_std must be three positive numbers, got {cfg['input_std']!r}")
    cfg["input_std"] = tuple(float(v) for v in cfg["input_std"])


def _check_path(cfg: dict) -> None:
    """The fast path's options: check/eval intervals and the compile mode."""
    cfg["fast"] = bool(cfg["fast"])
    cfg["check_every"] = (100 if cfg["fast"] else 10) if cfg["check_every"] is None else cfg["check_every"]
    _check_count(cfg, "check_every", 1)
    _check_count(cfg, "eval_every", 0, " (0: test only at the end)")
    mode = cfg["compile"]
    compile_mode = {True: "default", False: None, "": None, "none": None}.get(mode, mode) if isinstance(mode, (bool, str)) else mode
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {cfg['compile']!r}: choose none, {', '.join(COMPILE_MODES)}")
    cfg["compile"] = compile_mode


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}: choose auto, cpu or cuda[:N]")
    return device


def milestone_steps(milestones, unit: str, total: int, per_epoch: int) -> list[int]:
    """The steps at which the lr is multiplied by gamma: milestones as fractions of ``total``, epochs
    (``per_epoch`` steps each, as StepLR stepped once per epoch) or steps."""
    scale = {"fraction": total, "epoch": per_epoch, "step": 1}[unit]
    return sorted(int(round(float(m) * scale)) for m in milestones)


def tf32_flags() -> dict:
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


def set_tf32(value):
    """Set both TF32 flags (None: leave them); returns the previous flags for restoring."""
    before = tf32_flags()
    if isinstance(value, dict):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = value["tf32_matmul"], value["tf32_cudnn"]
    elif value is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(value)
    return before


@functools.lru_cache(maxsize=1)
def _commit() -> str:
    from ..studies.provenance import REPO, git_commit  # the runner's rule (STABKIT_GIT_COMMIT in a copy without .git)

    return git_commit(REPO / "reports")  # a study writing its cells there does not make the checkout "dirty"


def run_settings(cfg: dict, milestone_steps_: list[int], model, tf32_used: dict) -> dict:
    """What a run record must carry to be reproduced: preset, ε, schedule, subset, width, std, TF32, commit."""
    zca = cfg.get("zca")
    return {
        "preset": cfg["preset"].name, "eps": cfg["eps"], "lr": float(cfg["lr"]), "gamma": float(cfg["gamma"]),
        "milestones": ",".join(f"{m:g}" for m in cfg["milestones"]), "milestone_unit": cfg["milestone_unit"],
        "milestone_steps": ",".join(str(m) for m in milestone_steps_), "epochs": float(cfg["epochs"]),
        "max_steps": cfg["max_steps"], "width": float(cfg["width"]), "limit_images": cfg["limit_images"],
        "limit_test": cfg["limit_test"], "batch_size": int(cfg["batch_size"]),
        "input_std": ",".join(f"{v:g}" for v in cfg["input_std"]), "stop_on": cfg["stop_on"],
        "drop_last": bool(cfg["drop_last"]), "fast": bool(cfg["fast"]), "compile": cfg["compile"] or "",
        "check_every": int(cfg["check_every"]), "eval_every": int(cfg["eval_every"]),
        "zca_solver": zca.solver if zca else None, "zca_truncation": zca.truncation if zca else None,
        "zca_covariance": zca.covariance if zca else None, "zca_lam_floor": zca.lam_floor if zca else None,
        **tf32_used, "commit": _commit(),
    }
