"""``stabkit compare``: every gradient method on one matrix, scored against the certified truth."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from stabkit import spectra
from stabkit.compare import ROW_KEYS, compare
from stabkit.losses import LOSSES

from ._common import parse_params, user_errors


class Format(str, Enum):
    table = "table"
    json = "json"


@user_errors
def compare_command(
    matrix: Optional[Path] = typer.Option(None, "--matrix", help="A .npy file holding a symmetric matrix."),
    spectrum: str = typer.Option("cluster", "--spectrum", help=f"Generated family: {', '.join(spectra.FAMILIES)}."),
    d: int = typer.Option(8, "--d", help="Matrix size for --spectrum."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated matrix and of the loss weight."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Family parameter NAME=VALUE (repeatable), e.g. -p delta=1e-8."),
    loss: str = typer.Option("zca", "--loss", help=f"Probe loss: {', '.join(LOSSES)}."),
    k: int = typer.Option(1, "--k", help="Rank of the projector loss."),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m", help="Method spec, repeatable (default all), e.g. taylor:K=19,eps=1e-4."),
    dtype: str = typer.Option("float64", "--dtype", help="float32 or float64."),
    loss_weight: Optional[Path] = typer.Option(None, "--loss-weight", help="A .npy d×d weight G replacing the seeded one."),
    fmt: Format = typer.Option(Format.table, "--format", help="table, or json (one object per method per line)."),
):
    """Compare gradient methods on one matrix against the mpmath/flint ground truth."""
    if matrix is not None:
        A = _load_npy(matrix, "matrix")
        source = str(matrix)
    else:
        built = spectra.make(spectrum, d, seed=seed, **parse_params(param))
        A, source = built.matrix, f"{spectrum} d={d} seed={seed} {built.params}"
    weight = _load_npy(loss_weight, "loss weight") if loss_weight is not None else None
    with Console(stderr=True).status(f"certified ground truth and {len(method or []) or 'all'} methods, d = {A.shape[-1]} …"):
        result = compare(A, loss, method, dtype=dtype, seed=seed, weight=weight, k=k)
    if fmt is Format.json:
        for row in result.rows:
            print(json.dumps({"method": row["method"], **{key: _jsonable(row[key]) for key in ROW_KEYS}}))
        return
    _print_table(result, source, loss, dtype)


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} file {path} as .npy: {exc}") from None


def _jsonable(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def _print_table(result, source: str, loss: str, dtype: str) -> None:
    console = Console()
    truth = result.truth
    status = "certified" if truth.certified else "NOT CERTIFIED — treat numbers with care"
    if getattr(truth, "note", ""):
        status += f"; {truth.note}"
    table = Table(title=f"{source} · loss={loss} · {dtype}")
    d = len(truth.eigenvalues)
    width = max(len(row["method"]) for row in result.rows)
    table.add_column("method", justify="left", no_wrap=True, min_width=width)
    for col in ("angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds"):
        table.add_column(col, justify="right", overflow="fold")
    for row in result.rows:
        table.add_row(
            row["method"], f"{row['angle_deg']:.3g}", f"{row['angle_full_deg']:.3g}",
            f"{row['kept']}/{d}" if row["kept"] >= 0 else "—", f"{row['rel_err']:.3g}", f"{row['norm_ratio']:.3g}",
            "yes" if row["finite"] else "NO", f"{row['seconds']:.4f}",
        )
    console.print(table)
    if any(0 <= row["kept"] < d for row in result.rows):
        console.print("angle_deg: against the truth of the function the method computes (the loss restricted to "
                      "its kept eigenpairs); angle_full_deg: against the untruncated loss's truth.")
    diag = result.diagnostics
    console.print(
        f"ground truth: {truth.digits:.1f} digits ({status}), engine {truth.engine}, {truth.seconds:.2f} s · "
        f"min rel gap {diag['min_rel_gap']:.3g}, max|K̃| {diag['max_abs_K']:.3g}, condition {diag['condition']:.3g}"
    )
    for row in result.rows:
        if "error" in row:
            console.print(f"[yellow]{row['method']}: {row['error']}[/yellow]")
