"""Training loop: a short run succeeds; every failure outcome is produced by a constructed case."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

import stabkit.torch as sktorch
from stabkit.train import loop
from stabkit.train.loop import augment, train_many, train_run
from tests.conftest import SMALL_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = SMALL_RUN


def test_two_step_run_is_ok(synthetic):
    r = train_run({**SMALL, "method": "taylor", "batch_size": 128, "epochs": 1, "limit_images": 256}, data=synthetic)
    assert r["outcome"] == "ok" and r["step"] is None
    assert r["steps_total"] == 2 and r["steps_done"] == 2
    assert 0.0 <= r["test_error"] <= 1.0 and r["wall_s"] > 0
    # the 64 synthetic test images, and the error is a count of them
    assert r["test_images"] == 64
    # without limit_test, a subset run evaluates on as many test images as it trains on
    sub = train_run({**SMALL, "limit_test": None, "method": "taylor", "epochs": 1, "limit_images": 40}, data=synthetic)
    assert sub["test_images"] == 40 and abs(sub["test_error"] * 40 - round(sub["test_error"] * 40)) < 1e-9
    assert abs(r["test_error"] * 64 - round(r["test_error"] * 64)) < 1e-9
    assert r["run_calls"] == 2 and r["early_calls"] == 1  # one ZCA eigh per step
    assert r["run_nonfinite_events"] == 0 and r["run_max_K"] > 0 and r["run_max_bound"] > 0


def test_equal_eigenvalues_with_analytic_give_nonfinite_grad(synthetic, exact_ties):
    # the fixture: the layer's covariance is 0·Σ + εI = εI exactly, all eigenvalues tie, and the nonzero
    # samples meet the analytic rule's 1/0 there
    r = train_run({**SMALL, "method": "analytic", "max_steps": 3}, data=synthetic)
    assert (r["outcome"], r["step"]) == ("nonfinite-grad", 0)
    assert r["run_min_gap"] == 0.0 and r["run_max_K"] == float("inf")
    # the same case with the Taylor backward is finite
    assert train_run({**SMALL, "method": "taylor", "max_steps": 1}, data=synthetic)["outcome"] == "ok"


def test_nan_loss_is_recorded_beside_the_outcome_never_merged(synthetic, exact_ties):
    # the same tie case: stabkit stops at the non-finite gradient (step 0), before any NaN loss, so the
    # paper's criterion is censored; stop_on="nan-loss" trains on, the SGD step spreads the NaN
    # gradient into the weights, and at step 1 the eigensolver raises on the NaN covariance: where the
    # authors' SVD returned NaN, so their loss of step 1 was NaN — the paper's failure, inferred, at step 1
    case = {**SMALL, "method": "analytic", "max_steps": 4}
    r = train_run(case, data=synthetic)
    assert (r["outcome"], r["step"], r["steps_done"]) == ("nonfinite-grad", 0, 1)
    assert (r["paper_outcome"], r["nan_loss_step"]) == ("censored", None)
    r = train_run({**case, "stop_on": "nan-loss"}, data=synthetic)
    assert (r["outcome"], r["step"]) == ("nonfinite-grad", 0)
    assert (r["paper_outcome"], r["nan_loss_step"], r["steps_done"]) == ("nan-loss", 1, 1)
    assert r["nan_loss_note"].startswith("inferred") and r["test_error"] is None
    # a finite run under the paper's rule: ok on both counts
    r = train_run({**SMALL, "method": "taylor", "max_steps": 2, "stop_on": "nan-loss"}, data=synthetic)
    assert (r["outcome"], r["paper_outcome"], r["nan_loss_step"]) == ("ok", "ok", None) and r["test_error"] is not None


def test_milestones_by_fraction_epoch_or_step():
    assert loop.milestone_steps((0.5, 0.75), "fraction", 120, 30) == [60, 90]
    assert loop.milestone_steps((100, 200, 300), "epoch", 136500, 390) == [39000, 78000, 117000]
    assert loop.milestone_steps((7, 3), "step", 10, 5) == [3, 7]


def test_paper_preset_run_record(synthetic):
    before = loop.tf32_flags()
    r = train_run({**SMALL, "preset": "paper", "method": "taylor", "max_steps": 2}, data=synthetic)
    assert loop.tf32_flags() == before  # restored after the run
    assert (r["preset"], r["eps"], r["spec"], r["lr"], r["gamma"]) == ("paper", 1e-2, "taylor-song:K=9", 0.1, 0.1)
    # 256 images / 32 per batch = 8 steps per epoch: StepLR every 100 epochs over 350
    assert (r["milestones"], r["milestone_unit"], r["milestone_steps"], r["epochs"]) == ("100,200,300", "epoch", "800,1600,2400", 350.0)
    assert (r["steps_total"], r["width"], r["limit_images"], r["input_std"]) == (2, 0.125, None, "0.2023,0.1994,0.201")
    assert (r["tf32_matmul"], r["tf32_cudnn"], r["stop_on"]) == (False, False, "nan-loss")
    assert (r["zca_solver"], r["zca_truncation"], r["zca_covariance"], r["zca_lam_floor"]) == ("svd", "none", "full", 1e-10)
    assert r["commit"] and r["outcome"] == "ok"
    r = train_run({**SMALL, "preset": "paper", "method": "pi", "eps": 1e-3, "max_steps": 1, "lr": 0.05,
                   "milestones": (0.5,), "milestone_unit": "fraction"}, data=synthetic)
    assert (r["eps"], r["spec"], r["zca_truncation"], r["lr"], r["milestone_steps"]) == (1e-3, "pi:steps=20,eps=0.001", "none", 0.05, "0")
    # the paper's DataLoader keeps an epoch's last partial batch: 80 images in batches of 32 → 32, 32, 16
    r = train_run({**SMALL, "preset": "paper", "method": "taylor", "epochs": 1, "limit_images": 80}, data=synthetic)
    assert (r["steps_total"], r["drop_last"], r["outcome"]) == (3, False, "ok")
    r = train_run({**SMALL, "method": "taylor", "epochs": 1, "limit_images": 80}, data=synthetic)
    assert (r["steps_total"], r["drop_last"]) == (2, True)
    # the stabkit preset's record: today's values
    r = train_run({**SMALL, "method": "taylor", "max_steps": 1}, data=synthetic)
    assert (r["preset"], r["eps"], r["milestones"], r["milestone_steps"], r["stop_on"]) == ("stabkit", 1e-4, "0.5,0.75", "0,1", "any")
    assert r["input_std"] == "0.247,0.2435,0.2616" and r["zca_covariance"] == "grouped"


def test_raising_eigensolver_gives_eigh_failed(synthetic, monkeypatch):
    calls = []

    def broken(A, method="analytic", **params):
        calls.append(1)
        if len(calls) == 2:
            raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")
        return sktorch.EighResult(*torch.linalg.eigh(A))

    monkeypatch.setattr(sktorch, "eigh", broken)
    r = train_run({**SMALL, "max_steps": 4}, data=synthetic)
    assert (r["outcome"], r["step"], r["steps_done"]) == ("eigh-failed", 1, 1)


def test_an_untyped_error_is_a_bug_not_an_outcome(synthetic, monkeypatch):
    # the failure is recognised by its type (EigensolverError, raised by the ZCA layer from torch's
    # LinAlgError), never by its text: a RuntimeError that only mentions the solver is re-raised
    def broken(A, method="analytic", **params):
        raise RuntimeError("linalg.eigh: cusolver error")

    monkeypatch.setattr(sktorch, "eigh", broken)
    before = loop.tf32_flags()
    with pytest.raises(RuntimeError, match="cusolver"):
        train_run({**SMALL, "max_steps": 2}, data=synthetic)
    assert loop.tf32_flags() == before


def test_huge_learning_rate_fails(synthetic):
    r = train_run({**SMALL, "norm": "bn", "lr": 1e8, "max_steps": 6}, data=synthetic)
    assert r["outcome"] in ("diverged", "nonfinite-loss", "nonfinite-grad")
    assert r["step"] is not None and 0 < r["step"] < 6


def test_chance_accuracy_is_diverged(synthetic):
    # lr 1e-9 learns nothing: at step 8 the training accuracy of steps 0..8 is at chance
    r = train_run({**SMALL, "norm": "bn", "width": 0.0625, "batch_size": 16, "lr": 1e-9, "max_steps": 12,
                   "chance_step": 8, "chance_acc": 0.2}, data=synthetic)
    assert (r["outcome"], r["step"], r["steps_done"]) == ("diverged", 8, 9)
    # the same run with a normal learning rate and an easy task passes the check
    r = train_run({**SMALL, "norm": "bn", "width": 0.0625, "batch_size": 16, "lr": 0.05, "max_steps": 12,
                   "chance_step": 8, "chance_acc": 0.0}, data=synthetic)
    assert r["outcome"] == "ok"


class _ScaleBackward(torch.autograd.Function):
    """The identity forward; its backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_gradients_at_step_3(monkeypatch, owner, name: str) -> None:
    """Every gradient of step 3 (the 4th call of the loss ``owner.name``) × 1e22, the loss itself unchanged."""
    real, calls = getattr(owner, name), [0]

    def scaled(*args):
        calls[0] += 1
        return _ScaleBackward.apply(real(*args), 1e22 if calls[0] == 4 else 1.0)

    monkeypatch.setattr(owner, name, scaled)


def test_huge_but_finite_gradients_are_not_a_nonfinite_gradient(synthetic, monkeypatch):
    """At step 3 every gradient is multiplied by 1e22 (the loss itself unchanged, ≈ 2.3): all entries
    stay finite float32 numbers (up to ≈ 4e21), but a float32 sum of their squares overflows (> 3.4e38).
    The step's gradient norm is the float64 norm of those entries (recomputed here with numpy), finite,
    so step 3 is no failure event; the run fails only after it, from the weights the step made huge."""
    seen = {}
    scale_gradients_at_step_3(monkeypatch, loop.F, "cross_entropy")

    train_step = loop._Run._train_step

    def spy(self, step):
        train_step(self, step)
        grads = [p.grad.detach().double().numpy().ravel() for p in self.params if p.grad is not None]
        seen[step] = (np.concatenate(grads), float(self.gnorms[step]), float(self.losses[step]))

    monkeypatch.setattr(loop._Run, "_train_step", spy)
    r = train_run({**SMALL, "method": "taylor", "max_steps": 8}, data=synthetic)
    grads, gnorm, loss = seen[3]
    assert np.isfinite(grads).all() and np.abs(grads).max() > 1e20 and loss < 50
    assert gnorm == pytest.approx(np.linalg.norm(grads), rel=1e-9)
    assert r["step"] is not None and r["step"] > 3, (r["outcome"], r["step"])


def test_an_eigensolver_failure_on_an_overflowed_covariance_is_the_paper_s_nan_loss(synthetic, monkeypatch):
    """Gradients × 1e22 at step 3 make the weights huge but finite; at step 4 conv1's float32 output
    overflows the covariance, the eigensolver raises on it (spied: its input is not finite, the weights
    are), where the authors' torch.svd gave NaN and their loss was NaN: the paper's failure at step 4
    (5/8 epoch in), as for a covariance made NaN by NaN weights — not a run censored at 4/8 epoch."""
    from stabkit.train import zca

    seen = []
    scale_gradients_at_step_3(monkeypatch, loop.F, "cross_entropy")

    solver = zca.eigh_kept

    def spy(cov, spec):
        seen.append(bool(torch.isfinite(cov).all()))
        return solver(cov, spec)

    train_step = loop._Run._train_step
    weights_finite = {}

    def step_spy(self, step):
        weights_finite[step] = self._weights_finite()
        train_step(self, step)

    monkeypatch.setattr(zca, "eigh_kept", spy)
    monkeypatch.setattr(loop._Run, "_train_step", step_spy)
    r = train_run({**SMALL, "preset": "paper", "method": "taylor", "max_steps": 8}, data=synthetic)
    assert seen == [True] * 4 + [False] and weights_finite[4]  # step 4: finite weights, non-finite Σ
    assert (r["outcome"], r["step"], r["steps_done"]) == ("eigh-failed", 4, 4)
    assert (r["nan_loss_step"], r["paper_outcome"], r["time_to_nan_loss_epochs"]) == (4, "nan-loss", 5 / 8)
    assert r["nan_loss_note"].startswith("inferred") and r["censored_at_epochs"] is None


def test_huge_but_finite_conv1_weights_log_a_finite_norm(synthetic, monkeypatch):
    """Gradients × 1e22 at step 3 leave conv1's float32 weights finite but ≈ 2e20 per entry, whose
    float32 sum of squares overflows (> 3.4e38); the run fails at step 4. The epoch log's
    ``conv1_weight_norm`` (after step 3) is their norm, recomputed here in numpy's float64, not inf."""
    weights = {}
    scale_gradients_at_step_3(monkeypatch, loop.F, "cross_entropy")

    train_step = loop._Run._train_step

    def spy(self, step):
        train_step(self, step)
        weights[step] = self.model.conv1.weight.detach().double().numpy().ravel().copy()

    monkeypatch.setattr(loop._Run, "_train_step", spy)
    r = train_run({**SMALL, "preset": "paper", "method": "taylor", "max_steps": 8}, data=synthetic)
    assert r["steps_done"] == 4 and max(weights) == 3
    w = weights[3]
    assert np.isfinite(w).all() and np.abs(w).max() > 1e19 and np.sum(w ** 2) > np.finfo(np.float32).max
    assert r["epoch_log"][-1]["conv1_weight_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12)


def test_chance_accuracy_counts_the_images_of_a_partial_last_batch(synthetic, monkeypatch):
    """48 images in batches of 32 with the last batch kept: steps of 32, 16, 32, 16 images. The
    chance check at step 3 divides the correct predictions of steps 0..3 by the 96 images those steps
    drew (spied here), not by 4 × 32 = 128, which made a run at 3/4 of its accuracy look at chance."""
    sizes = {}
    real = loop._Run.batch_at

    def batch_at(self, step):
        x, y = real(self, step)
        sizes[step] = len(y)
        return x, y

    monkeypatch.setattr(loop._Run, "batch_at", batch_at)
    cfg = {**SMALL, "norm": "bn", "width": 0.0625, "lr": 1e-9, "epochs": 3, "limit_images": 48, "drop_last": False,
           "chance_step": 3}
    run = loop._Run({**cfg, "chance_acc": 0.0}, synthetic)  # at chance only with none correct: the counts only
    assert loop._train(run)["outcome"] == "ok"
    assert [sizes[s] for s in range(4)] == [32, 16, 32, 16]
    correct = float(run.correct[:4].sum())
    assert correct > 0
    accuracy = correct / sum(sizes[s] for s in range(4))
    above = train_run({**cfg, "chance_acc": (accuracy + correct / 128) / 2}, data=synthetic)  # below the accuracy
    assert (above["outcome"], above["step"]) == ("ok", None)
    below = train_run({**cfg, "chance_acc": accuracy * (1 + 1e-6)}, data=synthetic)
    assert (below["outcome"], below["step"], below["steps_done"]) == ("diverged", 3, 4)


def test_train_many_sequential_and_deterministic(synthetic):
    cfg = {**SMALL, "norm": "bn", "max_steps": 2}
    a, b, c = train_many([cfg, cfg, {**cfg, "seed": 1}], data=synthetic)
    assert a["final_loss"] == b["final_loss"] and a["test_error"] == b["test_error"]
    assert a["final_loss"] != c["final_loss"]


def test_augment_crops_and_flips_on_device():
    # every output is one of the 162 windows of the zero-padded input (9 × 9 offsets, mirrored or not),
    # and over 16 200 copies of one image each window is drawn about equally often (uniform offsets and
    # a fair flip, as torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip)
    x = (torch.arange(3 * 32 * 32, dtype=torch.int64).reshape(3, 32, 32) % 251 + 1).to(torch.uint8)  # no zeros
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)]
    views = torch.stack([padded[:, oy:oy + 32, ox:ox + 32].flip(-1) if f else padded[:, oy:oy + 32, ox:ox + 32]
                         for oy, ox, f in windows])
    assert len({v.numpy().tobytes() for v in views}) == 162  # the windows tell each other apart
    n = 100 * len(windows)
    out = augment(x.expand(n, 3, 32, 32).contiguous(), torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, 32, 32) and out.dtype == torch.uint8
    key = torch.randint(1, 2**20, (3 * 32 * 32,), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    index = {int(h): i for i, h in enumerate(views.flatten(1).long() @ key)}
    drawn = [index.get(int(h), -1) for h in out.flatten(1).long() @ key]
    assert min(drawn) >= 0
    assert all(torch.equal(out[j], views[i]) for j, i in enumerate(drawn[:500]))  # the hash matched exactly
    counts = np.bincount(drawn, minlength=len(windows))
    assert scipy.stats.chisquare(counts).pvalue > 1e-4, counts
    flips = counts[1::2].sum()
    assert abs(flips - n / 2) < 4 * math.sqrt(n / 4), flips  # 4 SD


@pytest.mark.parametrize("option, value, needle", [
    ("max_steps", -1, r"max_steps must be an integer in \[0, 2\^63 − 1\]"), ("max_steps", 2.5, "max_steps must be an integer"),
    ("limit_test", -1, r"limit_test must be an integer in \[0, 2\^63 − 1\]"), ("limit_images", -64, r"limit_images must be an integer in \[1, 2\^63 − 1\]"),
    ("seed", -1, r"seed must be an integer in \[0, 2\^63 − 1\]"), ("seed", 2**63, "seed must be an integer"),
    ("seed", 2**70, r"seed must be an integer in \[0, 2\^63 − 1\], got 1180591620717411303424"),
    ("lr", math.inf, "lr must be a finite number > 0"), ("gamma", math.nan, "gamma must be a finite number > 0"),
    ("gamma", -1.0, "gamma must be"), ("width", 0.0, "width must be a finite number > 0"),
    ("width", math.nan, "width must be"), ("eps", math.inf, "eps must be finite"),
    ("momentum", -0.1, "momentum must be a finite number ≥ 0"), ("batch_size", 0, "batch_size must be"),
    ("batch_size", 12.5, "batch_size must be an integer"), ("lr", "fast", "lr must be a number"),
    ("tf32", "x", "tf32 must be true or false"), ("tf32", "false", "tf32 must be true or false"),
    ("tf32", 1, "tf32 must be true or false"),
    ("check_every", 0, r"check_every must be an integer in \[1, 2\^63 − 1\], got 0"),
    ("eval_every", 2**63, r"eval_every must be an integer in \[0, 2\^63 − 1\] \(0: test only at the end\), got 9223372036854775808"),
    ("eval_batch", -1000, r"eval_batch must be an integer in \[1, 2\^63 − 1\], got -1000"),
    ("eval_batch", 0, r"eval_batch must be an integer in \[1, 2\^63 − 1\], got 0"),
    ("chance_acc", math.nan, r"chance_acc must be a fraction in \[0, 1\], got nan"),
    ("chance_error", 1.5, r"chance_error must be a fraction in \[0, 1\], got 1.5"),
    ("early_frac", 0.0, r"early_frac must be a fraction in \(0, 1\]"),
    ("diverge_loss", math.nan, "diverge_loss must be a number > 0"), ("diverge_loss", "x", "diverge_loss must be a number"),
    ("gap_threshold", -1e-5, "gap_threshold must be a number ≥ 0"),
])
def test_bad_numbers_are_refused_before_a_step(option, value, needle):
    # each would otherwise crash mid-run (max_steps = −1: a negative tensor size; eval_batch = 0 at the first
    # test pass), train on silently (lr = ∞: outcome "ok" with |conv1| = ∞; diverge_loss = NaN: the rule off),
    # be ignored (limit_test = −1) or record a wrong number (eval_batch = −1000: test error 0, no image tested)
    with pytest.raises(ValueError, match=needle):
        loop.resolve_config({"limit_images": 64, "batch_size": 32, option: value})


def test_zero_caps_mean_none():
    cfg = loop.resolve_config({"max_steps": 0, "limit_test": 0, "seed": np.int64(3)})
    assert (cfg["max_steps"], cfg["limit_test"], cfg["seed"]) == (0, 0, 3)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown training option"):
        loop.resolve_config({"lr_decay": 3})
    with pytest.raises(ValueError, match="unknown method"):
        loop.resolve_config({"method": "svd"})
    with pytest.raises(ValueError, match="smaller than one batch"):
        loop.resolve_config({"limit_images": 10})
    with pytest.raises(ValueError, match="unknown preset"):
        loop.resolve_config({"preset": "authors"})
    with pytest.raises(ValueError, match="no row for method 'lorentzian'"):
        loop.resolve_config({"preset": "paper", "method": "lorentzian"})
    with pytest.raises(ValueError, match="unknown milestone unit"):
        loop.resolve_config({"milestone_unit": "hour"})
    with pytest.raises(ValueError, match="out of range"):
        loop.resolve_config({"milestones": (0.5, 2)})
    for milestones, unit in (((float("inf"),), "epoch"), (("1e400",), "step"), ((0.5, float("nan")), "fraction")):
        with pytest.raises(ValueError, match="milestones must be finite numbers"):  # was OverflowError / NaN to integer
            loop.resolve_config({"milestones": milestones, "milestone_unit": unit})
    with pytest.raises(ValueError, match="unknown stop_on"):
        loop.resolve_config({"stop_on": "never"})
    with pytest.raises(ValueError, match="eps must be"):
        loop.resolve_config({"eps": -1})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            loop.pick_device("cuda")
    assert loop.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ study kind and CLI
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from stabkit.cli.main import app  # noqa: E402
from stabkit.studies import zca_cifar10 as study  # noqa: E402


def test_wilson_interval_known_values():
    from stabkit.studies import _stats  # the one Wilson interval the study's tables use

    lo, hi = _stats.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = _stats.wilson(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-4)


def test_study_grid_cells_and_validation():
    cells = study.cells({})
    assert len(cells) == 5 * 5 * 2 * 8 + 8
    assert len({c["cell_id"] for c in cells}) == len(cells)
    assert cells[0]["cell_id"] == "analytic|d4|float32|s0"
    assert study.cells({"methods": ["taylor:K=19"], "dims": [8], "dtypes": ["float64"], "seeds": 2, "bn_baseline": False})[1]["cell_id"] == "taylor:K=19|d8|float64|s1"
    with pytest.raises(ValueError, match="dims must divide 64"):
        study.validate({"dims": [48]})
    with pytest.raises(ValueError, match="unknown grid key"):
        study.validate({"runs": 3})
    with pytest.raises(ValueError, match="unknown method"):
        study.validate({"methods": ["svd"]})
    # tf32 (default None: the preset's) was taken as bool(value) by every cell: "false" switched TF32 on
    with pytest.raises(ValueError, match=r"tf32 must be true or false \(or none: torch's setting\), got 'x'"):
        study.cells({"tf32": "x"})
    assert study.cells({"tf32": False, "seeds": 1})[0]["tf32"] is False


def test_run_cell_on_tiny_data(tiny_batches):
    grid = {"methods": ["clip"], "dims": [4], "dtypes": ["float64"], "seeds": 1, "bn_baseline": False, "max_steps": 1,
            "limit_images": 32, "limit_test": 16, "batch_size": 32, "width": 0.125, "data": str(tiny_batches), "device": "cpu"}
    (cell,) = study.cells(grid)
    (row,) = study.run_cell(cell)
    assert row["outcome"] == "ok" and row["spec"] == "clip" and row["d"] == 4 and row["dtype"] == "float64"
    assert np.isnan(row["step"]) and 0 <= row["test_error"] <= 1 and row["early_calls"] == 1


def test_paper_preset_study_cells_run_and_report(tiny_batches, tmp_path):
    grid = {"preset": "paper", "methods": ["taylor", "pi"], "dims": [4], "dtypes": ["float32"], "seeds": 1, "bn_baseline": False,
            "max_steps": 1, "limit_images": 32, "limit_test": 16, "batch_size": 32, "width": 0.125,
            "data": str(tiny_batches), "device": "cpu"}
    cells = study.cells(grid)
    assert [c["cell_id"] for c in cells] == ["taylor|d4|float32|s0", "pi|d4|float32|s0"]
    assert cells[0]["preset"] == "paper" and cells[0]["eps"] is None and "stop_on" not in cells[0]
    assert "preset" not in study.cells({"seeds": 1})[0]  # the stabkit studies' cells are unchanged
    (row,) = study.run_cell(cells[0])
    assert (row["spec"], row["backward"], row["eps"], row["preset"], row["paper_outcome"]) == ("taylor", "taylor-song:K=9", 1e-2, "paper", "ok")
    with pytest.raises(ValueError, match="no row for method 'lorentzian'"):
        study.validate({"preset": "paper", "methods": ["lorentzian"]})
    with pytest.raises(ValueError, match="fixes the backward"):
        study.validate({"preset": "paper", "methods": ["taylor:K=19"]})
    with pytest.raises(ValueError, match="unknown preset"):
        study.validate({"preset": "paperr"})
    # report: the NaN-loss rate is the one beside Table IV; our outcomes are listed beside it
    results = _synthetic_results()
    results["paper_outcome"] = np.where(results["outcome"] == "ok", "ok", "nan-loss")
    results.loc[(results["spec"] == "analytic") & (results["d"] == 8) & (results["seed"] < 2), "paper_outcome"] = "censored"
    table = study.success_table(results)
    row = table[(table["method"] == "analytic") & (table["d"] == 8)].iloc[0]
    assert (row["NaN loss (paper criterion)"], row["censored"], row["no NaN loss %"]) == ("6/8", 2, 0.0)
    row = table[(table["method"] == "analytic") & (table["d"] == 4)].iloc[0]
    assert row["no NaN loss %"] == pytest.approx(62.5) and row["no NaN loss CI"] == "[30, 87]"  # Wilson [30.6, 86.3], outward
    text = study.report(results, {"preset": "paper", "dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert "Preset `paper`" in text and "taylor-song:K=9" in text and "ZCANormPIv2" in text
    assert "Remaining differences from the authors' code" in text and "data pipeline" in text
    assert "no NaN loss %" in text and "nonfinite-grad" in text
    # results recorded before the paper criterion existed: no such columns
    assert "no NaN loss %" not in study.success_table(_synthetic_results())


def _synthetic_results():
    rows = []
    rng = np.random.default_rng(1)
    for spec in ("analytic", "taylor"):
        for d in (4, 8):
            for seed in range(8):
                fail = spec == "analytic" and (d == 8 or seed < 3)
                max_k = 10 ** rng.uniform(7, 9) if fail else 10 ** rng.uniform(2, 4)
                rows.append({"cell_id": f"{spec}|d{d}|float32|s{seed}", "norm": "zca", "spec": spec, "d": d, "dtype": "float32",
                             "seed": seed, "outcome": "nonfinite-grad" if fail else "ok", "step": 3.0 if fail else np.nan,
                             "test_error": np.nan if fail else 0.3 + 0.01 * seed, "early_max_K": max_k,
                             "early_gap_events": int(fail) * 4, "early_max_bound": max_k if spec == "analytic" else 50.0, "error": None})
    rows.append({"cell_id": "bn|s0", "norm": "bn", "spec": "bn", "d": 0, "dtype": "float32", "seed": 0, "outcome": "ok",
                 "step": np.nan, "test_error": 0.25, "early_max_K": np.nan, "early_gap_events": 0, "early_max_bound": np.nan, "error": None})
    return pd.DataFrame(rows)


def test_report_on_synthetic_results(tmp_path):
    results = _synthetic_results()
    table = study.success_table(results)
    row = table[(table["method"] == "analytic") & (table["d"] == 4)].iloc[0]
    assert row["success %"] == pytest.approx(62.5) and row["paper %"] == 46.7 and row["Wilson 95% CI"] == "[30, 87]"
    assert row["failures"] == "nonfinite-grad 3" and row["test error (ok runs)"] == pytest.approx(0.35)
    assert table[(table["method"] == "analytic") & (table["d"] == 8)].iloc[0]["success %"] == 0.0
    assert table[(table["method"] == "taylor") & (table["d"] == 8)].iloc[0]["paper %"] == 100.0
    text = study.report(results, {"dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert "Table IV" in text and "46.7" in text and "BatchNorm baseline: 1/1 ok" in text
    # results without a preset column predate the presets and the SVD-PI fix: the report says so
    assert "Conventions of these runs" in text and "pi-legacy" in text
    assert "Conventions of these runs" not in study.report(results.assign(preset="stabkit"), {"dims": [4, 8]}, tmp_path)
    # every synthetic failure is at step 3, before the landmark (20 % of 120 steps = 24): nothing to predict
    windowed = study.report(results.assign(steps_total=120), {"dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert "Left out: 11 runs that failed before L" in windowed and "Not fitted" in windowed
    # failures after the landmark, separable by the early max|K̃| inside the mixed cell: the link is found
    late = results.assign(steps_total=120, step=np.where(results["outcome"] == "ok", np.nan, 60.0))
    late.loc[(late["spec"] == "analytic") & (late["d"] == 8) & (late["seed"] < 4), "step"] = 3.0
    fit = study.link(late, 0.2, repeats=5)["fit"]
    assert (fit["n"], fit["failures"], fit["cells"]) == (28, 7, 4)
    assert fit["brier"]["cell+diag"] < fit["brier"]["cell"] < fit["brier"]["base"]
    text = study.report(late, {"dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert "28 runs, of which 7 failed at a step ≥ L (nonfinite-grad 7)" in text and "cell + diagnostics" in text
    # a run stopped at a deadline before its last step without a failure has no known outcome: left out, counted
    cut = late.assign(steps_done=120)
    cut.loc[(cut["spec"] == "taylor") & (cut["d"] == 4) & (cut["seed"] == 0), "steps_done"] = 60
    linked = study.link(cut, 0.2, repeats=5)
    assert linked["fit"]["n"] == 27 and linked["left_out"]["stopped_early"] == 1
    assert ("taylor", 4, 0) not in set(zip(linked["table"]["spec"], linked["table"]["d"], linked["table"]["seed"]))
    assert "and 1 run stopped before the last step without a failure (outcome unknown)" in study.report(
        cut, {"dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert (tmp_path / "success_rates.png").stat().st_size > 0 and (tmp_path / "calibration.png").stat().st_size > 0
    # all runs ok → no link, said so
    ok = results.assign(outcome="ok", steps_total=120)
    assert study.link(ok, 0.2)["fit"] is None and "Not fitted" in study.report(ok, {}, tmp_path)
    assert not (tmp_path / "calibration.png").exists()  # the earlier report's figure does not outlive its link


def test_schedule_comparison_against_a_sibling_report(tmp_path):
    short = _synthetic_results().assign(steps_total=120)
    # long schedule: analytic d=4 now fails in every seed, 5 of them after step 120; taylor unchanged
    long = short.copy()
    late = (long["spec"] == "analytic") & (long["d"] == 4)
    long.loc[late, "outcome"] = "diverged"
    long.loc[late, "step"] = [3.0, 3.0, 3.0, 400.0, 500.0, 600.0, 700.0, 800.0]
    long = long.assign(steps_total=1200)
    table = study.compare_schedules(short, long, horizon=120)
    row = table[(table["method"] == "analytic") & (table["d"] == 4)].iloc[0]
    assert row["short success"] == "5/8 [30, 87]" and row["long success"] == "0/8 [0, 33]"
    # two-sided Fisher exact p for 5/8 vs 0/8: the only tables as unlikely put all 5 successes in one schedule
    # (either one), so p = 2·C(8,5)/C(16,5) = 112/4368
    assert row["Fisher p"] == pytest.approx(112 / 4368, rel=1e-12)
    assert row["long fails after short horizon"] == 5
    same = table[(table["method"] == "taylor") & (table["d"] == 8)].iloc[0]
    assert same["Fisher p"] == pytest.approx(1.0) and same["long fails after short horizon"] == 0
    # in the report: found beside it, or a clear note when the sibling has not been run
    (tmp_path / "zca-cifar10").mkdir()
    short.to_parquet(tmp_path / "zca-cifar10" / "results.parquet")
    grid = {"dims": [4, 8], "methods": ["analytic", "taylor"], "baseline_study": "zca-cifar10"}
    text = study.report(long, grid, tmp_path / "zca-cifar10-long")
    assert "Against the schedule of `zca-cifar10`" in text and "Long-run failures after step 120: 5" in text
    assert "Difference detected (Holm-adjusted Fisher p < 0.05 over the 4 cells): 0/4 cells" in text  # 112/4368·4 > 0.05
    assert "no difference is detected, which is not agreement" in text and "at 8 vs 8 runs" in text
    assert "run that study first" in study.report(long, {**grid, "baseline_study": "absent"}, tmp_path / "x")


def test_cli_train(tiny_batches):
    runner = CliRunner()
    args = ["train", "--method", "taylor", "--d", "4", "--width", "0.125", "--max-steps", "1", "--limit-images", "32",
            "--batch-size", "32", "--data", str(tiny_batches), "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "taylor d=4 float32: ok (test error" in res.output and "1/1 steps" in res.output
    bad = runner.invoke(app, [*args[:4], "5", *args[5:]])
    assert bad.exit_code == 2 and "must divide" in bad.output
    bad = runner.invoke(app, ["train", "--method", "svd", "--data", str(tiny_batches)])
    assert bad.exit_code == 2 and "unknown method" in bad.output
    bad = runner.invoke(app, ["train", "--data", str(tiny_batches.parent / "missing")])
    assert bad.exit_code == 2 and "not found" in bad.output
    res = runner.invoke(app, [*args, "--preset", "paper", "--eps", "0.001", "--milestones", "1,2", "--milestone-unit", "step",
                              "--lr", "0.05", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["preset"], out["eps"], out["milestone_steps"], out["lr"], out["paper_outcome"]) == ("paper", 0.001, "1,2", 0.05, "ok")
    res = runner.invoke(app, [*args, "--preset", "paper"])
    assert res.exit_code == 0 and "paper criterion (NaN loss): ok" in res.output and "ε 0.01" in res.output
    for extra, message in ((["--preset", "paper", "--method", "lorentzian"], "no row for method"),
                           (["--milestones", "a,b"], "comma-separated numbers"), (["--stop-on", "x"], "unknown stop_on")):
        bad = runner.invoke(app, [*args, *extra])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_forward_failures_and_index_summary_are_counted(tmp_path):
    results = _synthetic_results()
    # analytic d=8: seed 0 fails at step 0 with a negative λ_min, seed 1 at step 3 with λ_min = 0 (both ≤ 0)
    results["run_lam_min"] = 1e-4
    d8 = results.index[(results["spec"] == "analytic") & (results["d"] == 8)]
    results.loc[d8[0], ["run_lam_min", "step"]] = [-2e-5, 0.0]
    results.loc[d8[1], "run_lam_min"] = 0.0
    table = study.success_table(results)
    row = table[(table["method"] == "analytic") & (table["d"] == 8)].iloc[0]
    assert row["runs with λ_min ≤ 0"] == 2 and row["… at step 0"] == 1
    assert table["runs with λ_min ≤ 0"].sum() == 2
    text = study.report(results, {"dims": [4, 8], "methods": ["analytic", "taylor"]}, tmp_path)
    assert "in 2 runs the forward eigendecomposition returned λ_min ≤ 0" in text and "1 of them failed at step 0" in text
    assert "The other 1 failed at a later step" in text and "‖Σ‖ is not logged" in text
    assert "Forward failures" not in study.report(results.assign(run_lam_min=1e-4), {}, tmp_path)
    # analytic: 16 runs, 5 ok (d=4 seeds 3–7); taylor all 16 ok; one BatchNorm run
    assert study.summary(results) == "22/33 runs ok: analytic 5/16, taylor 16/16, BatchNorm 1/1"


def test_landmark_table_by_hand():
    """L = max(1, round(0.2 · steps)): 24 of 120 steps, 1 of 2. A failure at a step < L is left out
    (no lead time), at a step ≥ L it is y = 1, a failure without a step is left out as unknown; the
    BatchNorm run never enters; features are the early-window columns, log-transformed."""
    rows = [("ok", np.nan, 120, 1e3, 0), ("nonfinite-loss", 23, 120, 1e9, 2), ("nonfinite-loss", 24, 120, 1e5, 0),
            ("diverged", 119, 120, np.inf, 0), ("nonfinite-grad", np.nan, 120, 1e4, 0), ("ok", np.nan, 2, 10.0, 0),
            ("nonfinite-loss", 0, 2, 1e2, 0)]
    runs = pd.DataFrame([{"norm": "zca", "spec": "analytic", "d": 8, "dtype": "float32", "seed": i, "outcome": o, "step": st,
                          "steps_total": n, "early_max_K": k, "early_gap_events": ev} for i, (o, st, n, k, ev) in enumerate(rows)])
    runs = pd.concat([runs, pd.DataFrame([{"norm": "bn", "spec": "bn", "d": 0, "dtype": "float32", "seed": 9, "outcome": "ok",
                                           "step": np.nan, "steps_total": 120}])], ignore_index=True)
    table, left_out = study.landmark_table(runs, 0.2)
    assert left_out == {"failed_before": 2, "step_unknown": 1, "stopped_early": 0}  # no steps_done: none known stopped
    assert table["seed"].tolist() == [0, 2, 3, 5] and table["y"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert table["log10_max_K"].tolist() == pytest.approx([3.0, 5.0, 30.0, 1.0])  # +inf capped at 1e30
    assert table["log1p_gap_events"].tolist() == [0.0] * 4
    assert table["log10_bound"].isna().all()  # a column the results lack: left to the fold's imputation


# ------------------------------------------------------------------ the method spec is parsed once, at the edge
def _count_spec_entries(monkeypatch):
    """Counters on ``methods.parse`` and ``methods.bind`` (both the registry's names and _spec's):
    one entry per outermost call, attributed to the first caller outside ``stabkit/methods/``."""
    import sys

    from stabkit import methods
    from stabkit.methods import _spec

    entries, depth = [], [0]

    def origin() -> str:
        frame = sys._getframe(2)
        while frame is not None and "stabkit/methods/" in frame.f_code.co_filename.replace("\\", "/"):
            frame = frame.f_back
        return "?" if frame is None else frame.f_code.co_filename.replace("\\", "/")

    def counted(kind, real):
        def wrapper(*args, **kwargs):
            if depth[0]:
                return real(*args, **kwargs)
            entries.append((kind, origin()))
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    for kind in ("parse", "bind"):
        wrapped = counted(kind, getattr(_spec, kind))
        monkeypatch.setattr(_spec, kind, wrapped)
        monkeypatch.setattr(methods, kind, wrapped)
    return entries


def _below_the_edge(entries):
    """The parse/bind entries made below the edge (the counters are installed after the edge)."""
    return list(entries)


def test_a_training_step_parses_no_method_spec(synthetic, monkeypatch):
    from stabkit import methods

    spec = methods.spec("taylor:K=19")  # the edge (CLI option, study cell, Python call)
    entries = _count_spec_entries(monkeypatch)
    r = train_run({**SMALL, "method": spec, "max_steps": 1}, data=synthetic)
    assert r["outcome"] == "ok" and r["spec"] == "taylor:K=19" and r["method"] == "taylor"
    assert _below_the_edge(entries) == []


def test_a_study_cell_parses_its_spec_once(tiny_batches, monkeypatch):
    grid = {"methods": ["taylor:K=19"], "dims": [4], "dtypes": ["float32"], "seeds": 1, "bn_baseline": False,
            "max_steps": 1, "limit_images": 32, "limit_test": 16, "batch_size": 32, "width": 0.125,
            "data": str(tiny_batches), "device": "cpu"}
    (cell,) = study.cells(grid)
    entries = _count_spec_entries(monkeypatch)
    (row,) = study.run_cell(cell)
    assert row["outcome"] == "ok" and row["spec"] == "taylor:K=19"
    below = _below_the_edge(entries)
    assert [kind for kind, _ in below] == ["parse"] and below[0][1].endswith("stabkit/studies/zca_cifar10/__init__.py")


def test_the_cli_parses_the_method_once(monkeypatch):
    from stabkit.train import loop as train_loop

    seen = []
    monkeypatch.setattr(train_loop, "train_run", lambda config: seen.append(config) or (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(app, ["train", "--method", "clip:tau=50", "--max-steps", "1"])
    from stabkit import methods

    assert isinstance(seen[0]["method"], methods.Spec) and str(seen[0]["method"]) == "clip:tau=50"
    CliRunner().invoke(app, ["train", "--max-steps", "1"])  # no --method: the registry's training default
    assert seen[1]["method"] == methods.spec(methods.TRAIN_DEFAULT)


def test_cli_train_refuses_zca_options_with_the_batchnorm_baseline(monkeypatch):
    """--norm bn has no ZCA layer: --method, --d, --eps and --dtype were silently ignored (the run
    printed "BatchNorm: ok" whatever they said). Refused before training; bn alone still trains."""
    from stabkit.train import loop as train_loop

    seen = []
    monkeypatch.setattr(train_loop, "train_run", lambda config: seen.append(config) or (_ for _ in ()).throw(SystemExit(0)))
    for extra, named in ((["--method", "taylor"], "--method"), (["--d", "8", "--eps", "0.1"], "--d and --eps"),
                         (["--dtype", "float64"], "--dtype")):
        result = CliRunner().invoke(app, ["train", "--norm", "bn", *extra, "--max-steps", "1"])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [f"error: {named} set the ZCA layer; --norm bn (plain BatchNorm) has none"]
    assert not seen
    CliRunner().invoke(app, ["train", "--norm", "bn", "--max-steps", "1"])
    CliRunner().invoke(app, ["train", "--norm", "zca", "--d", "8", "--max-steps", "1"])
    assert [(c["norm"], c["d"]) for c in seen] == [("bn", 16), ("zca", 8)]


@pytest.mark.parametrize("study, setting, needle", [
    ("zca-cifar10-cpu-pilot", "lr=inf", "grid key 'lr' must be a finite number, got inf"),
    ("zca-cifar10-cpu-pilot", "max_steps=-1", "max_steps must be an integer in [0, 2^63 − 1]"),
    ("zca-cifar10-cpu-pilot", 'data="/nonexistent/cifar"', "no such file or folder"),
    ("zca-cifar10-survival", "lr=inf", "grid key 'lr' must be a finite number, got inf"),
    ("zca-cifar10-survival", "train_options={bogus=1}", "unknown training option"),
])
def test_a_training_study_s_bad_option_is_refused_before_its_first_cell(tmp_path, study, setting, needle):
    # the check (--max-cells 0) sees what the first cell would meet: one line, exit 2, nothing written
    path = Path(__file__).resolve().parents[1] / "studies" / f"{study}.toml"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--max-cells", "0", "--set", setting,
                                      "--no-progress"])
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert not list(tmp_path.rglob("results.parquet"))


@pytest.mark.parametrize("kind", ["zca_cifar10", "zca_cifar10_survival"])
def test_data_that_does_not_load_is_refused_before_the_first_cell(tmp_path, tiny_batches, kind):
    """A batch file cut short (or a damaged archive) passed the check and failed every cell alike
    (4 of 4 cells, exit 1); now the check loads both splits: one line naming the file, exit 2,
    nothing written. The same study on the intact folder passes the check."""
    grid = ('methods = ["analytic"]\ndims = [4]\nseeds = 1\nmax_steps = 1\n' if kind == "zca_cifar10" else
            'cells = [["analytic", 4]]\nseeds = 1\nseed_block = 1\nepochs = 1\n')
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nname = "s"\nkind = "{kind}"\n[grid]\n{grid}limit_images = 32\nlimit_test = 16\n'
                     f'batch_size = 32\nwidth = 0.125\ndata = "{tiny_batches}"\ndevice = "cpu"\n')
    def check(out):
        return CliRunner().invoke(app, ["run", str(study), "--out", str(out), "--max-cells", "0", "--no-progress"])

    assert check(tmp_path / "intact").exit_code == 0
    batch = tiny_batches / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    result = check(tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: data: ") and "data_batch_3" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not list((tmp_path / "out").rglob("results.parquet"))


def test_cli_train_out_of_memory_is_one_line_suggesting_a_smaller_run(monkeypatch):
    """`--width 1e9` on the CPU was a RuntimeError traceback ("can't allocate memory"); only an
    out-of-memory error is turned into exit 2, any other RuntimeError still raises."""

    errors = [RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 16000000000000 bytes."),
              torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), RuntimeError("a bug")]
    for error in errors:
        def train_run(config, error=error):
            raise error

        monkeypatch.setattr(loop, "train_run", train_run)
        result = CliRunner().invoke(app, ["train", "--width", "1e9", "--device", "cpu"])
        if "bug" in str(error):
            assert result.exit_code == 1 and result.exception is error
            continue
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: out of memory (") and "smaller --width or --batch-size" in lines[0]
