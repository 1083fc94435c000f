"""Figure plumbing shared by the study reports: pyplot on the Agg backend, saving (and closing) a
figure, and a plain-text log axis."""

from __future__ import annotations

import pathlib


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (reports are written, not shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` and release it; the file's name (for the report's list of figures)."""
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return pathlib.Path(path).name


def plain_log(axis, decades) -> None:
    """A log axis with ticks at the given powers of ten, labelled as plain text ("1e-06"): the
    default 10^k labels go through mathtext, the slowest part of drawing these figures."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator([10.0 ** k for k in decades]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")))
    axis.set_minor_locator(NullLocator())
