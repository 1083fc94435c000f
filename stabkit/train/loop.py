"""One training run of the ZCA (or BatchNorm) ResNet-18 on CIFAR-10, with a classified outcome.

Protocol (``DEFAULTS``): SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128 (the last partial
batch of an epoch dropped under ``stabkit``, kept under ``paper``: 391 steps per 50 000-image epoch), step decay ×``gamma`` at ``milestones``. ``preset`` (``stabkit``,
default, or ``paper``: ``stabkit.train.preset``) supplies every option left at None: the ZCA
layer's conventions and ε per method, the conv init, the input std, the schedule (``stabkit``: ×0.1
at 50 % and 75 % of the steps, ``milestone_unit="fraction"``; ``paper``: StepLR ×0.1 at epochs
100, 200, 300 of 350), when a run stops (``stop_on``) and TF32. Milestones are fractions of the
total steps, epochs or steps (``milestone_unit``). Data: CIFAR-10 decoded once (``stabkit.data``),
put on the device as uint8 once per process and shared by every run (``device_data``, cached);
random crop with 4-pixel zero padding + horizontal flip are tensor ops on the device; then
per-channel normalisation. ``epochs`` sets the length, ``max_steps`` caps it (the "short"
protocol of the study: a fixed number of steps on a ``limit_images`` subset).

``train_run(config) -> dict`` never raises for a training failure; ``outcome`` is one of

* ``ok`` — finished; ``test_error`` is set;
* ``eigh-failed`` — the forward eigensolver raised (``torch.linalg.LinAlgError`` or a runtime
  error from an eigen routine);
* ``nonfinite-loss`` / ``nonfinite-grad`` — the loss / the global gradient norm became inf/NaN;
* ``diverged`` — the loss exceeded ``diverge_loss`` (default 50, vs ln 10 ≈ 2.3 at chance), or
  at step ``chance_step`` (default max(100, total/4), only if the run is longer) the training
  accuracy of the last (up to) 50 steps was ≤ ``chance_acc`` (0.15), or a finished run of ≥ 100 steps
  had a test error ≥ ``chance_error`` (0.88; chance is 0.9);

with ``step`` the (0-based) step of the event. ``stop_on="any"`` (stabkit) stops at that event;
``stop_on="nan-loss"`` (paper) keeps training through non-finite gradients and "diverged" events
(as the authors' script, which stopped only at ``isnan(loss)``) and stops at a NaN loss. Either way
the paper's criterion is recorded beside the outcome, never merged into it: ``nan_loss_step``
(first step with a NaN loss, or None; ``nan_loss_note`` says when it is inferred: the
eigensolver raised on a covariance made NaN by non-finite weights, where the authors' SVD returned
NaN and their loss was NaN) and ``paper_outcome`` — ``nan-loss``, ``ok`` (no NaN loss
over the whole horizon), ``eigh-failed``, or ``censored`` (stopped by another outcome before the
horizon without a NaN loss). Every record also stores the preset, ε, lr, milestones (as given and
as steps), width, image subset, input std, the TF32 flags in force and the git commit.

Losses and gradient norms stay on the device and are checked every ``check_every`` steps
(default 10, 100 on the fast path; no per-step synchronisation); the first bad step in that window
is reported, and the record is cut there as if every step had been checked: ``steps_done``,
outcomes, the monitor's records and the epoch log never include the steps run between a stopping
event and its check (so ``check_every`` does not change a record). Every run is watched by
``stabkit.monitor``: the result holds its diagnostic summary over the first ``early_frac`` of the
steps (``early_*``) and over the whole run (``run_*``), both from records cut at the stop, and
``eig_dtypes``, the dtypes the eigensolver saw. Device: ``device="auto"`` picks CUDA when available, else CPU.

Fast path (``fast=True``, default off so that committed reports stay reproducible): bf16 autocast
for the trunk while the ZCA layer computes its covariance, eigendecomposition and whitening in its
own ``dtype`` (autocast disabled inside the layer), channels_last, checks read back every 100 steps;
``compile`` (``default``, ``reduce-overhead``, …) adds ``torch.compile`` of the trunk after the ZCA
layer (the eigendecomposition stays eager). The record stores ``fast``, ``compile``, ``check_every``
and ``eval_every``; ``wall_s`` is the whole run, ``train_s`` the host time spent in the steps.

Per-epoch log (issue 12): ``steps_per_epoch``, ``epochs_done`` (steps_done / steps_per_epoch),
``time_to_nan_loss_epochs`` ((nan_loss_step + 1) / steps_per_epoch, or None),
``censored_at_epochs`` (epochs reached when no NaN loss happened, else None) and ``epoch_log``: one
dict per epoch (the last one partial at a stop) with ``epoch`` (1-based), ``step`` (steps done at
its end), ``train_loss`` (mean of its finite losses), ``test_acc`` (every ``eval_every`` epochs and
at the end of a finished run, None otherwise and for the epoch of a stop; 0: only at the end),
``conv1_weight_norm`` (after its last step), and over its steps, from the monitor's records of the
first ZCA layer: ``lam_max_over_eps`` (λ_max of Σ + εI over ε, from the layer), ``lam_min``,
``min_rel_gap``, ``max_abs_K``, ``grad_norm_max``, ``nonfinite_events`` (None for BatchNorm).
``epoch_log_json`` gives the JSON text stored in a results column.

``train_many(configs)`` runs configs one after another sharing one device copy of the data;
``interleave=True`` runs them all at once in this process, one step of each in turn on one stream
(same results as one after another). Several runs at once on one GPU in separate processes: run the
study through ``stabkit run … --jobs K`` — K worker processes, each with its own CUDA context, data
copy (184 MB of uint8) and monitor. Threads in one process are not used: the monitor patches
process-global functions (interleaved runs share one patch and keep separate records).
"""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as cifar
from .. import monitor
from ..methods import NAMES, resolve_params
from .preset import MILESTONE_UNITS, STOP_ON, get_preset
from .resnet import ResNet18

DEFAULTS = {
    "method": "analytic", "params": {}, "norm": "zca", "d": 16, "dtype": "float32", "preset": "stabkit", "eps": None,
    "epochs": None, "max_steps": None, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "milestones": None, "milestone_unit": None, "gamma": None, "stop_on": None, "tf32": None, "input_std": None, "drop_last": None,
    "limit_images": None, "limit_test": None, "data": None,
    "device": "auto", "seed": 0, "width": 1.0, "diverge_loss": 50.0, "chance_step": None, "chance_acc": 0.15,
    "chance_error": 0.88, "early_frac": 0.2, "check_every": None, "eval_batch": 1000, "gap_threshold": 1e-5,
    "fast": False, "compile": None, "eval_every": 1,
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OUTCOMES = ("ok", "eigh-failed", "nonfinite-loss", "nonfinite-grad", "diverged")


def resolve_config(config: dict) -> dict:
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
    if cfg["method"] not in NAMES:
        raise ValueError(f"unknown method {cfg['method']!r}: choose one of {', '.join(NAMES)}")
    cfg["params"] = resolve_params(cfg["method"], cfg["params"] or {})
    if cfg["norm"] not in ("zca", "bn"):
        raise ValueError(f"unknown norm {cfg['norm']!r}: choose 'zca' or 'bn'")
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"unknown dtype {cfg['dtype']!r}: choose float32 or float64")
    for key in ("epochs", "batch_size", "lr"):
        if not float(cfg[key]) > 0:
            raise ValueError(f"{key} must be > 0, got {cfg[key]}")
    if cfg["milestone_unit"] not in MILESTONE_UNITS:
        raise ValueError(f"unknown milestone unit {cfg['milestone_unit']!r}: choose {', '.join(MILESTONE_UNITS)}")
    try:
        cfg["milestones"] = tuple(float(m) for m in cfg["milestones"])
    except (TypeError, ValueError):
        raise ValueError(f"milestones must be a list of numbers, got {cfg['milestones']!r}") from None
    if any(m < 0 for m in cfg["milestones"]) or (cfg["milestone_unit"] == "fraction" and any(m > 1 for m in cfg["milestones"])):
        raise ValueError(f"milestones {cfg['milestones']} out of range for unit {cfg['milestone_unit']!r}")
    if cfg["stop_on"] not in STOP_ON:
        raise ValueError(f"unknown stop_on {cfg['stop_on']!r}: choose {', '.join(STOP_ON)}")
    if len(tuple(cfg["input_std"])) != 3 or not all(float(v) > 0 for v in cfg["input_std"]):
        raise ValueError(f"input_std must be three positive numbers, got {cfg['input_std']!r}")
    cfg["input_std"] = tuple(float(v) for v in cfg["input_std"])
    if cfg["norm"] == "zca":
        cfg["zca"] = preset.layer(cfg["method"], cfg["params"], cfg["eps"])  # ValueError for a bad method/ε
        cfg["eps"] = cfg["zca"].eps
    if cfg["limit_images"] is not None and int(cfg["limit_images"]) < int(cfg["batch_size"]):
        raise ValueError(f"limit_images={cfg['limit_images']} is smaller than one batch ({cfg['batch_size']})")
    cfg["fast"] = bool(cfg["fast"])
    cfg["check_every"] = (100 if cfg["fast"] else 10) if cfg["check_every"] is None else cfg["check_every"]
    if int(cfg["check_every"]) != cfg["check_every"] or int(cfg["check_every"]) < 1:
        raise ValueError(f"check_every must be an integer ≥ 1, got {cfg['check_every']!r}")
    if int(cfg["eval_every"]) != cfg["eval_every"] or int(cfg["eval_every"]) < 0:
        raise ValueError(f"eval_every must be an integer ≥ 0 (0: test only at the end), got {cfg['eval_every']!r}")
    compile_mode = {True: "default", False: None, "": None, "none": None}.get(cfg["compile"], cfg["compile"])
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {cfg['compile']!r}: choose none, {', '.join(COMPILE_MODES)}")
    cfg["compile"] = compile_mode
    cfg["device"] = pick_device(cfg["device"])
    return cfg


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}: choose auto, cpu or cuda[:N]")
    return device


@functools.lru_cache(maxsize=2)
def device_data(path, device: str):
    """CIFAR-10 train/test as uint8 (N, 3, 32, 32) + int64 labels on ``device``, in a fixed
    seeded random order (so a ``limit_images`` prefix is a random subset). Cached per process."""
    out = {}
    for split in ("train", "test"):
        images, labels = cifar.load_cifar10(path, split)
        order = np.random.default_rng(0).permutation(len(images))
        out[split] = (torch.from_numpy(images[order]).permute(0, 3, 1, 2).contiguous().to(device),
                      torch.from_numpy(labels[order]).to(device))
    return out


def normalize(x_uint8: torch.Tensor, std=cifar.STD) -> torch.Tensor:
    mean = torch.tensor(cifar.MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip of a uint8 batch (B, C, H, W), on its device."""
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen, device=x.device)
    flip = torch.rand(B, generator=gen, device=x.device) < 0.5
    cols = torch.arange(W, device=x.device)
    cols = torch.where(flip[:, None], W - 1 - cols, cols) + ox[:, None]  # (B, W): flip folded into the gather
    rows = torch.arange(H, device=x.device) + oy[:, None]  # (B, H)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def wrong_predictions(model, images, labels, batch: int = 1000, std=cifar.STD, channels_last: bool = False) -> torch.Tensor:
    """Number of misclassified images (a device scalar: no synchronisation), the model in eval mode."""
    model.eval()
    wrong = torch.zeros((), device=images.device)
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch], std)
        logits = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        wrong += (logits.argmax(1) != labels[i:i + batch]).sum()
    model.train()
    return wrong


def evaluate(model, images, labels, batch: int = 1000, std=cifar.STD) -> float:
    """Test error of ``model`` on ``images``."""
    return float(wrong_predictions(model, images, labels, batch, std)) / max(1, len(images))


def _is_eigen_failure(exc: BaseException) -> bool:
    if isinstance(exc, torch.linalg.LinAlgError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("linalg", "eigh", "syevd", "syev", "failed to converge", "cusolver"))


def _first_event(losses, gnorms, correct, upto, cfg, chance_step, batch):
    """(outcome, step) of the first failure among steps < upto, or None."""
    loss, gn = losses[:upto], gnorms[:upto]
    bad_loss = ~torch.isfinite(loss)
    big_loss = torch.isfinite(loss) & (loss > cfg["diverge_loss"])
    bad_grad = ~torch.isfinite(gn)
    events = []
    for outcome, mask in (("nonfinite-loss", bad_loss), ("diverged", big_loss), ("nonfinite-grad", bad_grad)):
        idx = torch.nonzero(mask)
        if len(idx):
            events.append((int(idx[0]), OUTCOMES.index(outcome), outcome))
    if chance_step is not None and upto > chance_step:
        window = correct[max(0, chance_step - 49):chance_step + 1]
        if float(window.sum()) / (len(window) * batch) <= cfg["chance_acc"]:
            events.append((chance_step, 99, "diverged"))
    if not events:
        return None
    step, _, outcome = min(events)
    return outcome, step


def train_run(config: dict, data=None) -> dict:
    """Train once with ``config`` (keys of ``DEFAULTS``); the result dict is described in the module doc."""
    run = _Run(config, data)
    with monitor.watch() as shared:
        while run.active:
            _activate(shared, run.mon)
            run.step()
    return run.finish()


def _activate(shared: monitor.Monitor, own: monitor.Monitor) -> None:
    """Make the monitor that ``watch`` patched log into ``own`` (its rows, step counter and bound):
    one patch for the process, one record list per run, so interleaved runs keep separate records."""
    shared.__dict__ = own.__dict__


class _Run:
    """One run's state; ``step()`` trains one step (and checks every ``check_every``), ``finish()``
    gives the result dict. Used by :func:`train_run` and, several at once, :func:`train_many`."""

    def __init__(self, config: dict, data=None):
        cfg = self.cfg = resolve_config(config)
        device = self.device = cfg["device"]
        self.start = time.perf_counter()
        data = data if data is not None else device_data(cfg["data"], device)
        train_x, train_y = data["train"]
        test_x, test_y = data["test"]
        if cfg["limit_images"]:
            train_x, train_y = train_x[:int(cfg["limit_images"])], train_y[:int(cfg["limit_images"])]
        limit_test = cfg["limit_test"] or (cfg["limit_images"] and min(len(test_x), int(cfg["limit_images"])))
        if limit_test:
            test_x, test_y = test_x[:int(limit_test)], test_y[:int(limit_test)]
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        batch = self.batch = int(cfg["batch_size"])
        if len(train_x) < batch:
            raise ValueError(f"{len(train_x)} training images is less than one batch of {batch}")
        per_epoch = self.per_epoch = len(train_x) // batch if cfg["drop_last"] else -(-len(train_x) // batch)  # ceil: a last, smaller batch
        total = max(1, int(math.ceil(float(cfg["epochs"]) * per_epoch)))
        if cfg["max_steps"]:
            total = min(total, int(cfg["max_steps"]))
        self.total = total
        chance_step = cfg["chance_step"] if cfg["chance_step"] is not None else max(100, total // 4)
        self.chance_step = chance_step if 0 <= chance_step < total else None

        torch.manual_seed(int(cfg["seed"]))
        preset = cfg["preset"]
        model = ResNet18(norm=cfg["norm"], d=int(cfg["d"]), method=cfg["method"], params=cfg["params"],
                         dtype=cfg["dtype"], width=float(cfg["width"]), zca=cfg.get("zca"), conv_init=preset.conv_init).to(device)
        self.fast = bool(cfg["fast"])
        if self.fast:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        if cfg["compile"]:  # the trunk after the ZCA layer only: the eigendecomposition stays eager
            model.layers = torch.compile(model.layers, mode=None if cfg["compile"] == "default" else cfg["compile"])
        self.milestones = milestone_steps(cfg["milestones"], cfg["milestone_unit"], total, per_epoch)
        self.std = cfg["input_std"]
        self.tf32_before = _set_tf32(cfg["tf32"])
        self.tf32_used = _tf32_flags()
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(cfg["seed"]) + 1)
        self.losses = torch.zeros(total, device=device)
        self.gnorms = torch.zeros(total, device=device)
        self.correct = torch.zeros(total, device=device)
        self.conv1_norms = torch.zeros(total, device=device)
        self.lam_max = torch.full((total,), float("nan"), device=device, dtype=torch.float64)
        self.params = list(model.parameters())
        self.outcome, self.event_step, self.done, self.eigen_error = "ok", None, 0, False
        self.spec = model.norm1.spec if cfg["norm"] == "zca" else None
        self.stop_any = cfg["stop_on"] == "any"
        self.check_every = int(cfg["check_every"])
        self.eval_every = int(cfg["eval_every"])
        self.evals: dict[int, torch.Tensor] = {}  # epoch → wrong test predictions (a device scalar)
        self.mon = monitor.Monitor(bound=self.spec)
        self.active, self.train_s = True, 0.0

    def _autocast(self):
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.fast)

    def step(self) -> None:
        """One SGD step (a failure is classified, a bug re-raised); sets ``active`` False at the end."""
        t0 = time.perf_counter()
        try:
            self._step()
        finally:
            self.train_s += time.perf_counter() - t0

    def _step(self) -> None:
        try:
            self._train_step(self.done)
        except Exception as exc:  # noqa: BLE001 — classified below; anything else is a bug and re-raised
            self.active = False
            self._on_exception(exc)
            return
        self.done += 1
        if self.done % self.check_every == 0 or self.done == self.total:
            self._check()
        if self.active and (self.done % self.per_epoch == 0 or self.done == self.total):
            epoch = -(-self.done // self.per_epoch)
            if self.done == self.total or (self.eval_every > 0 and epoch % self.eval_every == 0):
                self.evals[epoch] = self._wrong_predictions()
        if self.done == self.total:
            self.active = False

    def _train_step(self, step: int) -> None:
        cfg, model, per_epoch, batch = self.cfg, self.model, self.per_epoch, self.batch
        if step % per_epoch == 0:
            self.perm = torch.randperm(len(self.train_x), generator=self.gen, device=self.device)
        lr = cfg["lr"] * cfg["gamma"] ** sum(step >= m for m in self.milestones)
        for group in self.opt.param_groups:
            group["lr"] = lr
        idx = self.perm[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        x = normalize(augment(self.train_x[idx], self.gen), self.std)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.train_y[idx]
        with self._autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.losses[step], self.gnorms[step] = loss.detach(), gnorm
        self.correct[step] = (logits.detach().argmax(1) == y).sum()
        if self.spec is not None:
            self.lam_max[step] = model.norm1.last_lam_max
        self.opt.step()
        self.conv1_norms[step] = torch.linalg.vector_norm(model.conv1.weight.detach())
        self.mon.step()

    def _check(self) -> None:
        """The device-side failure checks, read back once per ``check_every`` steps."""
        if self.stop_any:
            event = _first_event(self.losses, self.gnorms, self.correct, self.done, self.cfg, self.chance_step, self.batch)
            if event:
                self.outcome, self.event_step = event
                self.active = False
        elif bool(torch.isnan(self.losses[:self.done]).any()):
            self.active = False

    def _on_exception(self, exc: BaseException) -> None:
        event = _first_event(self.losses, self.gnorms, self.correct, self.done, self.cfg, self.chance_step, self.batch)
        if event:
            self.outcome, self.event_step = event
            self.eigen_error = _is_eigen_failure(exc)
        elif _is_eigen_failure(exc):
            self.outcome, self.event_step, self.eigen_error = "eigh-failed", self.done, True
        else:
            _set_tf32(self.tf32_before)
            raise exc

    def _wrong_predictions(self) -> torch.Tensor:
        with self._autocast():
            return wrong_predictions(self.model, self.test_x, self.test_y, int(self.cfg["eval_batch"]), self.std,
                                     channels_last=self.fast)

    def _stop_point(self) -> None:
        """Where the run stopped, independent of ``check_every``: the steps after the first stopping
        event (run on until the next check) are discarded, as if every step had been checked."""
        losses = self.losses
        if self.stop_any and self.outcome not in ("ok", "eigh-failed"):
            self.done, self.eigen_error = min(self.done, self.event_step + 1), False
        if not self.stop_any:
            nan_steps = torch.nonzero(torch.isnan(losses[:self.done]))
            if len(nan_steps):
                self.done, self.eigen_error = int(nan_steps[0]) + 1, False

    def finish(self) -> dict:
        cfg, total, losses, params = self.cfg, self.total, self.losses, self.params
        self._stop_point()
        done = self.done
        if not self.stop_any and self.outcome == "ok":
            event = _first_event(losses, self.gnorms, self.correct, done, cfg, self.chance_step, self.batch)
            if event:
                self.outcome, self.event_step = event
        outcome, event_step, eigen_error = self.outcome, self.event_step, self.eigen_error
        nan_steps = torch.nonzero(torch.isnan(losses[:done]))
        nan_loss_step = int(nan_steps[0]) if len(nan_steps) else None
        nan_loss_note = ""
        if nan_loss_step is None and eigen_error and not all(bool(torch.isfinite(p).all()) for p in params):
            # the eigensolver raised on a NaN covariance (non-finite weights from an earlier step's NaN
            # gradient): the authors' torch.svd returned NaN there and their loss was NaN at this step
            nan_loss_step, nan_loss_note = done, "inferred: eigensolver raised on non-finite weights"
        test_error = None
        last_epoch = -(-done // self.per_epoch)
        if outcome == "ok" or (not self.stop_any and nan_loss_step is None and not eigen_error and done == total):
            wrong = self.evals.get(last_epoch) if done == total else None
            wrong = wrong if wrong is not None else self._wrong_predictions()
            test_error = float(wrong) / max(1, len(self.test_x))
            if outcome == "ok" and total >= 100 and test_error >= cfg["chance_error"]:
                outcome, event_step = "diverged", total
        _set_tf32(self.tf32_before)
        if nan_loss_step is not None:
            paper_outcome = "nan-loss"
        elif eigen_error:
            paper_outcome = "eigh-failed"
        else:
            paper_outcome = "ok" if done == total else "censored"
        stopped = done < total or nan_loss_step is not None
        # the monitor's records end with the last step kept (a failing step included, what followed it not)
        records = self.mon.records
        records = records[records["step"] < done]
        early = monitor.summarize(records, until_step=max(1, int(round(cfg["early_frac"] * total))), gap_threshold=cfg["gap_threshold"])
        whole = monitor.summarize(records, gap_threshold=cfg["gap_threshold"])
        finished = losses[:done]
        log = epoch_log(self, records, done, stopped)
        per_epoch = self.per_epoch
        return {
            "outcome": outcome, "step": event_step, "test_error": test_error, "wall_s": time.perf_counter() - self.start,
            "train_s": self.train_s, "steps_total": total, "steps_done": done,
            "final_loss": float(finished[-1]) if done else float("nan"),
            "method": cfg["method"], "spec": self.spec or "bn", "norm": cfg["norm"], "d": int(cfg["d"]), "dtype": cfg["dtype"],
            "seed": int(cfg["seed"]), "device": self.device,
            "nan_loss_step": nan_loss_step, "nan_loss_note": nan_loss_note, "paper_outcome": paper_outcome,
            "steps_per_epoch": per_epoch, "epochs_done": done / per_epoch,
            "time_to_nan_loss_epochs": None if nan_loss_step is None else (nan_loss_step + 1) / per_epoch,
            "censored_at_epochs": done / per_epoch if nan_loss_step is None else None,
            "epoch_log": log, "eig_dtypes": ",".join(sorted(set(records["dtype"]))),
            **run_settings(cfg, self.milestones, self.model, self.tf32_used),
            **{f"early_{k}": v for k, v in early.items()}, **{f"run_{k}": v for k, v in whole.items()},
        }


def _zca_site(records):
    """Records of the first ZCA layer: the call site of the first logged call."""
    return records[records["site"] == records["site"].iloc[0]] if len(records) else records


def _num(value):
    value = float(value)
    return None if math.isnan(value) else value


def epoch_log(run: "_Run", records, done: int, stopped: bool) -> list[dict]:
    """One dict per epoch of steps [0, done) (the last one partial at a stop): see ``schema12``
    in the module doc. Losses, norms and λ_max are read back once, here."""
    per_epoch = run.per_epoch
    losses = run.losses[:done].double().cpu().numpy()
    norms = run.conv1_norms[:done].double().cpu().numpy()
    lam_max = run.lam_max[:done].cpu().numpy()
    zca = run.spec is not None
    site = _zca_site(records) if zca else None
    eps = float(run.cfg["eps"]) if zca else None
    out = []
    for epoch in range(1, -(-done // per_epoch) + 1):
        a, b = (epoch - 1) * per_epoch, min(epoch * per_epoch, done)
        finite = losses[a:b][np.isfinite(losses[a:b])]
        last = b == done
        wrong = run.evals.get(epoch)
        acc = None if wrong is None or (last and stopped) else 1.0 - float(wrong) / max(1, len(run.test_x))
        entry = {"epoch": epoch, "step": b, "train_loss": float(finite.mean()) if len(finite) else None, "test_acc": acc,
                 "conv1_weight_norm": _num(norms[b - 1])}
        diag = dict.fromkeys(("lam_max_over_eps", "lam_min", "min_rel_gap", "max_abs_K", "grad_norm_max", "nonfinite_events"))
        if zca:
            rows = site[(site["step"] >= a) & (site["step"] < b)]
            window = lam_max[a:b]
            if len(rows):
                diag.update(lam_min=_num(rows["lam_min"].min()), min_rel_gap=_num(rows["min_rel_gap"].min()),
                            max_abs_K=_num(rows["max_K"].max()), grad_norm_max=_num(rows["grad_norm"].max()),
                            nonfinite_events=int(rows["nonfinite"].sum()))
            if len(window) and not np.isnan(window).all():
                diag["lam_max_over_eps"] = float(np.nanmax(window)) / eps if eps > 0 else float("inf")
        out.append({**entry, **diag})
    return out


def epoch_log_json(log: list[dict]) -> str:
    """The epoch log as JSON text (the results column); ±inf as Python's json writes them (Infinity)."""
    return json.dumps(log)


def milestone_steps(milestones, unit: str, total: int, per_epoch: int) -> list[int]:
    """The steps at which the lr is multiplied by gamma: milestones as fractions of ``total``, epochs
    (``per_epoch`` steps each, as StepLR stepped once per epoch) or steps."""
    scale = {"fraction": total, "epoch": per_epoch, "step": 1}[unit]
    return sorted(int(round(float(m) * scale)) for m in milestones)


def _tf32_flags() -> dict:
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


def _set_tf32(value):
    """Set both TF32 flags (None: leave them); returns the previous flags for restoring."""
    before = _tf32_flags()
    if isinstance(value, dict):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = value["tf32_matmul"], value["tf32_cudnn"]
    elif value is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(value)
    return before


@functools.lru_cache(maxsize=1)
def _commit() -> str:
    from ..studies.runner import REPO, _git_commit  # the runner's rule (STABKIT_GIT_COMMIT in a copy without .git)

    return _git_commit(REPO / "reports")  # a study writing its cells there does not make the checkout "dirty"


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
        "spec_note": getattr(getattr(model, "norm1", None), "spec_note", "") or "",
        **tf32_used, "commit": _commit(),
    }


def train_many(configs, data=None, interleave: bool = False) -> list[dict]:
    """Run ``configs`` on one shared device copy of the data (see module doc): one after another,
    or with ``interleave`` all at once, one step of each in turn on one stream (same results as one
    after another: every run has its own model, optimiser, generator and monitor records)."""
    configs = list(configs)
    resolved = [resolve_config(c) for c in configs]
    if not interleave:
        return [train_run(config, data=data if data is not None else device_data(cfg["data"], cfg["device"]))
                for config, cfg in zip(configs, resolved)]
    if len({(c["device"], str(c["data"]), str(c["tf32"])) for c in resolved}) > 1:
        raise ValueError("interleaved runs must share device, data and TF32 setting")
    shared = data if data is not None or not resolved else device_data(resolved[0]["data"], resolved[0]["device"])
    runs = [_Run(config, shared) for config in configs]
    with monitor.watch() as mon:
        while any(run.active for run in runs):
            for run in runs:
                if run.active:
                    _activate(mon, run.mon)
                    run.step()
    return [run.finish() for run in reversed(runs)][::-1]  # reversed: each run restores the TF32 flags it found
