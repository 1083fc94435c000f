"""``stabkit monitor report DIR``: what the monitor's logs say, per call site, and what to do.

For every call site (file:line × function) of every log in DIR: a PNG of the per-step timelines
(smallest relative gap, max|K̃|, λ_min, gradient norms, non-finite events and errors, the first
bad step marked) and a Markdown section with the numbers and the rules that fired. Each rule
cites the finding of this project it rests on (README, "Training and the instability monitor";
``reports/zca-cifar10``) and says no more than that finding supports.

The first bad step of a site is the first step with an error, a non-finite value, or λ_min ≤ 0
at a positive-definite site: one whose λ_min > 0 at half or more of its calls with a λ_min (a
covariance, as in ZCA or covariance pooling; a site that is indefinite by design, or an svd, is
never flagged for λ_min). Half counts, so a covariance that stays bad from its midpoint is flagged.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import methods
from .._io import storage_errors, write_text_atomic
from ..errors import InputError
from ..validation import DTYPE_NAMES
from ..layers.matrix_functions import DK_BACKWARD
from .log import read_log

#: relative gap under which a call counts as a gap event (the ZCA study's threshold)
GAP_EVENT = 1e-5

#: why a Daleckii–Krein site gets no backward-rule advice (it is never swapped)
#: calls whose backward is the eigenvalues' alone (no eigenvector rule, no 1/(λ_i − λ_j))
VALUES_ONLY = {"eigvalsh", "svdvals"}
VALUES_EVIDENCE = ("∂λ_i/∂A = u_i u_iᵀ for a simple eigenvalue (first-order perturbation theory), and eigenvalues are "
                   "1-Lipschitz in A even at ties (Weyl's inequality): small gaps do not enlarge this gradient; "
                   "this needs no study.")
DK_EVIDENCE = ("Its coefficients are divided differences of g (Daleckii–Krein; Higham, \"Functions of Matrices\", "
               "2008, Thm. 3.11), bounded by max|g'| between the eigenvalues: small gaps do not enlarge them, "
               "and a swap of the eigen-backward does not apply to them; this needs no study.")


def _method_of(backward: str) -> methods.Method | None:
    """The registered method a logged ``backward`` label names (``name`` or ``name:params``), or
    None for a label that is not a method (``values``, an invalid spec)."""
    return methods.REGISTRY.get(str(backward).split(":")[0])


def _caveated() -> list[methods.Method]:
    """The methods with a :class:`~stabkit.methods.Caveat`: warnings first, then registry order."""
    found = [m for m in methods.REGISTRY.values() if m.caveat is not None]
    return sorted(found, key=lambda m: not m.caveat.warning)


@dataclass
class Finding:
    rule: str
    step: int | None
    what: str        # what the log shows
    action: str      # what to do
    evidence: str    # the project finding behind the action


class EmptyLogWarning(UserWarning):
    """A monitor log with no rows was skipped."""


def load_logs(folder) -> pd.DataFrame:
    """Every ``*.csv`` / ``*.parquet`` monitor log in ``folder`` (not recursive), column ``log`` its stem (its name
    where two share one: a.csv, a.parquet are two runs); an empty log (a rank killed before its first flush) is skipped, warned."""
    folder = Path(folder)
    if folder.is_file():  # e.g. one of the logs: the report reads the folder that holds them
        raise ValueError(f"{folder} is a file, not a folder: give the folder of monitor logs (e.g. {folder.parent})")
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".parquet") and p.is_file())
    if not files:
        raise ValueError(f"no monitor log (.csv or .parquet) in {folder}: run `stabkit watch --log {folder} -- python train.py` first")
    frames, empty, stems = [], [], [p.stem for p in files]
    for path in files:
        try:
            df = read_log(path)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 — name the file that is not a monitor log
            raise ValueError(f"{path} is not a readable monitor log ({type(exc).__name__}: {exc})") from None
        if df.empty:
            empty.append(path.name)
        else:
            frames.append(df.assign(log=path.stem if stems.count(path.stem) == 1 else path.name))
    if not frames:
        raise ValueError(f"the monitor logs in {folder} hold no calls yet ({', '.join(empty)} empty)")
    if empty:
        warnings.warn(f"skipped empty monitor log(s) in {folder}: {', '.join(empty)}", EmptyLogWarning, stacklevel=2)
    return pd.concat(frames, ignore_index=True)


def _natural(key) -> tuple:
    """A sort key for text (or a tuple of texts) in which runs of digits compare as numbers: site
    x.py:9 before x.py:10, log eig-rank2 before eig-rank10 (as text, "10" < "9")."""
    if isinstance(key, tuple):
        return tuple(_natural(part) for part in key)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"([0-9]+)", str(key))))  # odd: the digits


def _positive_calls(g: pd.DataFrame) -> tuple[int, int]:
    """(calls with λ_min > 0, calls with a λ_min): a raised or empty call has none."""
    lam = g["lam_min"].dropna()
    return int((lam > 0).sum()), len(lam)


def _positive_site(g: pd.DataFrame) -> bool:
    """λ_min > 0 at half or more of the calls with a λ_min (integers: exactly half counts), not svd."""
    positive, measured = _positive_calls(g)
    return measured > 0 and 2 * positive >= measured and not g["fn"].str.contains("svd").all()


def bad_steps(g: pd.DataFrame) -> pd.Series:
    """Boolean per row: error, non-finite value, or λ_min ≤ 0 at a positive-definite site."""
    bad = g["error"].ne("") | g["nonfinite"]
    if _positive_site(g):
        bad = bad | (g["lam_min"] <= 0)
    return bad


def findings(g: pd.DataFrame) -> list[Finding]:
    """The rules that fire on one call site's rows (see the module doc)."""
    out: list[Finding] = []
    backward = ", ".join(sorted(set(g["backward"])))
    n = int(g["n"].max()) if len(g) else 0
    positive = _positive_site(g)
    positive_calls, measured_calls = _positive_calls(g)

    def first(mask):
        return int(g.loc[mask, "step"].min()) if mask.any() else None

    errors = g["error"].ne("")
    input_bad = g["input_nonfinite"]
    grad_out_bad = g["grad_norm"].notna() & ~np.isfinite(g["grad_norm"].fillna(0.0))
    grad_in_bad = g["grad_in_norm"].notna() & ~np.isfinite(g["grad_in_norm"].fillna(0.0)) & ~input_bad & ~grad_out_bad
    made_here = first(grad_in_bad)
    upstream = first(input_bad)

    if positive:
        for dtype, evidence in (
            ("float32", "In this project's ZCA study (reports/zca-cifar10), 83 of the 107 failed runs had a forward "
                        "λ_min ≤ 0 of Σ + εI in float32, which makes λ^(-1/2) NaN whatever the backward rule; "
                        "no float64 run had λ_min ≤ 0."),
            ("float64", "The ZCA study never saw λ_min ≤ 0 in float64, so this project has no measured fix for this "
                        "case; the input is not positive definite at working precision."),
            *((other, "Logged by the monitor; no study in this project measured this case.")  # complex covariances
              for other in sorted(set(g["dtype"]) - set(DTYPE_NAMES))),
        ):
            mask = (g["dtype"] == dtype) & (g["lam_min"] <= 0)
            if mask.any():
                action = ("Compute this matrix and its decomposition in float64 (e.g. `ZCAWhitening(dtype=\"float64\")`), "
                          "or add a larger ε to its diagonal; a different backward rule does not change the forward."
                          if dtype == "float32" else
                          "Add a larger ε to the diagonal or check what makes the matrix lose definiteness.")
                out.append(Finding(f"lam_min≤0 ({dtype})", first(mask),
                                   f"λ_min ≤ 0 in {int(mask.sum())} of {int((g['dtype'] == dtype).sum())} {dtype} calls "
                                   f"(smallest {g.loc[mask, 'lam_min'].min():.3g}) at a site taken as positive definite: λ_min > 0 "
                                   f"at {positive_calls} of {measured_calls} calls (half or more).",
                                   action, evidence))
    if errors.any():
        row = g.loc[errors].iloc[0]
        cause = ("its input already held NaN/Inf, so the cause lies before this call"
                 if row["input_nonfinite"] else "its input was finite")
        out.append(Finding("call raised", int(row["step"]), f"{int(errors.sum())} call(s) raised; the first: `{row['error']}` ({cause}).",
                           "Find what made the input non-finite (the rows before it, the learning rate, a layer upstream); "
                           "a backward rule cannot repair a forward input." if row["input_nonfinite"] else
                           "Read the error: a finite input that fails to decompose usually has (nearly) repeated eigenvalues "
                           "in float32; try float64.",
                           "Logged by the monitor; no study in this project measured this case." if not row["input_nonfinite"] else
                           "A NaN/Inf input makes every eigensolver's output NaN or an error; this needs no study."))
    dk = bool(g["backward"].eq(DK_BACKWARD).all())
    gradient_made_here = made_here is not None and (upstream is None or made_here < upstream)
    if gradient_made_here:
        inf_k = not dk and bool(np.isinf(g.loc[grad_in_bad, "max_K"]).any())
        bounded = any(m is not None and m.bounded for m in map(_method_of, g["backward"]))
        if dk:
            action = ("This backward is the exact derivative of g(A) and is infinite only where g' is "
                      "(an eigenvalue ≤ 0 for log, = 0 for √ or x^p with p < 1; see λ_min): add a larger ε "
                      "to the diagonal or compute in float64. --swap-backward does not change it.")
            evidence = DK_EVIDENCE
        elif not bounded:
            if set(g["fn"]) == {"eigh"}:
                action = ("Use a bounded backward rule: `stabkit watch --swap-backward taylor` (or "
                          "`stabkit.torch.eigh(A, \"taylor\")` / `\"clip\"` in the layer).")
            else:  # --swap-backward reroutes torch.linalg.eigh alone: not svd, eigvalsh or a stabkit.torch call
                fn = str(g["fn"].iloc[0]).removeprefix("stabkit.torch.").split("[")[0]
                action = (f"Use a bounded backward rule where this call is made: `stabkit.torch.{fn}(A, method=\"taylor\")` "
                          f"(or `\"clip\"`); `--swap-backward` reroutes torch.linalg.eigh only, not this call.")
            evidence = ("In the ZCA study (120 steps), exactly equal computed eigenvalues at d = 64 in float32 made SVD "
                        "(the analytic rule) fail with a non-finite gradient in 3/8 runs (K̃ = ∞); SVD-Taylor and SVD-Clip, "
                        "same seeds, finished 8/8 (the same tied spectrum only at step 0, where 2 of the 3 failures were).")
        else:
            action = ("The backward is already bounded; this project has no measured fix for a non-finite gradient "
                      "through it (check the incoming gradient and the input). taylor and taylor-authors are bounded "
                      "only where λ + ε > 0: with two eigenvalues exactly −ε (ε = 0: two zero eigenvalues, see λ_min) "
                      "their F is ±∞ like the analytic rule's; a larger ε removes that.")
            evidence = "—"
        out.append(Finding("non-finite gradient made here", made_here,
                           f"this call's backward turned a finite incoming gradient into a non-finite ∂L/∂A "
                           f"({int(grad_in_bad.sum())} call(s){', max|K̃| = ∞: exactly equal computed eigenvalues' if inf_k else ''}; backward: {backward}).",
                           action, evidence))
    if upstream is not None and not errors[input_bad].any():
        out.append(Finding("non-finite input", upstream,
                           f"the input held NaN/Inf in {int(input_bad.sum())} call(s), first at step {upstream}"
                           + (f", after this site's own backward made a non-finite gradient at step {made_here}" if made_here is not None and made_here < upstream else "") + ".",
                           "Look before this call (earlier layers, the update of the previous step) for the first non-finite value."
                           if made_here is None or made_here >= upstream else "Fix the gradient first (see above): the update it drove is the likely source.",
                           "A NaN/Inf input makes every eigensolver's output NaN or an error; this needs no study."))
    grad_in_inf = g["grad_in_norm"].notna() & ~np.isfinite(g["grad_in_norm"].fillna(0.0))
    output_bad = g["nonfinite"] & ~errors & ~input_bad & ~grad_out_bad & ~grad_in_inf  # nothing else explains the flag
    if output_bad.any():
        s = first(output_bad)
        out.append(Finding("non-finite output", s,
                           f"the call returned a non-finite value from a finite input in {int(output_bad.sum())} call(s), "
                           f"first at step {s}" + (" (g(A): g is not finite at every eigenvalue, see λ_min)" if dk else "") + ".",
                           "Add a larger ε to the diagonal or compute in float64, so that every eigenvalue lies where g is "
                           "finite; a backward rule does not change the forward." if dk else
                           "Compute this decomposition in float64 or check the input's scale; a backward rule does not "
                           "change the forward.",
                           "Logged by the monitor; no study in this project measured this case."))
    if grad_out_bad.any():
        s = first(grad_out_bad)
        out.append(Finding("non-finite incoming gradient", s,
                           f"the gradient reaching this call's outputs was non-finite in {int(grad_out_bad.sum())} call(s), first at step {s}.",
                           "The cause is after this call in the forward (closer to the loss): a later layer or the loss itself.",
                           "The monitor's hook measures ∂L/∂output before this call's backward runs; this needs no study."))
    rule_name = g["backward"].astype(str).str.split(":").str[0]
    for method in _caveated():  # what this project found about the method itself
        caveat = method.caveat
        mask = (rule_name == method.name) & (g["n"] >= caveat.min_n)
        if mask.any():
            out.append(Finding(caveat.rule, first(mask), caveat.what.format(backward=backward, n=n),
                               caveat.action, caveat.evidence))
    gap = g["min_rel_gap"] < GAP_EVENT
    values_only = set(g["fn"].astype(str).str.removeprefix("stabkit.torch.").str.split("[").str[0]) <= VALUES_ONLY
    if gap.any() and not gradient_made_here:
        if dk or values_only:
            what = f"{int(gap.sum())} of {len(g)} calls had a relative gap < {GAP_EVENT:g}."
            action = ("Nothing to change: this site's backward (Daleckii–Krein) does not divide by gaps; "
                      "max|K̃| is the analytic rule's coefficient, not its own." if dk else
                      "Nothing to change: this call returns eigen- or singular values only, whose backward "
                      "(U diag(∂L/∂λ) Uᵀ) does not divide by gaps; max|K̃| is the eigenvector rule's coefficient, "
                      "which it does not use.")
            evidence = DK_EVIDENCE if dk else VALUES_EVIDENCE
        else:
            what = (f"{int(gap.sum())} of {len(g)} calls had a relative gap < {GAP_EVENT:g} (max|K̃| {g['max_K'].max():.3g}), "
                    "without a non-finite gradient made by this call.")
            action = ("Nothing to change on this evidence alone; if a later run fails with a non-finite gradient here, "
                      "a bounded rule (taylor, clip) is the fix the study measured.")
            evidence = ("In the ZCA study (120 steps) SVD finished 40/40 float64 runs; at d = 64 their early max|K̃| had a median "
                        "of 5.2·10¹⁸ (8 runs). At a "
                        "landmark (319 runs alive at step 24, 26 later failures) the early diagnostics were not shown to "
                        "predict failure beyond the cell (method × d × dtype): cross-validated Brier 0.0324 with them, "
                        "0.0306 without (gain −0.0018 ± 0.0022 SE).")
        out.append(Finding("small gaps, no failure from them", first(gap), what, action, evidence))
    return out


def _per_step(g: pd.DataFrame) -> pd.DataFrame:
    bad = bad_steps(g)
    return g.assign(bad=bad, err=g["error"].ne("")).groupby("step").agg(
        min_rel_gap=("min_rel_gap", "min"), max_K=("max_K", "max"), lam_min=("lam_min", "min"),
        grad_norm=("grad_norm", "max"), grad_in_norm=("grad_in_norm", "max"),
        nonfinite=("nonfinite", "sum"), errors=("err", "sum"), bad=("bad", "any"))


def _plot(g: pd.DataFrame, title: str, path: Path, first_bad: int | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = _per_step(g)
    steps = per.index.to_numpy()
    fig, axes = plt.subplots(5, 1, figsize=(7, 9), sharex=True)
    big = np.finfo(np.float64).max

    def series(ax, values, label, log=True):
        v = values.to_numpy(dtype=float)
        finite = np.isfinite(v)
        ax.plot(steps[finite], v[finite], ".-", ms=3, lw=0.8)
        inf = np.isinf(v)
        if inf.any():
            top = np.nanmax(np.where(finite, v, np.nan)) if finite.any() else 1.0
            ax.plot(steps[inf], np.full(inf.sum(), top if np.isfinite(top) else big), "r^", ms=5, label="∞")
            ax.legend(loc="best", fontsize=7)
        if log and (v[finite] > 0).any():
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)

    series(axes[0], per["min_rel_gap"], "min rel. gap")
    series(axes[1], per["max_K"], "max|K̃|")
    lam = per["lam_min"].to_numpy(dtype=float)
    axes[2].plot(steps, lam, ".-", ms=3, lw=0.8)
    axes[2].axhline(0.0, color="k", lw=0.5)
    axes[2].set_ylabel("λ_min", fontsize=8)
    if np.isfinite(lam).any() and (lam[np.isfinite(lam)] > 0).all():
        axes[2].set_yscale("log")
    series(axes[3], per["grad_norm"], "‖∂L/∂out‖")
    gi = per["grad_in_norm"].to_numpy(dtype=float)
    if np.isfinite(gi).any():
        axes[3].plot(steps[np.isfinite(gi)], gi[np.isfinite(gi)], "x", ms=3, label="‖∂L/∂A‖")
        axes[3].legend(loc="best", fontsize=7)
    axes[4].bar(steps, per["nonfinite"].to_numpy(), color="tab:red", label="non-finite")
    axes[4].bar(steps, per["errors"].to_numpy(), color="k", label="raised")
    axes[4].set_ylabel("events", fontsize=8)
    axes[4].legend(loc="best", fontsize=7)
    axes[4].set_xlabel("step")
    if first_bad is not None:
        for ax in axes:
            ax.axvline(first_bad, color="tab:red", ls="--", lw=0.8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return "∞" if math.isinf(x) and x > 0 else ("−∞" if math.isinf(x) else f"{x:.3g}")
    return str(x)


def _grad_cell(g: pd.DataFrame) -> str:
    """The largest ‖∂L/∂out‖ over the calls that have one, saying how many had none: a gradient not
    measured (NaN in the log) is absent, never a number and never left out silently."""
    grad = g["grad_norm"]
    measured = int(grad.notna().sum())
    if measured == 0:
        return "not measured"
    largest = _fmt(float(grad.max()))
    return largest if measured == len(g) else f"{largest} ({measured} of {len(g)} calls measured)"


def build_report(folder, out=None) -> Path:
    """Write ``report.md`` and one PNG per call site into ``out`` (default: ``folder``); returns the Markdown path."""
    df = load_logs(folder)
    out = Path(out) if out is not None else Path(folder)
    with storage_errors("the logs are kept"):  # a full disk or read-only folder: one StorageError, as for a study
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ValueError(f"cannot write the report into {out}: it or a folder above it is a file") from None
        lines = [f"# Monitor report: {Path(folder)}", "",
                 f"{len(df)} logged calls in {df['log'].nunique()} log(s) ({', '.join(sorted(df['log'].unique(), key=_natural))}), "
                 f"steps {int(df['step'].min())}–{int(df['step'].max())}.", "",
                 "| # | log | site | function | backward | dtype | n | calls | min rel. gap | max\\|K̃\\| | λ_min | max ‖∂L/∂out‖ | non-finite | raised | first bad step |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        firsts = [int(g.loc[bad_steps(g), "step"].min()) for _, g in df.groupby(["log", "site", "fn"]) if bad_steps(g).any()]
        if firsts:
            lines[2] += f" First bad step over all sites: {min(firsts)}."
        else:
            lines[2] += " No bad step at any site."
        sections = []
        groups = sorted(df.groupby(["log", "site", "fn"]), key=lambda group: _natural(group[0]))
        for i, ((log, site, fn), g) in enumerate(groups, start=1):
            g = g.sort_values("step", kind="stable")
            bad = bad_steps(g)
            first_bad = int(g.loc[bad, "step"].min()) if bad.any() else None
            lines.append(f"| {i} | {log} | `{site}` | {fn} | {', '.join(sorted(set(g['backward'])))} | {', '.join(sorted(set(g['dtype'])))} "
                         f"| {int(g['n'].max())} | {len(g)} | {_fmt(float(g['min_rel_gap'].min()))} | {_fmt(float(g['max_K'].max()))} "
                         f"| {_fmt(float(g['lam_min'].min()))} | {_grad_cell(g)} | {int(g['nonfinite'].sum())} "
                         f"| {int(g['error'].ne('').sum())} | {_fmt(first_bad)} |")
            png = f"site-{i:02d}.png"
            _plot(g, f"{log}  {site}  {fn}", out / png, first_bad)
            sec = [f"## {i}. `{site}` ({fn}, {log})", "", f"![timelines]({png})", ""]
            found = findings(g)
            if not found:
                sec.append("No error, non-finite value or λ_min ≤ 0 at this site, and no relative gap below "
                           f"{GAP_EVENT:g}: nothing to change.")
            for f in found:
                sec += [f"- **{f.rule}** (from step {_fmt(f.step)}): {f.what}", f"  - *What to do:* {f.action}",
                        f"  - *Evidence:* {f.evidence}"]
            sections += sec + [""]
        footer = ["## How to read this", "",
                  "- *min rel. gap*: smallest |λ_i − λ_j| / max|λ| over the call's batch (svd: of σ²); *max|K̃|* = 1 / smallest gap, "
                  "the analytic backward's largest coefficient; *‖∂L/∂out‖*: the gradient reaching the call's outputs; ‖∂L/∂A‖ "
                  "(in the plots): the gradient its backward hands on — non-finite there with a finite ‖∂L/∂out‖ means this "
                  "call's backward made it so. *not measured* (or *k of N calls measured*): no gradient reached the outputs of "
                  "those calls — they did not require grad (no_grad, an evaluation pass), or no backward ran after them.",
                  "- *first bad step*: the first step with an error, a non-finite value, or λ_min ≤ 0 at a site taken as positive "
                  "definite: λ_min > 0 at half or more of its calls with a λ_min (the λ rule is not applied to svd or to sites "
                  "where λ_min ≤ 0 at more than half of the calls, indefinite by design).",
                  "- Each rule names the finding of this project it rests on (README, \"Training and the instability monitor\"; "
                  "`reports/zca-cifar10`). Those findings come from ZCA whitening in ResNet-18 on CIFAR-10; on another model "
                  "they are a starting point, not a guarantee.", ""]
        path = out / "report.md"
        write_text_atomic(path, "\n".join(lines + [""] + sections + footer))
        return path
