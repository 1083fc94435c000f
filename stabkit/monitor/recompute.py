"""Calls recomputed by ``torch.utils.checkpoint``: one row per forward call, not two.

A checkpointed function runs twice in a training step: in the forward, and again in the backward
to rebuild what it did not keep. Each run of a watched call in it was a row, so a step logged two
rows per call (the report's call and gap-event counts doubled), and ``use_reentrant=False``, which
stops a rerun early by raising ``_StopRecomputationError`` through the call, left an error row:
a healthy model's site reported a call that raised, non-finite, as its first bad step.

The rule: a watched call made while an autograd backward runs in its thread
(``torch._C._current_graph_task_id() != -1``: both checkpoint variants recompute inside the backward)
is a rerun. It goes to the monitors that logged the call it repeats (a call of this step at its site
and function), in whichever thread it runs: CUDA's autograd runs a backward in a thread of its own,
where a rerun used to be unwatched, so unswapped (``use_reentrant=False`` raised CheckpointError,
``True`` used torch's analytic backward in place of ``swap_backward``'s). It runs as its forward call
did (swapped alike, so the checkpoint gets back the tensors it saved) and logs nothing of its own: no
row, no error row. A call made in a backward that repeats none (a custom autograd Function's backward
calling eigh itself) is neither logged nor swapped.

Gradients: a rerun measures them only where its forward call could not. ``use_reentrant=True`` runs
the forward under ``no_grad`` and sends the gradient through the rerun, so the rerun hooks that call's
rows; ``use_reentrant=False`` keeps the forward's graph, whose rows are hooked already. Matching: each
monitor keeps, per site and function, the current step's calls in order; a rerun takes the last one
not yet taken. Checkpoints rerun in reverse order, so checkpointed calls at one site match from the
last back; calls repeated at one site inside one checkpointed function may swap their gradient norms
among themselves (the site's statistics are unchanged).
"""

from __future__ import annotations

import threading

import torch


#: torch's id of the backward running in this thread, −1 outside one (private; a torch without it:
#: no call counts as a rerun, as before this module)
_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def recomputing() -> bool:
    """Whether this thread is inside an autograd backward (a call made now is a recomputation)."""
    return _graph_task_id is not None and _graph_task_id() != -1


class Recomputations:
    """One monitor's forward calls of the current step, per (site, fn), for their recomputations:
    each as its groups of rows to hook together (one group per run), none where its outputs were
    hooked in the forward."""

    def __init__(self):
        self._calls: dict[tuple, tuple[int, list]] = {}  # (site, fn) → (step, the step's calls in order)
        self._lock = threading.Lock()

    def forward(self, key: tuple, step: int, groups: list | None) -> None:
        with self._lock:
            kept_step, calls = self._calls.get(key, (step, []))
            calls = calls if kept_step == step else []  # an earlier step's calls are never recomputed now
            calls.append(groups)
            self._calls[key] = (step, calls)

    def pending(self, key: tuple, step: int) -> bool:
        """Whether a call at ``key`` this step awaits its rerun."""
        with self._lock:
            kept_step, calls = self._calls.get(key, (None, []))
            return kept_step == step and bool(calls)

    def recomputed(self, key: tuple, step: int) -> list | None:
        """The row groups that the recomputation of the latest call at ``key`` not yet recomputed hooks
        (None: no such call this step)."""
        with self._lock:
            kept_step, calls = self._calls.get(key, (None, []))
            return calls.pop() if kept_step == step and calls else None
