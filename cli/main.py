"""Entry point of the ``stabkit`` console script: one line per command module."""

import typer

from . import bench, compare, report, run
from . import train
from . import methods, monitor, watch
from ._common import OneLineErrors

#: a group's --help that is not given is False, not None: typer converts every option value that is not
#: already a bool through pydantic, whose import cost each subcommand's --help 0.12 s (so --version is a
#: plain bool flag too)
GROUP_CONTEXT = {"default_map": {"help": False}}

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=OneLineErrors, rich_markup_mode=None,
                  context_settings=GROUP_CONTEXT,
                  help=__doc__ and "stabkit: stability of differentiable eigendecomposition.")
app.command("compare")(compare.compare_command)
app.command("bench")(bench.bench_command)
app.command("run")(run.run_command)
app.command("report")(report.report_command)
app.command("train")(train.train_command)
app.command("watch", context_settings=watch.CONTEXT)(watch.watch_command)
app.add_typer(monitor.app, name="monitor", context_settings=GROUP_CONTEXT)
app.command("methods")(methods.methods_command)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=methods.print_version,
                                       help="Print the stabkit version and exit.")):
    """stabkit: stability of differentiable eigendecomposition."""


if __name__ == "__main__":
    app()
