"""``stabkit bench``: backward time of every method against torch.linalg.eigh's, in one run."""

from __future__ import annotations

import platform
from typing import Optional

import typer

from ._common import user_errors
from .methods import method_names


@user_errors
def bench_command(
    d: Optional[list[int]] = typer.Option(None, "--d", help="Matrix sizes (repeatable); default 4 16 64."),
    batch: int = typer.Option(64, "--batch", help="Matrices per batch."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    repeats: int = typer.Option(5, "--repeats", help="Timed rounds; each times every method once (interleaved, after one warm-up call)."),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m", help=f"Methods (repeatable); default all: {method_names()}."),
):
    """Time each method's batched torch backward; print a Markdown table with ratios to torch's (min/median/max over rounds)."""
    from stabkit import methods
    from stabkit._markdown import markdown_table
    from stabkit.bench import bench_methods, check_bench_args

    dims = d or [4, 16, 64]
    check_bench_args(dims, batch, dtype, device, repeats)
    specs = [methods.spec(m) for m in method] if method else None  # parsed once, here
    table = bench_methods(dims, batch, dtype, device, repeats, specs)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}; batch {batch}, {dtype}, {device}; "
          f"{repeats} interleaved round(s) after a warm-up call per method: backward_ms = median, "
          f"ratio_to_torch = median (ratio_min/ratio_max = spread) of the per-round ratio")
    print(markdown_table(table))
