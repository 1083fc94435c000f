"""Entry point of the ``stabkit`` console script: one line per command module."""

import typer

from . import bench, compare, report, run
from . import train
from . import monitor, watch

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__ and "stabkit: stability of differentiable eigendecomposition.")
app.command("compare")(compare.compare_command)
app.command("bench")(bench.bench_command)
app.command("run")(run.run_command)
app.command("report")(report.report_command)
app.command("train")(train.train_command)
app.command("watch", context_settings=watch.CONTEXT)(watch.watch_command)
app.add_typer(monitor.app, name="monitor")

if __name__ == "__main__":
    app()
