"""Fast training path and per-epoch logs (issue 12): the ZCA layer keeps its dtype under autocast,
the fast path gives the same failure outcomes as the plain one, the stop point does not depend on
how often the device is read back, interleaved runs equal sequential ones, and every epoch_log
field is checked against an independent computation."""

import json
import time

import numpy as np
import pytest
import torch

import stabkit.torch as sktorch
from stabkit import monitor
from stabkit.train import loop, table_iv
from stabkit.train.loop import epoch_log_json, train_many, train_run
from stabkit.train.resnet import ResNet18
from stabkit.train.zca import ZCAWhitening
from tests._host_reads import count_host_reads
from tests.conftest import SMALL_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = SMALL_RUN


def _record_eigh_dtypes(monkeypatch) -> list:
    """The dtypes of the matrices handed to the eigensolver from now on (appended per call): the
    library's decompositions go through ``stabkit._xp.eigh``."""
    from stabkit import _xp

    seen, original = [], _xp.eigh

    def spy(A):
        seen.append(A.dtype)
        return original(A)

    monkeypatch.setattr(_xp, "eigh", spy)
    return seen


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zca_layer_keeps_its_dtype_under_autocast(dtype, monkeypatch):
    seen = _record_eigh_dtypes(monkeypatch)
    torch.manual_seed(0)
    layer = ZCAWhitening(16, d=4, method="taylor", dtype=dtype, affine=False)
    x = torch.randn(8, 16, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = layer(x)
    plain = ZCAWhitening(16, d=4, method="taylor", dtype=dtype, affine=False)
    y_plain = plain(x.float())
    want = {"float32": torch.float32, "float64": torch.float64}[dtype]
    assert seen == [want, want]  # the covariance handed to the eigensolver, with and without autocast
    # the whitening itself ran in the layer's dtype: only the final cast to the input's bf16 differs
    assert y_auto.dtype == torch.bfloat16
    assert torch.equal(y_auto, y_plain.bfloat16())


def test_the_stem_runs_in_float32_under_autocast():
    """Under the fast path's autocast conv1 and the ZCA layer run in float32: the layer whitens
    exactly the plain network's conv1 output and hands float32 on; the trunk after it is bf16."""
    torch.manual_seed(0)
    model = ResNet18(width=0.125, d=4, method="taylor")
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    model.norm1.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert seen["inp"].dtype == seen["out"].dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(seen["inp"], model.conv1(x))  # no bf16 rounding before the covariance
    assert logits.dtype == torch.bfloat16  # the trunk still autocasts


def test_fast_run_eigensolver_sees_the_requested_dtype(synthetic, monkeypatch):
    seen = _record_eigh_dtypes(monkeypatch)
    r = train_run({**SMALL, "method": "analytic", "dtype": "float64", "fast": True, "max_steps": 3}, data=synthetic)
    assert r["outcome"] == "ok" and r["fast"] is True and r["check_every"] == 1
    assert seen == [torch.float64] * 3


# constructed cases with a known outcome (see tests/test_train.py), run under the ``exact_ties``
# fixture (the covariance is 0·Σ + εI = εI exactly: all eigenvalues tie): the analytic gradient
# is non-finite at step 0 and the paper's rule then infers a NaN loss at step 1; the Taylor backward
# stays finite at the ties (and after them); BatchNorm at lr 1e8 blows up.
CASES = [
    ({**SMALL, "method": "analytic", "max_steps": 6}, ("nonfinite-grad", 0, "censored", None)),
    ({**SMALL, "method": "analytic", "max_steps": 6, "stop_on": "nan-loss"}, ("nonfinite-grad", 0, "nan-loss", 1)),
    ({**SMALL, "preset": "paper", "method": "analytic", "max_steps": 6}, ("nonfinite-grad", 0, "nan-loss", 1)),
    ({**SMALL, "method": "taylor", "max_steps": 4}, ("ok", None, "ok", None)),
    ({**SMALL, "preset": "paper", "method": "taylor", "max_steps": 4}, ("ok", None, "ok", None)),
]


@pytest.mark.parametrize("case,expected", CASES)
def test_fast_and_plain_paths_give_the_same_outcome(synthetic, exact_ties, case, expected):
    plain = train_run(case, data=synthetic)
    fast = train_run({**case, "fast": True, "check_every": 5}, data=synthetic)  # read back every 5 steps
    for r in (plain, fast):
        assert (r["outcome"], r["step"], r["paper_outcome"], r["nan_loss_step"]) == expected
    assert plain["steps_done"] == fast["steps_done"]
    assert len(plain["epoch_log"]) == len(fast["epoch_log"])


def test_bn_blow_up_fails_both_ways(synthetic):
    case = {**SMALL, "norm": "bn", "lr": 1e8, "max_steps": 6}
    for r in (train_run(case, data=synthetic), train_run({**case, "fast": True}, data=synthetic)):
        assert r["outcome"] in ("diverged", "nonfinite-loss", "nonfinite-grad") and 0 < r["step"] < 6


@pytest.mark.parametrize("case,_", CASES[:3])
def test_stop_point_does_not_depend_on_check_every(synthetic, exact_ties, case, _):
    every = train_run(case, data=synthetic)
    rarely = train_run({**case, "check_every": 50}, data=synthetic)  # runs on past the failure, then cuts
    keys = ("outcome", "step", "steps_done", "nan_loss_step", "paper_outcome", "run_calls", "run_nonfinite_events",
            "time_to_nan_loss_epochs", "censored_at_epochs")
    assert {k: every[k] for k in keys} == {k: rarely[k] for k in keys}
    assert epoch_log_json(every["epoch_log"]) == epoch_log_json(rarely["epoch_log"])


@pytest.mark.parametrize("fast", [False, True])
def test_a_run_stops_at_an_epoch_end_before_its_deadline(synthetic, monkeypatch, fast):
    """The deadline passes during the first epoch (the loop's clock jumps two hours at its first test pass, an hour past it):
    the run ends itself after that whole epoch, as a run censored there (its test error from that
    epoch's pass); far away: the whole run, as without one; already passed: the run does not start."""
    cfg = {**SMALL, "method": "taylor", "fast": fast, "epochs": 2.0, "eval_every": 1, "seed": 5, "limit_images": 128}
    free = train_run(cfg, data=synthetic)
    monkeypatch.setenv("STABKIT_RUN_DEADLINE", str(time.time() + 3600))
    far = train_run(cfg, data=synthetic)
    _deadline_passes_at_the_first_test_pass(monkeypatch)
    cut = train_run(cfg, data=synthetic)
    with pytest.raises(loop.RunNotStarted, match="passed before the run started"):
        train_run(cfg, data=synthetic)  # the clock is past the deadline now
    per_epoch = 128 // 32
    assert free["steps_done"] == far["steps_done"] == 2 * per_epoch and not free["deadline_stop"] and not far["deadline_stop"]
    assert far["final_loss"] == free["final_loss"] and far["test_error"] == free["test_error"]
    assert cut["deadline_stop"] and cut["steps_done"] == per_epoch and cut["censored_at_epochs"] == 1.0
    assert cut["paper_outcome"] == "censored" and cut["nan_loss_step"] is None
    first = json.loads(epoch_log_json(free["epoch_log"]))[0]
    assert cut["test_error"] == pytest.approx(1 - first["test_acc"])  # the same weights after epoch 1, the same pass
    # and the epoch log keeps that pass: a clean stop at an epoch's end is no failure
    (last,) = json.loads(epoch_log_json(cut["epoch_log"]))
    assert last["epoch"] == 1 and last["test_acc"] == first["test_acc"]


def _nan_loss_at(monkeypatch, step: int) -> None:
    """The training loss is NaN at 0-based step ``step`` (its backward then makes the weights NaN)."""
    real, calls = loop.F.cross_entropy, [0]

    def cross_entropy(logits, y):
        loss = real(logits, y)
        calls[0] += 1
        return loss * float("nan") if calls[0] == step + 1 else loss

    monkeypatch.setattr(loop.F, "cross_entropy", cross_entropy)


def _deadline_passes_at_the_first_test_pass(monkeypatch) -> None:
    """A deadline an hour away, and the loop's clock jumping two hours at its first test pass."""
    import types

    monkeypatch.setenv("STABKIT_RUN_DEADLINE", str(time.time() + 3600))
    shift = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: time.time() + shift[0], perf_counter=time.perf_counter))
    evaluate = loop._Run._wrong_predictions

    def evaluate_then_jump(run):
        wrong = evaluate(run)
        shift[0] = 7200.0
        return wrong

    monkeypatch.setattr(loop._Run, "_wrong_predictions", evaluate_then_jump)


@pytest.mark.parametrize("fast", [False, True])
def test_a_failure_between_checks_is_the_outcome_of_a_run_stopped_by_its_deadline(synthetic, monkeypatch, fast):
    """A NaN loss at step 7, the last step of epoch 1 (8 steps of 32 images), read back only every 50
    steps; the deadline stops the run at that epoch's end, before any check. The record is that of a
    run checked at every step: a non-finite loss at step 7, 8 steps done, no test error, no deadline stop."""
    cfg = {**SMALL, "method": "taylor", "epochs": 3.0, "check_every": 50, "fast": fast}
    _nan_loss_at(monkeypatch, 7)
    checked = train_run({**cfg, "check_every": 1}, data=synthetic)
    _nan_loss_at(monkeypatch, 7)
    _deadline_passes_at_the_first_test_pass(monkeypatch)
    cut = train_run(cfg, data=synthetic)
    keys = ("outcome", "step", "steps_done", "nan_loss_step", "paper_outcome", "test_error", "deadline_stop")
    assert {k: cut[k] for k in keys} == {k: checked[k] for k in keys} == {
        "outcome": "nonfinite-loss", "step": 7, "steps_done": 8, "nan_loss_step": 7, "paper_outcome": "nan-loss",
        "test_error": None, "deadline_stop": False}
    assert cut["epoch_log"][-1]["test_acc"] is None


@pytest.mark.parametrize("preset", ["stabkit", "paper"])
def test_a_run_stopped_by_its_deadline_is_not_judged_by_the_finished_run_s_test_error(synthetic, monkeypatch, preset):
    """lr 1e-9 learns nothing: after 1 of 13 epochs (104 steps planned, ≥ 100) the test error is at
    chance. The chance_error rule judges a finished run; this one stopped at its deadline after 8 steps
    and is a censored 'ok' run, not one 'diverged' at step 104, a step it never ran."""
    _deadline_passes_at_the_first_test_pass(monkeypatch)
    r = train_run({**SMALL, "norm": "bn", "lr": 1e-9, "epochs": 13, "preset": preset}, data=synthetic)
    assert (r["steps_total"], r["steps_done"], r["deadline_stop"]) == (104, 8, True)
    assert r["test_error"] >= 0.88  # the rule's threshold (chance_error), met by the pass after epoch 1
    assert (r["outcome"], r["step"], r["paper_outcome"]) == ("ok", None, "censored")


def test_failure_record_epochs(synthetic, exact_ties):
    # 256 images / 32 = 8 steps per epoch; the inferred NaN loss at step 1 is 2/8 epoch in
    r = train_run(CASES[1][0], data=synthetic)
    assert (r["steps_per_epoch"], r["steps_done"], r["epochs_done"]) == (8, 1, 1 / 8)
    assert (r["time_to_nan_loss_epochs"], r["censored_at_epochs"]) == (2 / 8, None)
    (entry,) = r["epoch_log"]  # the partial epoch at the stop
    assert (entry["epoch"], entry["step"], entry["test_acc"]) == (1, 1, None)
    # Σ = εI: all eigenvalues tie at step 0, K̃ = 1/0: the NaN arises inside the backward (finite input,
    # output and incoming gradient, non-finite ∂L/∂Σ), which the monitor counts as one non-finite event
    assert (entry["max_abs_K"], entry["min_rel_gap"], entry["nonfinite_events"]) == (float("inf"), 0.0, 1)
    assert entry["lam_max_over_eps"] == pytest.approx(1.0) and entry["lam_min"] == pytest.approx(1e-4)  # Σ + εI = εI
    ok = train_run(CASES[3][0], data=synthetic)
    assert (ok["time_to_nan_loss_epochs"], ok["censored_at_epochs"]) == (None, 4 / 8)


def test_epoch_log_against_independent_computation(synthetic, monkeypatch):
    losses, covs = [], []
    real_ce, real_eigh = loop.F.cross_entropy, sktorch.eigh

    def ce(logits, y):
        loss = real_ce(logits, y)
        losses.append(float(loss.detach()))
        return loss

    def eigh(A, method="analytic", **params):
        covs.append(A.detach().double().numpy().copy())
        return real_eigh(A, method, **params)

    monkeypatch.setattr(loop.F, "cross_entropy", ce)
    monkeypatch.setattr(sktorch, "eigh", eigh)
    # lr 1e-30 (it must be > 0) and no weight decay: no float32 conv weight moves, so conv1 keeps its
    # initial weights; 20 steps = epochs of 8, 8 and 4 steps
    config = {**SMALL, "method": "taylor", "lr": 1e-30, "weight_decay": 0.0, "epochs": 3, "max_steps": 20, "eval_every": 2, "seed": 3}
    r = train_run(config, data=synthetic)
    log = r["epoch_log"]
    assert [e["epoch"] for e in log] == [1, 2, 3] and [e["step"] for e in log] == [8, 16, 20]
    assert len(losses) == 20 and len(covs) == 20
    for e, (a, b) in zip(log, [(0, 8), (8, 16), (16, 20)]):
        assert e["train_loss"] == pytest.approx(np.mean(losses[a:b]), rel=1e-6)
        lam = np.linalg.eigvalsh(np.stack(covs[a:b]))  # (steps, groups, d), float64
        gaps = np.diff(lam, axis=-1).min(-1) / np.abs(lam).max(-1)
        assert e["lam_min"] == pytest.approx(lam.min(), rel=1e-4)
        assert e["lam_max_over_eps"] == pytest.approx(lam.max() / 1e-4, rel=1e-4)
        assert e["min_rel_gap"] == pytest.approx(gaps.min(), rel=1e-2)
        assert e["max_abs_K"] == pytest.approx(1 / np.diff(lam, axis=-1).min(), rel=1e-2)
        assert e["nonfinite_events"] == 0 and 0 < e["grad_norm_max"] < np.inf
    torch.manual_seed(3)
    conv1 = ResNet18(width=0.125, d=4).conv1.weight
    assert [e["conv1_weight_norm"] for e in log] == pytest.approx([float(conv1.detach().norm())] * 3, rel=1e-6)
    # test accuracy every 2nd epoch and at the end; the last one is the run's test error
    assert log[0]["test_acc"] is None and 0 <= log[1]["test_acc"] <= 1
    assert log[2]["test_acc"] == pytest.approx(1 - r["test_error"])
    assert json.loads(epoch_log_json(log)) == log


def test_bn_epoch_log_has_no_zca_diagnostics(synthetic):
    r = train_run({**SMALL, "norm": "bn", "epochs": 2, "max_steps": 9, "eval_every": 0}, data=synthetic)
    first, last = r["epoch_log"]
    assert (first["step"], last["step"], first["test_acc"]) == (8, 9, None)  # eval_every 0: only at the end
    assert last["test_acc"] == pytest.approx(1 - r["test_error"])
    assert all(first[k] is None for k in ("lam_max_over_eps", "lam_min", "min_rel_gap", "max_abs_K", "grad_norm_max",
                                         "nonfinite_events"))


def test_interleaved_runs_equal_sequential_runs(synthetic, exact_ties):
    configs = [{**SMALL, "method": "taylor", "max_steps": 10}, CASES[1][0],
               {**SMALL, "method": "pi-forward", "max_steps": 7, "seed": 2, "fast": True}]
    before = loop.tf32_flags()
    one_by_one = train_many(configs, data=synthetic)
    together = train_many(configs, data=synthetic, interleave=True)
    assert loop.tf32_flags() == before
    for a, b in zip(one_by_one, together):
        for key in ("outcome", "step", "steps_done", "nan_loss_step", "final_loss", "test_error", "run_calls", "run_max_K"):
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key
        assert epoch_log_json(a["epoch_log"]) == epoch_log_json(b["epoch_log"])


def test_fast_smoke_run(synthetic):
    # the tiny-width fast path end to end: two epochs, learns the synthetic task's signal
    r = train_run({**SMALL, "method": "taylor", "fast": True, "epochs": 2, "lr": 0.05}, data=synthetic)
    assert r["outcome"] == "ok" and r["steps_done"] == 16 and r["check_every"] == 1 and r["compile"] == ""
    assert r["epoch_log"][-1]["train_loss"] < r["epoch_log"][0]["train_loss"]
    assert r["train_s"] > 0 and r["wall_s"] >= r["train_s"]


@pytest.mark.parametrize("bad,needle", [({"check_every": 0}, "check_every"), ({"eval_every": -1}, "eval_every"),
                                        ({"compile": "fastest"}, "compile mode"), ({"check_every": 2.5}, "check_every")])
def test_fast_options_are_validated(bad, needle):
    with pytest.raises(ValueError, match=needle):
        loop.resolve_config({**SMALL, **bad})


def test_fast_path_on_a_cpu_refuses_fewer_than_8_stem_channels():
    # torch's CPU channels_last 1×1 stride-2 convolution corrupts the heap below 8 input channels
    with pytest.raises(ValueError, match="≥ 8 stem channels .* gives 4"):
        loop.resolve_config({"fast": True, "device": "cpu", "width": 0.0625})
    with pytest.raises(ValueError, match="gives 7"):  # round(64 · 0.11) = 7: the channel count decides
        loop.resolve_config({"fast": True, "device": "cpu", "width": 0.11})
    assert loop.resolve_config({"fast": True, "device": "cpu", "width": 0.125})["fast"]
    assert not loop.resolve_config({"device": "cpu", "width": 0.0625})["fast"]


def test_plain_path_feeds_the_network_nchw(synthetic, monkeypatch):
    # augment's gather is channels_last-strided; the plain path hands conv1 a contiguous NCHW batch
    layouts = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        if self.in_channels == 3:
            layouts.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)))
        return real(self, x)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    train_run({**SMALL, "norm": "bn", "max_steps": 1}, data=synthetic)
    train_run({**SMALL, "norm": "bn", "max_steps": 1, "fast": True}, data=synthetic)
    assert layouts[0] == (True, False) and layouts[-1] == (False, True)


def test_fast_defaults():
    assert loop.resolve_config({"fast": True, "device": "cpu"})["check_every"] == 100
    assert loop.resolve_config({"device": "cpu"})["check_every"] == 10
    assert loop.resolve_config({"compile": True, "device": "cpu"})["compile"] == "default"


def test_cli_train_fast_options(tiny_batches):
    from typer.testing import CliRunner

    from stabkit.cli.main import app

    runner = CliRunner()
    args = ["train", "--method", "taylor", "--d", "4", "--width", "0.125", "--epochs", "2", "--limit-images", "64",
            "--batch-size", "32", "--data", str(tiny_batches), "--device", "cpu", "--fast", "--check-every", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "epoch 1 (step 2): loss" in res.output and "epoch 2 (step 4)" in res.output and "λmax/ε" in res.output
    out = json.loads(runner.invoke(app, [*args, "--json", "--eval-every", "0"]).output)
    assert (out["fast"], out["check_every"], out["eval_every"], out["steps_done"]) == (True, 3, 0, 4)
    assert out["epoch_log"][0]["test_acc"] is None and out["epoch_log"][1]["test_acc"] == pytest.approx(1 - out["test_error"])
    for extra, message in ((["--compile", "fastest"], "unknown compile mode"), (["--check-every", "0"], "check_every"),
                           (["--eval-every", "-2"], "eval_every")):
        bad = runner.invoke(app, [*args, *extra])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_interleaved_runs_must_share_tf32(synthetic):
    with pytest.raises(ValueError, match="share device, data and TF32"):
        train_many([{**SMALL, "tf32": True}, {**SMALL, "tf32": False}], data=synthetic, interleave=True)


@pytest.mark.parametrize("preset,row", [("paper", r) for r in table_iv.ROWS] + [("stabkit", "SVD")])
def test_fast_steps_read_nothing_back_between_their_checks(synthetic, preset, row):
    # issue 12, "no host synchronisation per step": losses, norms and checks stay on the device and are
    # read back only at every check_every-th step (an epoch's end, step 4 here, included). On CUDA each
    # read-back waits for the device; on the CPU they are counted (backward rules included).
    run = loop._Run({**SMALL, "preset": preset, "method": table_iv.method(row).name, "fast": True,
                     "check_every": 3, "epochs": 2, "limit_images": 128}, synthetic)
    reads = []
    with monitor.watch() as shared:
        for _ in range(7):
            loop._activate(shared, run.mon)
            with count_host_reads() as seen:
                run.step()
            reads.append(sum(seen.values()))
            assert run.active, (run.outcome, run.done)
            assert all(site.startswith("train/") for _, site in seen), seen  # the checks' own reads only
    assert [n > 0 for n in reads] == [done % 3 == 0 for done in range(1, 8)], reads
