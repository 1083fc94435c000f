"""``stabkit train``: one ZCA-BN (or BatchNorm) ResNet-18 training run on CIFAR-10; prints the outcome."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ._common import user_errors
from .methods import method_names


@user_errors
def train_command(
    method: str = typer.Option("taylor", "--method", "-m", help=f"Backward method spec, e.g. taylor or 'taylor:K=19'; one of {method_names()}."),
    d: int = typer.Option(16, "--d", help="ZCA group size (divides 64)."),
    norm: str = typer.Option("zca", "--norm", help="zca or bn (plain BatchNorm baseline)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Training epochs (fractions allowed)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many SGD steps."),
    limit_images: Optional[int] = typer.Option(None, "--limit-images", help="Train on a random subset of this size."),
    limit_test: Optional[int] = typer.Option(None, "--limit-test", help="Test images (default: all, or --limit-images)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(0.1, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    data: Optional[str] = typer.Option(None, "--data", help="CIFAR-10 .tar.gz or cifar-10-batches-py folder."),
    dtype: str = typer.Option("float32", "--dtype", help="ZCA computation dtype: float32 or float64."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    width: float = typer.Option(1.0, "--width", help="Channel-width multiplier (1 = ResNet-18)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
):
    """Train once and print the outcome (ok / eigh-failed / nonfinite-loss / nonfinite-grad / diverged)."""
    from stabkit.methods import parse_spec
    from stabkit.train.loop import train_run

    name, params = parse_spec(method)
    config = {"method": name, "params": params, "d": d, "norm": norm, "epochs": epochs, "max_steps": max_steps,
              "limit_images": limit_images, "limit_test": limit_test, "batch_size": batch_size, "lr": lr, "seed": seed,
              "data": data, "dtype": dtype, "device": device, "width": width}
    result = train_run(config)
    if as_json:
        print(json.dumps(result, default=float, indent=1))
        return
    what = f"{result['spec']} d={d} {dtype}" if norm == "zca" else "BatchNorm"
    detail = f"test error {result['test_error']:.4f}" if result["outcome"] == "ok" else f"at step {result['step']}"
    print(f"{what}: {result['outcome']} ({detail}); {result['steps_done']}/{result['steps_total']} steps in "
          f"{result['wall_s']:.1f} s on {result['device']}")
    print(f"early diagnostics: max|K̃| {result['early_max_K']:.3g}, min gap {result['early_min_gap']:.3g}, "
          f"gap events {result['early_gap_events']}, method bound {result['early_max_bound']:.3g}, "
          f"non-finite events {result['early_nonfinite_events']}")
