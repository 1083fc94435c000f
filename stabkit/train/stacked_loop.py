"""R runs of one configuration, seeds apart, trained as one stacked network (issue 12's throughput).

``train_stacked(configs)`` gives the records ``train_many(configs, interleave=True)`` gives, while
each step trains every run at once in :func:`stabkit.train.stacked.stack` of their models (one
kernel per layer for all R runs, one eigendecomposition call for all their groups). What stays each
run's own, so that its record is the one its separate run would have:

- its data order and augmentation (its own generator: ``_Run.batch_at``) and its seed's initial weights;
- its losses, gradient norms, correct counts, λ_max and conv1 norms, from its slice of the stack,
  and its monitor records (:class:`stabkit.monitor.SplitMonitor` splits each call by run);
- its checks, test passes (the stacked network in eval mode, each run scored on its own logits),
  deadline stop and outcome (``_Run``'s own code).

A run that stops leaves the stack: the weights and momentum of every run are copied back into their
own models and optimisers and the others are stacked again. A step that raises (an eigensolver
failure: one run's NaN covariance fails the batched call of all of them) is undone — generators,
running statistics and the ZCA layers' call counters restored; the optimiser had not stepped — and
run again run by run in the runs' own models, so the failing run is classified exactly as alone;
the others are then stacked again. A step that raises only in the stacked network (every run's own
step succeeds) is warned once — the stacked kernels round differently — and raised when the next
step does it again: the stacked network itself fails, and replaying every step would hide it (and
time the replays in the bench). Not handled: ``compile`` (refused).

The same numbers as separate runs hold to rounding: float64 on a CPU, 1e-12 relative
(``tests/test_train_stacked_loop.py``). On a GPU the stacked kernels differ from the separate ones,
so rounding differs as between any two GPU runs (which seeds fail may change, as with the fast path).
"""

from __future__ import annotations

import time
import traceback
import warnings

import torch

from .. import monitor
from .batches import device_data, normalize
from .config import resolve_config
from .loop import _Run
from .stacked import run_block, run_losses, run_norms, stack, stacked_input
from .zca import ZCAWhitening

_PER_STEP = ("losses", "gnorms", "correct", "conv1_norms", "lam_max")


def train_stacked(configs, data=None) -> list[dict]:
    """Train ``configs`` (equal but for ``seed``) stacked in one network; their result dicts, in order."""
    configs = list(configs)
    resolved = [resolve_config(c) for c in configs]
    _check_stackable(resolved)
    shared = data if data is not None else device_data(resolved[0]["data"], resolved[0]["device"])
    runs = [_Run(config, shared, cfg) for config, cfg in zip(configs, resolved)]
    group = _Stack(runs)
    while group.runs:
        group.step()
    return [run.finish() for run in reversed(runs)][::-1]  # reversed: each run restores the TF32 flags it found


def _check_stackable(cfgs: list[dict]) -> None:
    if not cfgs:
        raise ValueError("no runs to stack")
    first = {k: v for k, v in cfgs[0].items() if k != "seed"}
    for cfg in cfgs[1:]:
        other = {k: v for k, v in cfg.items() if k != "seed"}
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(f"stacked runs must differ only in their seed; these differ: {', '.join(diff)}")
    if cfgs[0]["compile"]:
        raise ValueError("stacked runs are not compiled: leave compile unset")


class _Stack:
    """The active runs of :func:`train_stacked`, their stacked network and its optimiser."""

    def __init__(self, runs: list[_Run]):
        self.all = runs
        first = runs[0]
        self.device, self.fast, self.zca = first.device, first.fast, first.spec is not None
        # each run's per-step arrays become rows of one tensor per quantity: a step writes each once
        for name in _PER_STEP:
            rows = torch.stack([getattr(r, name) for r in runs])
            setattr(self, name, rows)
            for i, r in enumerate(runs):
                setattr(r, name, rows[i])
        self.monitor = monitor.SplitMonitor([])
        self.stack_only_failure_at = None  # the last step that raised only in the stacked network
        self._restack([r for r in runs if r.active])

    # --- building and taking apart ---------------------------------------------------------------
    def _restack(self, runs: list[_Run]) -> None:
        self.runs = runs
        self.monitor.monitors[:] = [r.mon for r in runs]
        self._eval_at = None
        if not runs:
            self.net = self.opt = None
            return
        cfg = runs[0].cfg
        net = stack([r.model for r in runs])
        if self.fast:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        R = len(runs)
        own = [dict(r.model.named_parameters()) for r in runs]
        with torch.no_grad():
            for name, p in net.named_parameters():
                buffers = [r.opt.state.get(o[name], {}).get("momentum_buffer") for r, o in zip(runs, own)]
                if all(b is not None for b in buffers):
                    momentum = torch.empty_like(p)
                    for i, b in enumerate(buffers):
                        block = run_block(momentum, R, i)
                        block.copy_(b.reshape(block.shape))
                    opt.state[p]["momentum_buffer"] = momentum
        self.net, self.opt = net, opt
        self.params = list(net.parameters())
        self.index = torch.tensor([self.all.index(r) for r in runs], device=self.device)
        self.buffers = list(net.buffers())  # running statistics: saved before each step, to undo one that raised
        self.saved_buffers = [torch.empty_like(b) for b in self.buffers]
        self.zca_layers = [m for m in net.modules() if isinstance(m, ZCAWhitening)]

    def _unstack(self) -> None:
        """Every stacked run's weights, running statistics, ZCA call counter and momentum back into
        its own model and optimiser."""
        R, net = len(self.runs), self.net
        with torch.no_grad():
            for i, r in enumerate(self.runs):
                own_params, own_buffers = dict(r.model.named_parameters()), dict(r.model.named_buffers())
                for name, p in net.named_parameters():
                    block = run_block(p, R, i)
                    own_params[name].copy_(block.reshape(own_params[name].shape))
                    buf = self.opt.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        r.opt.state[own_params[name]]["momentum_buffer"] = run_block(buf, R, i).reshape(
                            own_params[name].shape).clone(memory_format=torch.preserve_format)
                for name, b in net.named_buffers():
                    own = own_buffers[name]
                    own.copy_(run_block(b, R, i).reshape(own.shape) if b.is_floating_point() else b)
                for mine, stacked_layer in zip((m for m in r.model.modules() if isinstance(m, ZCAWhitening)), self.zca_layers):
                    mine.forward_calls = stacked_layer.forward_calls

    # --- steps -----------------------------------------------------------------------------------
    def step(self) -> None:
        """One step of every stacked run, then each run's checks, test pass and deadline; a run that
        stopped leaves the stack. A step that raised is undone and replayed run by run (:meth:`replay`)."""
        runs, step = self.runs, self.runs[0].done
        undo = self._snapshot()
        t0 = time.perf_counter()
        try:
            with monitor.watching(self.monitor):
                self._stacked_step(step)
            raised = None
        except Exception as exc:  # noqa: BLE001 — the runs' own steps classify it (or re-raise a bug)
            traceback.clear_frames(exc.__traceback__)  # the failed step's activations and graph go before the replay
            raised = exc
        spent = time.perf_counter() - t0
        for r in runs:
            r.train_s += spent
        if raised is not None:
            self.replay(undo, raised)
            return
        for r in runs:
            r._after_step(lambda r=r: self._wrong_predictions(r))
        still = [r for r in runs if r.active]
        if len(still) < len(runs):
            self._unstack()
            self._restack(still)

    def _snapshot(self):
        torch._foreach_copy_(self.saved_buffers, self.buffers)
        return [r.gen.get_state() for r in self.runs], [z.forward_calls for z in self.zca_layers]

    def replay(self, undo, exc: Exception) -> None:
        """Undo the stacked step that raised ``exc``, run it again run by run in their own models, stack
        the runs still active again. When every run's own step succeeds, the stacked network failed
        alone: once it may be the stacked kernels' rounding (warned; the runs go on), at two steps in
        a row it is the stacked network itself, and it raises rather than replay every step unseen."""
        states, calls = undo
        with torch.no_grad():
            for r, s in zip(self.runs, states):
                r.gen.set_state(s)
            torch._foreach_copy_(self.buffers, self.saved_buffers)
        for z, n in zip(self.zca_layers, calls):
            z.forward_calls = n
        self._unstack()
        runs, step = self.runs, self.runs[0].done
        for r in runs:
            r.mon.drop_from(r.done)
            with monitor.watching(r.mon):
                r.step()
        if all(r.done > step for r in runs):  # no run's own step raised (a raising step does not count)
            self._stack_only_failure(step, exc)
        self._restack([r for r in runs if r.active])

    def _stack_only_failure(self, step: int, exc: Exception) -> None:
        if self.stack_only_failure_at == step - 1:
            raise RuntimeError(f"the stacked network raised at steps {step - 1} and {step}, where every run's own step "
                               f"succeeded: {type(exc).__name__}: {exc}") from exc
        self.stack_only_failure_at = step
        warnings.warn(f"stacked step {step} raised {type(exc).__name__}: {exc}; every run's own step succeeded, "
                      f"so the runs train on", RuntimeWarning, stacklevel=2)

    def _stacked_step(self, step: int) -> None:
        runs, net, opt, R = self.runs, self.net, self.opt, len(self.runs)
        for group in opt.param_groups:
            group["lr"] = runs[0].lr_at(step)
        batches = [r.batch_at(step) for r in runs]
        x = stacked_input([b[0] for b in batches])
        x = x.contiguous(memory_format=torch.channels_last if self.fast else torch.contiguous_format)
        y = torch.stack([b[1] for b in batches], 1)
        with runs[0]._autocast():
            logits = net(x)
            losses = run_losses(logits, y)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        gnorms = torch.linalg.vector_norm(torch.stack([run_norms(p.grad, R, torch.float64) for p in self.params if p.grad is not None]), dim=0)
        index = self.index
        self.losses[index, step] = losses.detach().to(self.losses.dtype)
        self.gnorms[index, step] = gnorms.to(self.gnorms.dtype)
        self.correct[index, step] = (logits.detach().argmax(2) == y).sum(0).to(self.correct.dtype)
        if self.zca:
            self.lam_max[index, step] = net.norm1.last_lam.reshape(R, -1).amax(1).to(self.lam_max.dtype)
        opt.step()
        self.conv1_norms[index, step] = run_norms(net.conv1.weight.detach(), R, torch.float64)
        self.monitor.step()

    @torch.no_grad()
    def _wrong_predictions(self, run: _Run) -> torch.Tensor:
        """``run``'s misclassified test images (a device scalar), from one eval pass of the stacked
        network at this step (the test set handed to every run, each scored on its own logits)."""
        step = run.done
        if self._eval_at != step:
            first, net, R = self.runs[0], self.net, len(self.runs)
            batch, std = int(first.cfg["eval_batch"]), first.std
            wrong = torch.zeros(R, device=self.device)
            net.eval()
            with first._autocast():
                for i in range(0, len(first.test_x), batch):
                    x = normalize(first.test_x[i:i + batch], std).repeat(1, R, 1, 1)
                    x = x.contiguous(memory_format=torch.channels_last) if self.fast else x
                    logits = net(x)
                    wrong += (logits.argmax(2) != first.test_y[i:i + batch, None]).sum(0)
            net.train()
            self._eval_at, self._wrong = step, wrong
        return self._wrong[self.runs.index(run)]
