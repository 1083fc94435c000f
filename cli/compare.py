"""``stabkit compare``: every gradient method on one matrix, scored against the certified truth."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from stabkit._choices import FAMILY_NAMES, LOSSES

from ._common import given, given_options, parse_params, user_errors


class Format(str, Enum):
    table = "table"
    json = "json"


@user_errors
def compare_command(
    ctx: typer.Context,
    matrix: Optional[Path] = typer.Option(None, "--matrix", help="A .npy file holding a symmetric matrix, float32 or float64 (symmetric within √eps·max|A| of its dtype, then symmetrised exactly; default: a --spectrum matrix)."),
    spectrum: str = typer.Option("cluster", "--spectrum", help=f"Generated family: {', '.join(FAMILY_NAMES)}."),
    d: int = typer.Option(8, "--d", help="Matrix size for --spectrum."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated matrix and of the loss weight."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", metavar="NAME=VALUE", help="Family parameter NAME=VALUE (repeatable; default: the family's), e.g. -p delta=1e-8."),
    loss: str = typer.Option("zca", "--loss", help=f"Probe loss: {', '.join(LOSSES)}."),
    k: int = typer.Option(1, "--k", help="Rank of the projector loss."),
    method: Optional[list[str]] = typer.Option(
        None, "--method", "-m", metavar="METHOD",
        help="Method spec NAME[:KEY=VALUE,...], repeatable (default all), e.g. taylor:K=19,eps=1e-4; "
             "`stabkit methods` lists the names and their parameters."),
    dtype: str = typer.Option("float64", "--dtype", help="float32 or float64."),
    loss_weight: Optional[Path] = typer.Option(None, "--loss-weight", help="A .npy d×d weight G (default: one drawn from --seed)."),
    fmt: Format = typer.Option(Format.table, "--format", help="table, or json (one object per method per line)."),
    force: bool = typer.Option(False, "--force", help="Run even when the certified truth is estimated to take long."),
):
    """Compare gradient methods on one matrix against the mpmath/flint ground truth."""
    from rich.console import Console

    from stabkit import methods, spectra
    from stabkit.compare import check_truth_cost, compare, truth_cost
    from stabkit.errors import InputError
    from stabkit.validation import check_dtype_name, check_symmetric

    check_dtype_name(dtype)  # as `stabkit bench`: float32 or float64, never a numpy alias, is what the output records
    if loss != "projector" and given(ctx, "k"):  # the rank of the projector loss: any other loss ignored it
        raise ValueError(f"--k is the rank of the projector loss; it does not apply to --loss {loss}")
    specs = _method_specs(method)
    compared = specs or [methods.spec(name) for name in methods.NAMES]
    if matrix is not None:
        shaping = given_options(ctx, (("--spectrum", "spectrum"), ("-p/--param", "param"), ("--d", "d")))
        if shaping:  # they shape a generated matrix only: with --matrix they were silently ignored
            raise ValueError(f"{' and '.join(shaping)} only appl{'y' if len(shaping) > 1 else 'ies'} to a generated matrix, not to --matrix {matrix}")
        A = check_symmetric(_load_npy(matrix, "matrix"), "matrix")
        source = str(matrix)
        check_truth_cost(A.shape[-1], force, specs=compared)
    else:
        if d < 2:  # every family needs d ≥ 2; check_truth_cost's "d ≥ 1" is the bound of a --matrix
            raise InputError(f"--d {d}: a generated matrix needs d ≥ 2 (give a 1×1 matrix with --matrix)")
        check_truth_cost(d, force, specs=compared)
        built = spectra.make(spectrum, d, seed=seed, **parse_params(param))
        A, source = built.matrix, built.label
    weight = _load_npy(loss_weight, "loss weight") if loss_weight is not None else None
    size = A.shape[-1]
    seconds, _ = truth_cost(size, compared)
    eta = f" (truth estimated ~{_duration(seconds)})" if seconds > 10 else ""
    with Console(stderr=True).status(f"certified ground truth and {len(specs or []) or 'all'} methods, d = {size}{eta} …"):
        result = compare(A, loss, specs, dtype=dtype, seed=seed, weight=weight, k=k)
    if fmt is Format.json:
        for row in json_rows(result, source, loss, dtype):
            print(json.dumps(row))
        return
    _print_table(result, source, loss, dtype)


def _method_specs(method):
    """Parse every ``--method`` once, before any work (a bad spec fails in a second, not after the truth);
    the same method given twice (``taylor`` and ``taylor:K=9`` are one method) is an error."""
    from stabkit import methods

    if not method:
        return None
    given: dict = {}
    for text in method:
        spec = methods.spec(text)
        if spec in given:
            raise ValueError(f"--method {spec} is given twice (as {given[spec]!r} and {text!r})")
        given[spec] = text
    return list(given)


def _load_npy(path: Path, what: str):
    import numpy as np

    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a folder, not a .npy file")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic and not magic.startswith((b"\x93NUMPY", b"PK")):  # the .npy header / a zip (.npz)
        raise ValueError(f"{what} file {path} is not a .npy file (no .npy header): save the matrix with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        detail = "the file is empty" if isinstance(exc, EOFError) or path.stat().st_size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot read {what} file {path} as .npy: {detail}") from None
    except MemoryError as exc:  # its header declares more than memory holds: a damaged header, or a matrix too big
        raise ValueError(f"cannot read {what} file {path} as .npy: {exc} (the file holds {path.stat().st_size} bytes)") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ValueError(f"{what} file {path} is an .npz archive; save a single array with numpy.save")
    if array.ndim != 2:
        raise ValueError(f"{what} in {path} must be a 2-D square matrix, got shape {array.shape}")
    return array


def json_rows(result, source: str, loss: str, dtype: str) -> list[dict]:
    """One JSON object per method with everything the table shows: the method's scores and error,
    the truth's certified digits, engine and time, and the spectrum's gap diagnostics."""
    truth, diag = result.truth, result.diagnostics
    shared = {"matrix": source, "loss": loss, "dtype": dtype,
              "truth_digits": _jsonable(truth.digits), "truth_certified": bool(truth.certified),
              "truth_engine": truth.engine, "truth_seconds": _jsonable(truth.seconds),
              **{key: _jsonable(value) for key, value in diag.items()}}
    from stabkit.compare import ROW_KEYS

    # the row's own truth_digits are those of the truth its angle_deg is measured against (for a
    # truncating or iterating method, its own function's); "truth_digits" is the untruncated truth's
    return [{"method": row["method"], **{key: _jsonable(row[key]) for key in ROW_KEYS if key != "truth_digits"},
             "angle_truth_digits": _jsonable(row.get("truth_digits", truth.digits)),
             "error": row.get("error"), **shared} for row in result.rows]


def _jsonable(value):
    """JSON has no NaN/Infinity: NaN → null, ±inf → the strings "inf"/"-inf"."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):  # numpy ints, no numpy import
        return int(value)
    value = float(value)
    if math.isnan(value):
        return None
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _print_table(result, source: str, loss: str, dtype: str) -> None:
    from rich.console import Console

    console = Console()
    truth = result.truth
    status = "certified" if truth.certified else "NOT CERTIFIED — treat numbers with care"
    if getattr(truth, "note", ""):
        status += f"; {truth.note}"
    title = f"{source} · loss={loss} · {dtype}"
    d = len(truth.eigenvalues)
    cells = [_cells(row, d) for row in result.rows]
    table = _table(title, cells)
    if _natural_width(console, table) <= console.width:
        console.print(table)
    else:  # too narrow for the table: one block per method, never a number cut in two
        console.print(title, highlight=False)
        for row in cells:
            console.print(row[0], highlight=False)
            console.print("  " + "  ".join(f"{key}={value}" for key, value in zip(TABLE_KEYS[1:], row[1:])), highlight=False)
    if any(0 <= row["kept"] < d or row["angle_deg"] != row["angle_full_deg"] for row in result.rows
           if row["angle_deg"] == row["angle_deg"]):
        console.print("angle_deg: against the truth of the function the method computes (the loss restricted to "
                      "its kept eigenpairs, or at the (λ̂, Û) its power-iteration forward returns); angle_full_deg: "
                      "against the exact, untruncated loss's truth.")
    diag = result.diagnostics
    console.print(
        f"ground truth: {truth.digits:.1f} digits ({status}), engine {truth.engine}, {truth.seconds:.2f} s · "
        f"min rel gap {diag['min_rel_gap']:.3g}, max|K̃| {diag['max_abs_K']:.3g}, condition {diag['condition']:.3g}"
    )
    for row in result.rows:
        if "error" in row:
            console.print(f"[yellow]{row['method']}: {row['error']}[/yellow]")


#: the table's columns, in order (the JSON keys of the same numbers)
TABLE_KEYS = ("method", "angle_deg", "angle_full_deg", "kept", "rel_err", "norm_ratio", "finite", "seconds")


def _cells(row, d: int) -> list[str]:
    return [row["method"], f"{row['angle_deg']:.3g}", f"{row['angle_full_deg']:.3g}",
            f"{row['kept']}/{d}" if row["kept"] >= 0 else "—", f"{row['rel_err']:.3g}", f"{row['norm_ratio']:.3g}",
            "yes" if row["finite"] else "NO", f"{row['seconds']:.4f}"]


def _table(title: str, cells: list[list[str]]):
    """No cell ever wraps (a wrapped ``2.36e-10`` reads as ``2.36e-1``); headers break at ``_`` and
    columns are two spaces apart, so every method at d < 10 fits 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for key in TABLE_KEYS:
        header = key.replace("_deg", "_\ndeg").replace("_ratio", "_\nratio").replace("angle_full_\n", "angle_\nfull_")
        table.add_column(header, justify="left" if key == "method" else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    return table


def _natural_width(console, table) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(1 << 20), table).maximum
