"""One training run of the ZCA (or BatchNorm) ResNet-18 on CIFAR-10, with a classified outcome.

The method arrives as ``config["method"]``: a :class:`stabkit.methods.Spec` (parsed once by the
caller's edge) or text / a Method with ``params`` (converted once by ``resolve_config``).

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
* ``eigh-failed`` — the forward eigensolver raised (``torch.linalg.LinAlgError``, raised by the
  ZCA layer as :class:`stabkit.errors.EigensolverError` and recognised by that type);
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
eigensolver raised on a non-finite covariance — from non-finite weights, or finite ones whose float
covariance overflowed — where the authors' SVD returned NaN and their loss was NaN) and ``paper_outcome`` — ``nan-loss``, ``ok`` (no NaN loss
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
for the trunk after the stem, while conv1 runs in float32 and the ZCA layer computes its covariance,
eigendecomposition and whitening in its own ``dtype`` (autocast disabled in the stem), channels_last,
checks read back every 100 steps;
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
``min_rel_gap``, ``max_abs_K``, ``grad_norm_max``, ``nonfinite_events`` (None for BatchNorm; of the λ the
layer returns: for a forward that iterates, the PI row, its estimates, whose gaps can differ from Σ + εI's).
``epoch_log_json`` gives the JSON text stored in a results column.

``train_many(configs)`` runs configs one after another sharing one device copy of the data;
``interleave=True`` runs them all at once in this process, one step of each in turn on one stream
(same results as one after another). Several runs at once on one GPU in separate processes: run the
study through ``stabkit run … --jobs K`` — K worker processes, each with its own CUDA context, data
copy (184 MB of uint8) and monitor. Threads in one process are not used: the monitor patches
process-global functions (interleaved runs share one patch and keep separate records). Runs of one
configuration, seeds apart, can also train stacked in one network, one kernel for all of them:
``stabkit.train.stacked_loop`` (same records, built on this module's ``_Run``).

Time box: when ``STABKIT_RUN_DEADLINE`` (Unix seconds; set by ``studies/gpu-session.sh`` for a wave of
runs) is set, a run stops at the end of an epoch when the next epoch, at 1.25 × the last one's wall
time, would end after it. It is then a run of fewer epochs without a NaN loss (``censored_at_epochs``,
``paper_outcome`` ``censored``, ``deadline_stop`` True) instead of a run killed with the GPU command.
A run asked to start after the deadline raises ``RunNotStarted`` instead (the runner records an error
and runs that cell again in a later window).

The parts live beside this module: options and their checks in ``config``, the data on the
device in ``batches``, failure detection in ``outcomes``, the per-epoch log in ``epoch_log``; this
module runs the steps. Their public names are importable from here as before.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

from .. import monitor
from .batches import augment, device_data, evaluate, normalize, wrong_predictions
from .config import (COMPILE_MODES, DEFAULTS, method_spec, milestone_steps, pick_device, resolve_config, run_settings,
                     set_tf32, tf32_flags)
from .epoch_log import epoch_log, epoch_log_json
from .outcomes import OUTCOMES, first_event, inferred_nan_loss, is_eigen_failure, paper_outcome
from .resnet import ResNet18
from .session import steps_per_epoch, test_images

__all__ = ["DEFAULTS", "COMPILE_MODES", "OUTCOMES", "train_run", "train_many", "resolve_config", "method_spec",
           "pick_device", "device_data", "normalize", "augment", "wrong_predictions", "evaluate", "epoch_log",
           "epoch_log_json", "milestone_steps", "run_settings", "tf32_flags", "set_tf32"]


class RunNotStarted(RuntimeError):
    """The run's deadline (``STABKIT_RUN_DEADLINE``) had passed before its first step."""


def train_run(config: dict, data=None) -> dict:
    """Train once with ``config`` (keys of ``DEFAULTS``); the result dict is described in the module doc."""
    return _train(_Run(config, data))


def _train(run: "_Run") -> dict:
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

    def __init__(self, config: dict, data=None, cfg: dict | None = None):
        cfg = self.cfg = cfg if cfg is not None else resolve_config(config)
        device = self.device = cfg["device"]
        self.start = time.perf_counter()
        data = data if data is not None else device_data(cfg["data"], device)
        train_x, train_y = data["train"]
        test_x, test_y = data["test"]
        if cfg["limit_images"]:
            train_x, train_y = train_x[:int(cfg["limit_images"])], train_y[:int(cfg["limit_images"])]
        n_test = test_images(cfg, available=len(test_x))
        test_x, test_y = test_x[:n_test], test_y[:n_test]
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        batch = self.batch = int(cfg["batch_size"])
        if len(train_x) < batch:
            raise ValueError(f"{len(train_x)} training images is less than one batch of {batch}")
        per_epoch = self.per_epoch = steps_per_epoch(len(train_x), batch, cfg["drop_last"])
        total = max(1, int(math.ceil(float(cfg["epochs"]) * per_epoch)))
        if cfg["max_steps"]:
            total = min(total, int(cfg["max_steps"]))
        self.total = total
        chance_step = cfg["chance_step"] if cfg["chance_step"] is not None else max(100, total // 4)
        self.chance_step = chance_step if 0 <= chance_step < total else None
        # the images in the chance window's steps: an epoch's last batch holds fewer without drop_last
        self.chance_images = sum(min(batch, len(train_x) - (s % per_epoch) * batch)
                                 for s in range(max(0, chance_step - 49), chance_step + 1)) if self.chance_step is not None else None

        torch.manual_seed(int(cfg["seed"]))
        preset = cfg["preset"]
        model = ResNet18(norm=cfg["norm"], d=int(cfg["d"]), method=cfg["method"],
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
        self.tf32_before = set_tf32(cfg["tf32"])
        self.tf32_used = tf32_flags()
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(cfg["seed"]) + 1)
        self.losses = torch.zeros(total, device=device)
        self.gnorms = torch.zeros(total, device=device, dtype=torch.float64)
        self.correct = torch.zeros(total, device=device)
        self.conv1_norms = torch.zeros(total, device=device, dtype=torch.float64)
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
        deadline = os.environ.get("STABKIT_RUN_DEADLINE")
        self.deadline = float(deadline) if deadline else None
        if self.deadline is not None and time.time() >= self.deadline:
            # not even one epoch could end in time: start nothing, so the runner records an error and the
            # cell (its seed) is run in a later window instead of being spent as a run censored at epoch 1
            raise RunNotStarted(f"STABKIT_RUN_DEADLINE ({self.deadline:.0f}) passed before the run started")
        self.deadline_stop, self.epoch_t0 = False, time.time()

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
        self._after_step()

    def _after_step(self, wrong_predictions=None) -> None:
        """A step is done: the checks every ``check_every`` steps, the test pass at an epoch's end
        (``wrong_predictions()``: its device scalar, by default this run's own model's), the deadline."""
        self.done += 1
        if self.done % self.check_every == 0 or self.done == self.total:
            self._check()
        if self.active and (self.done % self.per_epoch == 0 or self.done == self.total):
            epoch = -(-self.done // self.per_epoch)
            if self.done == self.total or (self.eval_every > 0 and epoch % self.eval_every == 0):
                self.evals[epoch] = (wrong_predictions or self._wrong_predictions)()
            if self.deadline is not None and self.done < self.total:
                self._stop_before_the_deadline()
        if self.done == self.total:
            self.active = False

    def _stop_before_the_deadline(self) -> None:
        """At an epoch's end: stop when one more epoch (1.25 × this one) would end after the deadline.
        The steps since the last check are checked first: a failure among them is the run's outcome
        (and its stop point), as if every step had been checked, not a clean deadline stop."""
        now = time.time()
        epoch_s, self.epoch_t0 = now - self.epoch_t0, now
        if now + 1.25 * epoch_s > self.deadline:
            self._check()
            self.active, self.deadline_stop = False, self.active

    def lr_at(self, step: int) -> float:
        return self.cfg["lr"] * self.cfg["gamma"] ** sum(step >= m for m in self.milestones)

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s augmented, normalised images and labels, drawn from this run's generator
        (a new permutation at each epoch's start)."""
        per_epoch, batch = self.per_epoch, self.batch
        if step % per_epoch == 0:
            self.perm = torch.randperm(len(self.train_x), generator=self.gen, device=self.device)
        idx = self.perm[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        # augment's gather leaves the batch channels_last-strided: the plain path makes it NCHW (the
        # layout of today's loop, and the one torch's CPU convolutions handle at every width)
        x = normalize(augment(self.train_x[idx], self.gen), self.std)
        return x.contiguous(memory_format=torch.channels_last if self.fast else torch.contiguous_format), self.train_y[idx]

    def _train_step(self, step: int) -> None:
        model = self.model
        lr = self.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = self.batch_at(step)
        with self._autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        # summed in float64: finite float32 entries past ≈ 1.8e19 (an analytic backward near a tie) overflow a
        # float32 sum of squares, which read as a non-finite gradient; inf/NaN entries still give inf/NaN
        gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)))
        self.losses[step], self.gnorms[step] = loss.detach(), gnorm
        self.correct[step] = (logits.detach().argmax(1) == y).sum()
        if self.spec is not None:
            self.lam_max[step] = model.norm1.last_lam.amax()
        self.opt.step()
        self.conv1_norms[step] = torch.linalg.vector_norm(model.conv1.weight.detach(), dtype=torch.float64)  # finite weights, finite norm
        self.mon.step()

    def _check(self) -> None:
        """The device-side failure checks, read back once per ``check_every`` steps."""
        if self.stop_any:
            event = first_event(self.losses, self.gnorms, self.correct, self.done, self.cfg, self.chance_step, self.chance_images)
            if event:
                self.outcome, self.event_step = event
                self.active = False
        elif bool(torch.isnan(self.losses[:self.done]).any()):
            self.active = False

    def _on_exception(self, exc: BaseException) -> None:
        event = first_event(self.losses, self.gnorms, self.correct, self.done, self.cfg, self.chance_step, self.chance_images)
        if event:
            self.outcome, self.event_step = event
            self.eigen_error = is_eigen_failure(exc)
        elif is_eigen_failure(exc):
            self.outcome, self.event_step, self.eigen_error = "eigh-failed", self.done, True
        else:
            set_tf32(self.tf32_before)
            raise exc

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)

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
        cfg, total, losses = self.cfg, self.total, self.losses
        self._stop_point()
        done = self.done
        if not self.stop_any and self.outcome == "ok":
            event = first_event(losses, self.gnorms, self.correct, done, cfg, self.chance_step, self.chance_images)
            if event:
                self.outcome, self.event_step = event
        outcome, event_step, eigen_error = self.outcome, self.event_step, self.eigen_error
        nan_steps = torch.nonzero(torch.isnan(losses[:done]))
        nan_loss_step = int(nan_steps[0]) if len(nan_steps) else None
        nan_loss_note = ""
        if nan_loss_step is None and eigen_error:  # on a non-finite Σ the authors' loss was NaN at this step
            nan_loss_note = inferred_nan_loss(self._weights_finite(), self.mon.records, done)
            nan_loss_step = done if nan_loss_note else None
        test_error = None
        last_epoch = -(-done // self.per_epoch)
        if outcome == "ok" or (not self.stop_any and nan_loss_step is None and not eigen_error and done == total):
            wrong = self.evals.get(last_epoch) if done == total or done % self.per_epoch == 0 else None
            wrong = wrong if wrong is not None else self._wrong_predictions()
            test_error = float(wrong) / max(1, len(self.test_x))
            if outcome == "ok" and done == total >= 100 and test_error >= cfg["chance_error"]:  # a finished run only
                outcome, event_step = "diverged", total
        set_tf32(self.tf32_before)
        stopped = done < total or nan_loss_step is not None
        # a deadline stop ends at an epoch's end after that epoch's test pass: the pass is the model's own
        # when nothing failed and the weights it evaluated are finite (else a NaN may be one step away)
        clean_stop = self.deadline_stop and nan_loss_step is None and self._weights_finite()
        # the monitor's records end with the last step kept (a failing step included, what followed it not)
        records = self.mon.records
        records = records[records["step"] < done]
        early = monitor.summarize(records, until_step=max(1, int(round(cfg["early_frac"] * total))), gap_threshold=cfg["gap_threshold"])
        whole = monitor.summarize(records, gap_threshold=cfg["gap_threshold"])
        finished = losses[:done]
        log = epoch_log(self, records, done, stopped and not clean_stop)
        per_epoch = self.per_epoch
        return {
            "outcome": outcome, "step": event_step, "test_error": test_error, "wall_s": time.perf_counter() - self.start,
            "train_s": self.train_s, "steps_total": total, "steps_done": done,
            "final_loss": float(finished[-1]) if done else float("nan"),
            "method": cfg["method"].name, "spec": str(self.spec) if self.spec is not None else "bn", "norm": cfg["norm"], "d": int(cfg["d"]), "dtype": cfg["dtype"],
            "seed": int(cfg["seed"]), "device": self.device, "test_images": len(self.test_x),
            "nan_loss_step": nan_loss_step, "nan_loss_note": nan_loss_note, "paper_outcome": paper_outcome(nan_loss_step, eigen_error, done, total),
            "steps_per_epoch": per_epoch, "epochs_done": done / per_epoch,
            "time_to_nan_loss_epochs": None if nan_loss_step is None else (nan_loss_step + 1) / per_epoch,
            "censored_at_epochs": done / per_epoch if nan_loss_step is None else None, "deadline_stop": self.deadline_stop,
            "epoch_log": log, "eig_dtypes": ",".join(sorted(set(records["dtype"]))),
            **run_settings(cfg, self.milestones, self.model, self.tf32_used),
            **{f"early_{k}": v for k, v in early.items()}, **{f"run_{k}": v for k, v in whole.items()},
        }



def train_many(configs, data=None, interleave: bool = False) -> list[dict]:
    """Run ``configs`` on one shared device copy of the data (see module doc): one after another,
    or with ``interleave`` all at once, one step of each in turn on one stream (same results as one
    after another: every run has its own model, optimiser, generator and monitor records)."""
    configs = list(configs)
    resolved = [resolve_config(c) for c in configs]
    if not interleave:
        return [_train(_Run(config, data if data is not None else device_data(cfg["data"], cfg["device"]), cfg))
                for config, cfg in zip(configs, resolved)]
    if len({(c["device"], str(c["data"]), str(c["tf32"])) for c in resolved}) > 1:
        raise ValueError("interleaved runs must share device, data and TF32 setting")
    shared = data if data is not None or not resolved else device_data(resolved[0]["data"], resolved[0]["device"])
    runs = [_Run(config, shared, cfg) for config, cfg in zip(configs, resolved)]
    with monitor.watch() as mon:
        while any(run.active for run in runs):
            for run in runs:
                if run.active:
                    _activate(mon, run.mon)
                    run.step()
    return [run.finish() for run in reversed(runs)][::-1]  # reversed: each run restores the TF32 flags it found
