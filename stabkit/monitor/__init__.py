"""Instability monitor: log what every eigendecomposition in a model sees, without touching the model.

    with stabkit.monitor.watch(log_path="eig.csv") as mon:
        for x, y in loader:
            loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    mon.records          # pandas DataFrame, one row per call

or, for a script that is not edited at all, ``stabkit watch -- python train.py`` (see
:mod:`stabkit.monitor.process`).

Inside ``watch`` the functions ``torch.linalg.eigh``, ``torch.linalg.eigvalsh``,
``torch.linalg.svd``, ``stabkit.torch``'s ``eigh``, ``eigvalsh``, ``svd``, ``svdvals`` and the
Daleckii–Krein layers' decompositions (``stabkit.layers.matrix_functions.eig_dk``, behind
``CovariancePooling``'s default, and ``svd_dk``, behind SVD-DK; logged under those names) are replaced by wrappers (restored when the last ``watch`` exits, so outside it they are the
originals: zero overhead). Each call logs, per call site (``file:line`` of the first caller frame
outside torch and stabkit's eigen internals; where several instances of a layer call from one line,
as two ZCA layers do, the first instance keeps ``file:line`` and each other one is logged as
``file:line [name]``, its name in the model being called: :mod:`.sites`) and step:

* ``min_gap``: smallest |λ_i − λ_j| over the batch (for svd: of σ², the eigenvalues of AᵀA);
* ``min_rel_gap``: min gap / max |λ| of the same matrix (minimum over the batch);
* ``max_K``: max |K̃_ij| = 1 / min_gap, the analytic backward's largest coefficient;
* ``lam_min``: smallest eigenvalue; these four are the spectrum's exact values (taken in float64,
  σ² too, so a float32 1/gap above 3.4e38 stays finite);
* ``bound``: max |F_ij| of ``bound``'s method (see ``watch``) as the call's backward meets it: from
  λ in the call's dtype, σ² squared in that dtype (a float32 σ² tie gives ∞ where the exact σ² differ);
* ``grad_norm``: the norm of the gradient reaching the outputs (a tensor hook; NaN until the
  backward ran, or when the outputs do not require grad; the report shows it as "not measured");
  ``grad_in_norm``: the norm of ∂L/∂A,
  the gradient this call's backward hands on (through every use of A; NaN when A is a leaf);
  both are ∞ when the gradient held inf or NaN (so a CSV keeps "non-finite" apart from "none"), and
  finite wherever it was (float64 gradients are scaled: entries of 1e160 give 1e160-sized norms);
  each backward is measured on its own: a graph backpropagated again (``retain_graph=True``) gives
  the row the largest backward's norm, never a sum over backwards;
* ``input_nonfinite``: the input held inf/NaN where the call reads it (torch's eigh/eigvalsh: the
  UPLO triangle); ``nonfinite``: input, output, incoming gradient or ∂L/∂A did;
* ``backward``: the rule the call's backward uses (``analytic`` for torch's own, the registry spec
  of a stabkit.torch call or of ``swap_backward``, ``values`` for torch.linalg.eigvalsh whose
  backward has no 1/(λ_i − λ_j), ``daleckii-krein (exact g(A); no swap)`` for a Daleckii–Krein
  layer: the exact derivative of its matrix function, finite on ties, never swapped; its λ are
  those of g's argument, FᵀF + εI for SVD-DK, and ``grad_norm`` is that reaching g(A));
* ``error``: empty, or ``Type: message`` when the call raised (e.g. eigh on a NaN input): the call
  is logged, the log is flushed at once, and the exception propagates unchanged.

**Steps.** ``mon.step()`` advances the step. A user who never calls it gets optimizer steps: a
global ``torch.optim`` post-step hook counts each optimizer's steps and the step is the largest
count (several optimizers stepping once per iteration count once). The first ``mon.step()`` call
switches the monitor to manual counting for good.

**Checkpointing.** A call that ``torch.utils.checkpoint`` reruns in the backward (either variant) is
run as its forward call was (swapped alike, by the monitors that logged it, in whichever thread
autograd reruns it) and logs no second row, nor an error row for the early
stop that ``use_reentrant=False`` raises through it (:mod:`.recompute`); with
``use_reentrant=True``, whose forward runs under ``no_grad``, the rerun measures the gradient norms
into the forward call's row (``grad_in_norm`` is then NaN where A is the checkpoint's own input: a
detached leaf there).

**Live logs.** With ``log_path`` the rows of finished steps are appended every ``every`` steps
(``.csv``: one append per flush, so a killed process leaves every flushed step readable;
``.parquet``: one row group per flush, readable only once the file is closed — prefer ``.csv``
where the process may be killed). ``tensorboard_dir`` gets per-site scalars at each flush. A
step's rows are written once the step is over, so its backward's gradient norms are in them; a
backward run after that (gradient accumulation over steps) reaches ``records`` but not the log.

**Threads.** Patching is reference-counted: the wrappers stay installed while any ``watch`` is
active in any thread and the originals come back when the last one exits, whatever the order.
A ``watch`` records the calls of the thread that entered it (``all_threads=True``: every thread).
A Monitor records a call once, however it is reached: nested watches in one thread each record it
once, in their own rows; a monitor active twice, or also a run of an active ``SplitMonitor``, once
(a run then gets its slice). Two live logs on one file are refused (``watch``: ValueError), and a
process has one ``stabkit watch`` monitor (:mod:`.process`). A call made from inside a watched call
(stabkit.torch.eigh's own torch.linalg.eigh) is not logged twice, and the decomposition a double
backward rebuilds from A (``torch.ops.aten``) is neither logged nor swapped. A forked child process (a
DataLoader worker) drops the monitors it inherited, so it never writes into its parent's log;
under ``stabkit watch`` it starts its own (``eig-rank{R}-pid{PID}.csv``, :mod:`.process`).

**Stacked runs.** ``watching(mon)`` lets an existing :class:`Monitor` record inside a block (no
log of its own); a :class:`SplitMonitor` splits each call's batch into R equal slices, one per run
of R runs stacked in one network (``stabkit.train.stacked_loop``), and logs slice r into run r's
own Monitor, as if that run had made the call alone.

Callers that imported the function object before ``watch`` (``from torch.linalg import eigh``) are
not intercepted by ``watch``; ``stabkit watch`` patches before the user's code runs, so they are.
Inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``) a call is logged once, over every
matrix it decomposed (gradient norms over every cotangent; under ``vmap`` with ordinary autograd outside it,
``vmap(f)(X).sum().backward()``, over the whole batch: the hooks go on the tensor vmap batches, as its
wrapper never requires grad). Code compiled by ``torch.compile`` is neither monitored nor swapped: while Dynamo traces, the
wrappers call the originals, so ``fullgraph=True`` works inside ``watch``; ``torch.jit.script`` compiles
torch.linalg's calls to their aten ops (the wrappers are registered as those builtins), also unmonitored.
``swap_backward="taylor:K=9"`` routes ``torch.linalg.eigh`` through ``stabkit.torch.eigh`` with
that registry method's backward and ``check=False``: the call keeps torch's input contract (no
symmetry check, an exact forward reads the lower triangle, a NaN input gets torch's own
``LinAlgError`` where torch raises one). Scalars stay on the device until a flush or ``records``
(no synchronisation per call), which turns them into Python scalars (a row kept for ``records``
holds no device memory once logged or read).

The package: :mod:`.hooks` (the patching and :func:`watch`), :mod:`.records` (:class:`Monitor`,
:func:`summarize`), :mod:`.sites` (call sites), :mod:`.recompute` (checkpoint reruns), :mod:`.log`
(the live log), :mod:`.process` (``stabkit watch``'s side in the watched process), :mod:`.report`
(``stabkit monitor report``).
"""

from .hooks import watch, watching
from .log import COLUMNS, LiveLog, read_log
from .records import Monitor, SplitMonitor, summarize

__all__ = ["COLUMNS", "Monitor", "SplitMonitor", "watch", "watching", "summarize", "LiveLog", "read_log"]
