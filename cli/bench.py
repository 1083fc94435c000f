"""``stabkit bench``: backward time of every method against torch.linalg.eigh's, in one run."""

from __future__ import annotations

import platform
import sys
import time
from typing import Optional

import typer

from ._common import user_errors


@user_errors
def bench_command(
    d: Optional[list[int]] = typer.Option(None, "--d", metavar="D", help="Matrix sizes (repeatable); default 4 16 64."),
    batch: int = typer.Option(64, "--batch", help="Matrices per batch."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    repeats: int = typer.Option(5, "--repeats", help="Timed rounds; each times every method once (interleaved, after one warm-up call)."),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m", metavar="METHOD", help="Methods (repeatable; default all); `stabkit methods` lists them."),
):
    """Time each method's batched torch backward; print a Markdown table with ratios to torch's (min/median/max over rounds)."""
    from stabkit import methods
    from stabkit._markdown import markdown_table
    from stabkit.bench import bench_methods, check_bench_args

    dims = d or [4, 16, 64]
    check_bench_args(dims, batch, dtype, device, repeats, method)
    specs = [methods.spec(m) for m in method] if method else None  # parsed once, here
    with _Progress(sys.stderr) as progress:
        table = bench_methods(dims, batch, dtype, device, repeats, specs, progress=progress.update)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}; batch {batch}, {dtype}, {device}; "
          f"{repeats} interleaved round(s) after a warm-up call per method: backward_ms = median, "
          f"ratio_to_torch = median (ratio_min/ratio_max = spread) of the per-round ratio")
    print(markdown_table(table))


class _Progress:
    """Backward calls done, on stderr: a rich bar on a terminal, else a line per matrix size and at
    least one every 30 s."""

    def __init__(self, stream):
        self.stream, self.d, self.start, self.last = stream, None, time.monotonic(), time.monotonic()
        self.bar = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("bench d = {task.fields[d]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("backward calls"), TimeElapsedColumn(), transient=True,
                                console=Console(file=stream))
            self.task = self.bar.add_task("bench", total=None, d="…")

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def update(self, d: int, done: int, total: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, total=total, d=d)
            return
        now = time.monotonic()
        if d != self.d or now - self.last >= 30 or done == total:
            self.d, self.last = d, now
            print(f"bench: d = {d}, {done}/{total} backward calls, {now - self.start:.0f} s elapsed",
                  file=self.stream, flush=True)
