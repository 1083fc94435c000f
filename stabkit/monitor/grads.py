"""The gradient norms of a monitored call, per stacked run: ‖∂L/∂outputs‖ over every output the
gradient reaches (``grad_norm``) and ‖∂L/∂A‖ (``grad_in_norm``), kept as device scalars in the rows.

Each backward through the call is measured on its own; a row holds the largest backward's norms
(:class:`GradNorms`). A norm is taken in float64, a float64 gradient scaled by its max |g| first: a plain sum of squares,
and torch's ``vector_norm`` alike, gave ∞ for entries of 1e160 and 0 for 1e-170, so a finite gradient
now has a finite norm. The outputs' norms combine as √(Σ‖·‖²) through ``hypot`` (no overflow either).
"""

from __future__ import annotations

import torch

from .stats import wide


def physical(t):
    """The plain tensor under torch.func's wrappers (vmap's batched tensors, grad's): the statistics of
    a call inside a transform are taken over every matrix it decomposed, and a row never holds a
    wrapper that cannot be read once the transform is over. The eigenvalue dimension stays last."""
    while isinstance(t, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def run_norms(g, runs: int):
    """‖·‖₂ of each of ``runs`` equal consecutive parts of ``g``, a (runs,) tensor (float64 where the
    device has it); ∞ or NaN where the part holds ∞ or NaN."""
    parts = wide(physical(g).detach()).reshape(runs, -1)
    if g.dtype != torch.float64 or parts.shape[1] == 0:  # a narrower float squared in float64 neither over- nor underflows
        return torch.linalg.vector_norm(parts, dim=1)
    scale = parts.abs().amax(1, keepdim=True)
    scale = torch.where((scale > 0) & torch.isfinite(scale), scale, torch.ones_like(scale))
    return scale[:, 0] * torch.linalg.vector_norm(parts / scale, dim=1)


class GradNorms:
    """One kind of gradient norm of one call, written into its rows (one per run) under ``key`` as views
    of one (runs,) tensor; ``accumulate``: the gradients of several outputs combine (``hypot``).

    Per backward: a graph backpropagated again (``retain_graph=True``) is another autograd graph task,
    whose norm is its own (the two used to be summed: √2 times one backward's norm for two equal ones);
    the rows hold the largest backward's norm (NaN, then ∞ in the row, if any was NaN)."""

    def __init__(self, rows: list[dict], key: str, lock, accumulate: bool):
        self.rows, self.key, self.lock, self.accumulate = rows, key, lock, accumulate
        self.task, self.now, self.before = None, None, None  # this backward's norms, the earlier ones' largest

    def __call__(self, g):
        if g is None or g.is_meta:
            return
        norms = run_norms(g, len(self.rows))
        task = torch._C._current_graph_task_id()
        with self.lock:
            if self.now is not None and task != self.task:  # another backward
                self.before = self.now if self.before is None else torch.maximum(self.before, self.now)
                self.now = None
            self.now = torch.hypot(self.now, norms) if self.accumulate and self.now is not None else norms
            self.task = task
            largest = self.now if self.before is None else torch.maximum(self.before, self.now)
            for r, row in enumerate(self.rows):
                row[self.key] = largest[r]


def hookable(t):
    """The tensor a gradient hook attaches to: ``t``, or under torch.func's wrappers the outermost level
    that requires grad. A vmap BatchedTensor never requires grad, even when the tensor it batches is in
    an ordinary autograd graph outside the vmap (``vmap(f)(X).sum().backward()``): hooked on that
    tensor, the gradient of every matrix of the batch is measured. None where no level requires grad."""
    while isinstance(t, torch.Tensor):
        if t.requires_grad:
            return t
        if not torch._C._functorch.is_functorch_wrapped_tensor(t):
            return None
        t = torch._C._functorch.get_unwrapped(t)
    return None


def grad_hooks(outputs, A, rows: list[dict], lock) -> None:
    """Measure the call's gradients into ``rows`` (``_grad_norm``, ``_grad_in_norm``; one row per run):
    on every output that gradient reaches, and on ∂L/∂A where A is not a leaf (a leaf would keep the hook
    for good); at the level :func:`hookable` finds. A call without an output that requires grad
    (``torch.no_grad``) has no backward: ∂L/∂A from other uses of A is not its own. Only scalars are
    kept, never a gradient."""
    on_out = GradNorms(rows, "_grad_norm", lock, accumulate=True)
    hooked = False
    for out in outputs:
        out = hookable(out)
        if out is not None:
            out.register_hook(on_out)
            hooked = True
    A = hookable(A)
    if hooked and A is not None and A.grad_fn is not None:
        A.register_hook(GradNorms(rows, "_grad_in_norm", lock, accumulate=False))
