"""stabkit.train.stacked_loop: R runs trained stacked in one network give the records of the same
runs trained separately (compared in float64 throughout, so only the order of sums differs; every field of
every record, epoch logs and test passes included), both presets, through a run whose step fails
and is replayed alone while the others train on, a step undone after its forward, runs stopped by
their checks, the monitor's records split by run, and the ZCA layer's dtype under the fast path."""

import math

import numpy as np
import pytest
import torch

from stabkit import monitor
from stabkit.train import loop, stacked_loop, table_iv
from stabkit.train.loop import train_many
from stabkit.train.stacked_loop import train_stacked
from tests._host_reads import count_host_reads
from tests.conftest import SMALL_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMES = ("wall_s", "train_s")


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in TIMES:
                _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _runs(seeds=(0, 1, 2), **over):
    return [{**SMALL_RUN, "method": "taylor", "dtype": "float64", "epochs": 2, "limit_images": 64, "eval_every": 1,
             "seed": s, **over} for s in seeds]


@pytest.fixture()
def poisoned(monkeypatch, synthetic):
    """Seed 1's batch at step 1 is made of NaN (its run's covariance is then NaN, and the eigensolver
    of the whole stack raises): the image that its generator puts in that batch is marked (all 255,
    which no other image is), and augment returns NaN for a batch holding it, under seed 1 only. The
    solver is made to raise on a non-finite matrix, whatever a LAPACK would do with it."""
    from stabkit.train import loop, zca

    solver = zca._eigh_kept

    def raising_on_nan(cov, *args, **kwargs):
        if not bool(torch.isfinite(cov).all()):
            raise torch.linalg.LinAlgError("non-finite input")
        return solver(cov, *args, **kwargs)

    monkeypatch.setattr(zca, "_eigh_kept", raising_on_nan)

    x, y = synthetic["train"]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1 + 1))  # seed 1's first permutation
    x = x.clone()
    x[order[1 * 32]] = 255
    real = loop.augment

    def augment(batch, gen, *args):
        out = real(batch, gen, *args)
        if gen.initial_seed() == 2 and bool((batch.flatten(1) == 255).all(1).any()):
            return torch.full(out.shape, float("nan"))
        return out

    monkeypatch.setattr(loop, "augment", augment)
    return {"train": (x, y), "test": synthetic["test"]}


@pytest.mark.parametrize("preset", ["stabkit", "paper"])
def test_a_run_whose_step_fails_is_replayed_alone_and_the_others_train_on(poisoned, float64, preset, monkeypatch):
    replays = []
    real = stacked_loop._Stack.replay
    monkeypatch.setattr(stacked_loop._Stack, "replay", lambda self, undo, exc: (replays.append(len(self.runs)), real(self, undo, exc)))
    configs = _runs(preset=preset)
    alone = train_many(configs, data=poisoned)
    stacked = train_stacked(configs, data=poisoned)
    assert [r["outcome"] for r in alone] == ["ok", "eigh-failed", "ok"] and alone[1]["step"] == 1
    assert alone[0]["steps_done"] == 4 and alone[0]["epoch_log"][0]["test_acc"] is not None  # a test pass per epoch
    assert replays == [3]  # the step of the NaN batch, run again by the three runs alone
    for a, b in zip(alone, stacked):
        _same(a, b, f"seed {a['seed']}")


def test_a_step_that_raises_after_its_forward_is_undone_before_the_replay(synthetic, float64, monkeypatch):
    """The second stacked step raises after its forward, which had moved BatchNorm's and the ZCA
    layer's running statistics and the ZCA layer's call counter (PI under ``paper`` draws new start
    vectors from it): undone, and run again by each run alone, the records are the separate runs'."""
    from stabkit.errors import EigensolverError

    real, calls = stacked_loop.run_losses, []

    def raising_once(logits, targets):
        calls.append(1)
        if len(calls) == 2:
            raise EigensolverError("raised after the forward")
        return real(logits, targets)

    monkeypatch.setattr(stacked_loop, "run_losses", raising_once)
    configs = _runs(preset="paper", method="pi-forward")
    alone = train_many(configs, data=synthetic)
    with pytest.warns(RuntimeWarning, match="stacked step 1 raised EigensolverError: raised after the forward; every run's own"):
        stacked = train_stacked(configs, data=synthetic)  # no run's own step raised: the stack alone, once
    assert len(calls) == 4  # every step once stacked (the second raised: its replay is the runs' own code)
    for a, b in zip(alone, stacked):
        assert a["outcome"] == "ok"
        _same(a, b, f"seed {a['seed']}")


def test_a_stacked_network_that_fails_where_the_runs_alone_do_not_raises_at_the_second_step(synthetic, float64, monkeypatch):
    """A failure only the stacked network has (e.g. a kernel the stacked layers need) is not replayed
    step after step unseen: the first is warned, the second in a row raises. Steps 1 and 3 raising
    are each a single one (warned twice, trained on)."""
    real = stacked_loop.run_losses

    def failing_at(steps):
        calls = []

        def run_losses(logits, targets):
            calls.append(1)
            if len(calls) - 1 in steps:
                raise RuntimeError("no kernel for the stacked layer")
            return real(logits, targets)
        return run_losses

    configs = _runs()  # 4 steps (2 epochs of 2): step 3, the last, is the second single failure
    monkeypatch.setattr(stacked_loop, "run_losses", failing_at({1, 2}))
    with pytest.warns(RuntimeWarning, match="stacked step 1 raised"), \
            pytest.raises(RuntimeError, match="stacked network raised at steps 1 and 2, where every run's own step succeeded: "
                                              "RuntimeError: no kernel for the stacked layer"):
        train_stacked(configs, data=synthetic)
    monkeypatch.setattr(stacked_loop, "run_losses", failing_at({1, 3}))  # call 3 is step 3: step 1 was replayed alone
    with pytest.warns(RuntimeWarning) as warned:
        stacked = train_stacked(configs, data=synthetic)
    assert [str(w.message).split(" raised")[0] for w in warned] == ["stacked step 1", "stacked step 3"]
    for a, b in zip(train_many(configs, data=synthetic), stacked):
        _same(a, b, f"seed {a['seed']}")


def test_runs_stopped_by_their_checks_leave_the_stack(synthetic, float64, exact_ties):
    """All eigenvalues tie: the analytic gradient is non-finite at step 0. Checked every step, the runs
    leave the stack at once; checked every 3rd, they run on, and the next step's eigendecomposition
    of NaN weights raises (replayed alone, as each separate run meets it)."""
    for every in (1, 3):
        configs = _runs(method="analytic", max_steps=6, check_every=every)
        alone = train_many(configs, data=synthetic)
        stacked = train_stacked(configs, data=synthetic)
        assert [(r["outcome"], r["step"]) for r in alone] == [("nonfinite-grad", 0)] * 3
        for a, b in zip(alone, stacked):
            _same(a, b, f"seed {a['seed']}, check_every {every}")


def test_huge_but_finite_gradients_of_stacked_runs_are_not_a_nonfinite_gradient(synthetic, monkeypatch):
    """Float32 runs (as trained): at step 3 every run's gradient is multiplied by 1e22, its entries
    finite but their float32 sum of squares past 3.4e38. Each run's norm is summed in float64 (checked
    against numpy on run 1's block of every gradient), so no run records a failure at step 3."""
    from tests.test_train import scale_gradients_at_step_3

    seen = {}
    scale_gradients_at_step_3(monkeypatch, stacked_loop, "run_losses")

    stacked_step = stacked_loop._Stack._stacked_step

    def spy(self, step):
        stacked_step(self, step)
        R = len(self.runs)
        blocks = [p.grad.detach().unflatten(0, (R, -1))[1].double().numpy().ravel() for p in self.params if p.grad is not None]
        seen[step] = (np.concatenate(blocks), float(self.gnorms[self.index[1], step]))

    monkeypatch.setattr(stacked_loop._Stack, "_stacked_step", spy)
    records = train_stacked([{**SMALL_RUN, "method": "taylor", "max_steps": 8, "seed": s} for s in (0, 1, 2)], data=synthetic)
    grads, gnorm = seen[3]
    assert np.isfinite(grads).all() and np.abs(grads).max() > 1e20
    assert gnorm == pytest.approx(np.linalg.norm(grads), rel=1e-9)
    assert all(r["step"] is None or r["step"] > 3 for r in records), [(r["outcome"], r["step"]) for r in records]


def test_huge_but_finite_conv1_weights_of_stacked_runs_log_a_finite_norm(synthetic, monkeypatch):
    """Float32 runs: gradients × 1e22 at step 3 leave each run's conv1 weights finite but ≈ 1e20 per
    entry (their float32 sum of squares past 3.4e38). Each run's logged ``conv1_weight_norm`` after
    step 3 is the float64 norm of its block (numpy, here), not inf."""
    from tests.test_train import scale_gradients_at_step_3

    seen = {}
    scale_gradients_at_step_3(monkeypatch, stacked_loop, "run_losses")

    stacked_step = stacked_loop._Stack._stacked_step

    def spy(self, step):
        stacked_step(self, step)
        w = self.net.conv1.weight.detach().unflatten(0, (len(self.runs), -1))
        seen[step] = [block.double().numpy().ravel().copy() for block in w]

    monkeypatch.setattr(stacked_loop._Stack, "_stacked_step", spy)
    configs = [{**SMALL_RUN, "preset": "paper", "method": "taylor", "max_steps": 8, "seed": s} for s in (0, 1, 2)]
    records = train_stacked(configs, data=synthetic)
    for r, w in zip(records, seen[3]):
        assert r["steps_done"] == 4, (r["outcome"], r["steps_done"])
        assert np.isfinite(w).all() and np.sum(w ** 2) > np.finfo(np.float32).max
        assert r["epoch_log"][-1]["conv1_weight_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12)


def test_only_runs_that_differ_in_their_seed_are_stacked():
    with pytest.raises(ValueError, match="differ only in their seed; these differ: method"):
        train_stacked([{**SMALL_RUN, "method": "taylor"}, {**SMALL_RUN, "method": "analytic", "seed": 1}])
    with pytest.raises(ValueError, match="not compiled"):
        train_stacked([{**SMALL_RUN, "compile": "default"}, {**SMALL_RUN, "compile": "default", "seed": 1}])


def test_split_monitor_logs_each_runs_slice_as_its_own_call():
    """One eigh call on R runs' matrices, watched by a SplitMonitor, leaves in each run's monitor the
    row a call on that run's matrices alone leaves (gaps, λ_min, input and output gradient norms)."""
    g = torch.Generator().manual_seed(0)
    runs, per_run = 3, 4
    B = torch.randn(runs * per_run, 5, 5, generator=g, dtype=torch.float64)
    A0 = B @ B.transpose(1, 2)
    weights = torch.randn(runs * per_run, 5, 5, generator=g, dtype=torch.float64)

    def loss(A, W):
        lam, U = torch.linalg.eigh(A)
        return (U * W).square().sum() + lam.sum()

    own = [monitor.Monitor() for _ in range(runs)]
    with monitor.watching(monitor.SplitMonitor(own)):
        A = A0.clone().requires_grad_()
        loss(A * 1.0, weights).backward()
    for r in range(runs):
        part = slice(r * per_run, (r + 1) * per_run)
        with monitor.watch() as alone:
            A = A0[part].clone().requires_grad_()
            loss(A * 1.0, weights[part]).backward()
        want, got = alone.records.iloc[0], own[r].records.iloc[0]
        assert got["batch"] == per_run
        for col in ("min_gap", "min_rel_gap", "max_K", "lam_min", "grad_norm", "grad_in_norm"):
            assert got[col] == pytest.approx(want[col], rel=1e-12), col
    own[0].drop_from(0)
    assert own[0].records.empty and len(own[1].records) == 1


def test_stacked_fast_runs_whiten_in_the_requested_dtype(synthetic, monkeypatch):
    """Under the fast path (bf16 autocast, channels_last) the stacked network's ZCA layer still hands
    its eigensolver the requested dtype, in one batched call per step holding every run's groups."""
    from stabkit import _xp

    seen, original = [], _xp.eigh

    def spy(A):
        seen.append((A.dtype, A.shape))
        return original(A)

    monkeypatch.setattr(_xp, "eigh", spy)
    configs = [{**SMALL_RUN, "method": "analytic", "dtype": "float64", "fast": True, "max_steps": 3, "seed": s}
               for s in (0, 1)]
    results = train_stacked(configs, data=synthetic)
    assert [(r["outcome"], r["fast"], r["steps_done"]) for r in results] == [("ok", True, 3)] * 2
    groups = 2 * round(64 * SMALL_RUN["width"]) // SMALL_RUN["d"]  # two runs' stems of 8 channels, groups of 4
    assert seen == [(torch.float64, torch.Size([groups, SMALL_RUN["d"], SMALL_RUN["d"]]))] * 3


def test_the_failed_stacked_step_s_tensors_are_freed_before_the_replay(synthetic, float64, monkeypatch):
    """The exception kept for the replay must not keep the failed step's frames, and so its logits and
    autograd graph (a whole stacked batch's activations on a GPU), alive while the runs replay alone."""
    import weakref

    from stabkit.errors import EigensolverError

    real_losses, real_replay, calls, alive = stacked_loop.run_losses, stacked_loop._Stack.replay, [], []

    def raising_once(logits, targets):
        calls.append(weakref.ref(logits))
        if len(calls) == 2:
            raise EigensolverError("raised after the forward")
        return real_losses(logits, targets)

    def replay(self, undo, exc):
        alive.append(calls[1]() is not None)
        return real_replay(self, undo, exc)

    monkeypatch.setattr(stacked_loop, "run_losses", raising_once)
    monkeypatch.setattr(stacked_loop._Stack, "replay", replay)
    with pytest.warns(RuntimeWarning, match="stacked step 1 raised"):
        train_stacked(_runs(seeds=(0, 1), epochs=1), data=synthetic)  # 2 steps: the second raises
    assert alive == [False]


@pytest.mark.parametrize("row", table_iv.ROWS)
def test_stacked_steps_read_nothing_back_between_their_checks(synthetic, row):
    # as one run's fast steps (tests/test_fast_path.py): a stacked step of 3 runs reads back only at
    # the runs' checks (every 3rd step; an epoch's end with its test pass, step 4, included), backward
    # rules counted too
    group = stacked_loop._Stack([loop._Run(c, synthetic) for c in _runs(
        preset="paper", method=table_iv.method(row).name, dtype="float32", fast=True, limit_images=128,
        check_every=3, eval_every=1)])
    reads = []
    for _ in range(7):
        with count_host_reads() as seen:
            group.step()
        reads.append(sum(seen.values()))
        assert len(group.runs) == 3, [(r.outcome, r.done) for r in group.runs]
        assert all(site.startswith("train/") for _, site in seen), seen
    assert [n > 0 for n in reads] == [done % 3 == 0 for done in range(1, 8)], reads
