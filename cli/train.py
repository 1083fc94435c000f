"""``stabkit train``: one ZCA-BN (or BatchNorm) ResNet-18 training run on CIFAR-10; prints the outcome."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ._common import given_options, user_errors


@user_errors
def train_command(
    ctx: typer.Context,
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Backward method spec NAME[:KEY=VALUE,...], e.g. "
                                         "taylor:K=19 (default: a bounded rule, the one `stabkit methods` marks as stabkit train's); "
                                         "`stabkit methods` lists the names and their parameters."),
    d: int = typer.Option(16, "--d", help="ZCA group size (divides 64)."),
    norm: str = typer.Option("zca", "--norm", help="zca or bn (plain BatchNorm baseline)."),
    preset: str = typer.Option("stabkit", "--preset", help="stabkit (today's layer) or paper (the authors' layers "
                               "per method, their init, std, StepLR schedule, NaN-loss stop); paper-svd-head: paper "
                               "with the later truncated SVD baseline."),
    eps: Optional[float] = typer.Option(None, "--eps", help="ZCA εI (default: the preset's, per method for paper)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs, fractions allowed (default: the "
                                           "preset's: stabkit 1, paper 350)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many SGD steps (default: no cap)."),
    limit_images: Optional[int] = typer.Option(None, "--limit-images", help="Train on a random subset of this size (default: all)."),
    limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Test images (default: all, or --limit-images)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Training images per SGD step."),
    lr: float = typer.Option(0.1, "--lr", help="Initial SGD learning rate."),
    milestones: Optional[str] = typer.Option(None, "--milestones", help="lr ×gamma at these points, comma-separated "
                                             "(default: the preset's: stabkit 0.5,0.75 of the steps; paper 100,200,300 epochs)."),
    milestone_unit: Optional[str] = typer.Option(None, "--milestone-unit", help="fraction (of the steps), epoch or step (default: the preset's: stabkit fraction, paper epoch)."),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="lr factor at each milestone (default 0.1)."),
    stop_on: Optional[str] = typer.Option(None, "--stop-on", help="any (stop at the first failure event) or nan-loss "
                                          "(the paper's: train on until the loss is NaN). Default: the preset's."),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="TF32 matmuls/convolutions on CUDA (default: "
                                        "stabkit leaves torch's setting, paper turns it off)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and of the data order."),
    data: Optional[str] = typer.Option(None, "--data", help="CIFAR-10 .tar.gz or cifar-10-batches-py folder (default: $STABKIT_CIFAR10, else ../shared/data/cifar10-jpeg.tar.gz)."),
    dtype: str = typer.Option("float32", "--dtype", help="ZCA computation dtype: float32 or float64."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    width: float = typer.Option(1.0, "--width", help="Channel-width multiplier (1 = ResNet-18)."),
    fast: bool = typer.Option(False, "--fast/--no-fast", help="Fast path: bf16 autocast for the trunk (the ZCA layer "
                              "keeps --dtype), channels_last, device-side checks read back every 100 steps."),
    compile_mode: Optional[str] = typer.Option(None, "--compile", help="torch.compile the trunk after the ZCA layer: "
                                               "default, reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs "
                                               "(torch.compile's modes); default: not compiled."),
    eval_every: int = typer.Option(1, "--eval-every", help="Test accuracy every N epochs (0: only at the end)."),
    check_every: Optional[int] = typer.Option(None, "--check-every", help="Read the failure checks back every N steps "
                                              "(default 10, fast 100); the failing step is exact either way."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
):
    """Train once and print the outcome (ok / eigh-failed / nonfinite-loss / nonfinite-grad / diverged)."""
    from stabkit import methods
    from stabkit.train.loop import train_run

    zca_only = given_options(ctx, (("--method", "method"), ("--d", "d"), ("--eps", "eps"), ("--dtype", "dtype")))
    if norm == "bn" and zca_only:  # the BatchNorm baseline has no ZCA layer: they were silently ignored
        raise ValueError(f"{' and '.join(zca_only)} set the ZCA layer; --norm bn (plain BatchNorm) has none")
    spec = methods.spec(methods.TRAIN_DEFAULT if method is None else method)  # the CLI edge: parsed once, the run carries the Spec
    parsed_milestones = None
    if milestones is not None:
        try:
            parsed_milestones = tuple(float(m) for m in milestones.split(",") if m.strip())
        except ValueError:
            raise ValueError(f"--milestones must be comma-separated numbers, got {milestones!r}") from None
    config = {"method": spec, "d": d, "norm": norm, "epochs": epochs, "max_steps": max_steps,
              "limit_images": limit_images, "limit_test": limit_test, "batch_size": batch_size, "lr": lr, "seed": seed,
              "data": data, "dtype": dtype, "device": device, "width": width, "preset": preset, "eps": eps,
              "milestones": parsed_milestones, "milestone_unit": milestone_unit, "gamma": gamma, "stop_on": stop_on,
              "tf32": tf32, "fast": fast, "compile": compile_mode, "eval_every": eval_every, "check_every": check_every}
    try:
        result = train_run(config)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(exc):
            raise
        raise ValueError(f"out of memory ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}): "
                         "try a smaller --width or --batch-size") from None
    if as_json:
        print(json.dumps(result, default=float, indent=1))
        return
    what = f"{result['spec']} d={d} {dtype}" if norm == "zca" else "BatchNorm"
    detail = f"test error {result['test_error']:.4f}" if result["outcome"] == "ok" else f"at step {result['step']}"
    print(f"{what}: {result['outcome']} ({detail}); {result['steps_done']}/{result['steps_total']} steps in "
          f"{result['wall_s']:.1f} s on {result['device']}")
    nan = "none" if result["nan_loss_step"] is None else f"at step {result['nan_loss_step']}"
    print(f"paper criterion (NaN loss): {result['paper_outcome']} (NaN loss {nan}); preset {result['preset']}, "
          f"ε {result['eps'] if result['eps'] is None else format(result['eps'], 'g')}, lr {result['lr']:g} ×{result['gamma']:g} "
          f"at steps [{result['milestone_steps']}], std ({result['input_std']}), TF32 "
          f"{'on' if result['tf32_matmul'] else 'off'}/{'on' if result['tf32_cudnn'] else 'off'} (matmul/cudnn)")
    for e in result["epoch_log"]:
        print(f"epoch {e['epoch']} (step {e['step']}): loss {_fmt(e['train_loss'])}, test acc {_fmt(e['test_acc'])}, "
              f"|conv1| {_fmt(e['conv1_weight_norm'])}" + ("" if e["lam_min"] is None and e["lam_max_over_eps"] is None else
              f", λmax/ε {_fmt(e['lam_max_over_eps'])}, λmin {_fmt(e['lam_min'])}, min rel gap {_fmt(e['min_rel_gap'])}, "
              f"max|K̃| {_fmt(e['max_abs_K'])}, non-finite {e['nonfinite_events']}"))
    print(f"early diagnostics: max|K̃| {result['early_max_K']:.3g}, min gap {result['early_min_gap']:.3g}, "
          f"gap events {result['early_gap_events']}, method bound {result['early_max_bound']:.3g}, "
          f"non-finite events {result['early_nonfinite_events']}")


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: torch's OutOfMemoryError, Python's MemoryError, or the
    CPU allocator's RuntimeError ("can't allocate memory")."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(exc, (MemoryError, oom)) or "can't allocate memory" in str(exc)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"
