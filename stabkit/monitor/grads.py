"""The gradient norms of a monitored call, per stacked run: ‖∂L/∂outputs‖ over every output the
gradient reaches (``grad_norm``) and ‖∂L/∂A‖ (``grad_in_norm``), kept as device scalars in the rows.

Each backward through the call is measured on its own; a row holds the largest backward's norms
(:class:`GradNorms`). A norm is taken in float64, a float64 gradient scaled by its max |g| first: a
plain sum of squares, and torch's ``vector_norm`` alike, gave ∞ for entries of 1e160 and 0 for 1e-170,
so a finite gradient now has a finite norm. The outputs' norms combine as √(Σ‖·‖²) through ``hypot``.
Under torch.func transforms the tensors are unwrapped, and their dims arranged (:func:`physical`).
"""

from __future__ import annotations

import math

import torch

_F = torch._C._functorch


def _unwrapped(t):
    """(the plain tensor under torch.func's wrappers of ``t``, where ``t``'s own dims lie in it, where
    the transforms' batch dims lie in it): each vmap level inserts its batch dim at its ``bdim``, which
    need not be the front (``in_dims=1``) nor the same for an input and its eigenvalues."""
    own, batch = list(range(t.ndim)), []
    while _F.is_functorch_wrapped_tensor(t):
        t, own, batch = _peeled(t, own, batch)
    return t, own, batch


def _peeled(t, own, batch):
    """One level of torch.func's wrappers off ``t``: the tensor under it and the positions there of the
    dims at ``own`` and ``batch`` in ``t``, with this level's batch dim added (a grad level adds none)."""
    b = _F.maybe_get_bdim(t)
    t = _F.get_unwrapped(t)
    if b < 0:
        return t, own, batch
    return t, [p + (p >= b) for p in own], [p + (p >= b) for p in batch] + [b]


def _arranged(t, own, batch, lead: bool):
    """``t`` permuted to: the transforms' batch dims, then the own dims in order (the eigenvalue dim
    last); ``lead``: the first own dim (a stacked run's batch) before them all."""
    if not batch:  # no vmap level: the own dims are t's, in order
        return t
    order = own[:1] + batch + own[1:] if lead else batch + own
    return t if order == sorted(order) else t.permute(order)


def physical(t, lead: bool = False):
    """The plain tensor under torch.func's wrappers (vmap's batched tensors, grad's), arranged as
    :func:`_arranged` says: the statistics of a call inside a transform are taken over every matrix it
    decomposed, each stacked run's from its own matrices (``lead``), and a row never holds a wrapper
    that cannot be read once the transform is over."""
    if not isinstance(t, torch.Tensor):
        return t
    return _arranged(*_unwrapped(t), lead)


def run_norms(g, runs: int, layout=None):
    """‖·‖₂ of ``g`` (a 0-d tensor), or with ``runs`` > 1 of each run's part (a (runs,) tensor), in float64
    where the device has it; ∞ or NaN where ``g`` holds ∞ or NaN. ``layout``: where the call's own dims
    and batch dims lie in the tensor ``g`` is the gradient of (:func:`hookable`); a run's part is its
    slice of the own first dim."""
    plain, own, batch = _unwrapped(g)
    plain, dim = plain.detach(), None
    if runs > 1:
        if layout is not None:  # g's dims are those of the hooked tensor: the call's dims through them
            own, batch = [own[p] for p in layout[0]], [own[p] for p in layout[1]] + batch
        plain, dim = _arranged(plain, own, batch, lead=True).reshape(runs, -1), 1
    if plain.is_complex():  # ‖z‖₂ is that of its real and imaginary parts (vector_norm refused a real dtype)
        plain = torch.view_as_real(plain.resolve_conj())
        plain = plain.reshape(runs, -1) if dim else plain
    if plain.dtype != torch.float64 or plain.numel() == 0:  # a narrower float squared in float64 neither over- nor underflows
        return torch.linalg.vector_norm(plain, dim=dim, dtype=torch.float64 if plain.device.type != "mps" else None)
    scale = torch.linalg.vector_norm(plain, math.inf, dim=dim, keepdim=dim is not None).clamp_min(torch.finfo(plain.dtype).tiny)
    return torch.linalg.vector_norm(plain / scale, dim=dim) * (scale[:, 0] if dim else scale)


class GradNorms:
    """One kind of gradient norm of one call, written into its rows (one per run) under ``key`` as views
    of one (runs,) tensor; ``accumulate``: the gradients of several outputs combine (``hypot``).

    Per backward: a graph backpropagated again (``retain_graph=True``) is another autograd graph task,
    whose norm is its own (the two used to be summed: √2 times one backward's norm for two equal ones);
    the rows hold the largest backward's norm (NaN, then ∞ in the row, if any was NaN)."""

    def __init__(self, rows: list[dict], key: str, lock, accumulate: bool):
        self.rows, self.key, self.lock, self.accumulate = rows, key, lock, accumulate
        self.task, self.now, self.before = None, None, None  # this backward's norms, the earlier ones' largest

    def __call__(self, g, layout=None):
        if g is None or g.is_meta:
            return
        rows = self.rows
        norms = run_norms(g, len(rows), layout)
        task = torch._C._current_graph_task_id()
        with self.lock:
            if self.now is not None and task != self.task:  # another backward
                self.before = self.now if self.before is None else torch.maximum(self.before, self.now)
                self.now = None
            self.now = torch.hypot(self.now, norms) if self.accumulate and self.now is not None else norms
            self.task = task
            largest = self.now if self.before is None else torch.maximum(self.before, self.now)
            if len(rows) == 1:
                rows[0][self.key] = largest  # 0-d
            else:
                for r, row in enumerate(rows):
                    row[self.key] = largest[r]


def hookable(t):
    """(the tensor a gradient hook attaches to, where ``t``'s own dims and the batch dims lie in it), or
    None where no level requires grad: ``t``, or under torch.func's wrappers the outermost level that
    requires grad. A vmap BatchedTensor never requires grad, even when the tensor it batches is in an
    ordinary autograd graph outside the vmap (``vmap(f)(X).sum().backward()``): hooked on that tensor,
    the gradient of every matrix of the batch is measured."""
    own, batch = list(range(t.ndim)) if isinstance(t, torch.Tensor) else [], []
    while isinstance(t, torch.Tensor):
        if t.requires_grad:
            return t, (own, batch)
        if not _F.is_functorch_wrapped_tensor(t):
            return None
        t, own, batch = _peeled(t, own, batch)
    return None


def grad_hooks(outputs, A, rows: list[dict], lock) -> bool:
    """Measure the call's gradients into ``rows`` (``_grad_norm``, ``_grad_in_norm``; one row per run);
    whether any output requires grad (and so was hooked):
    on every output that gradient reaches, and on ∂L/∂A where A is not a leaf (a leaf would keep the hook
    for good); at the level :func:`hookable` finds. A call without an output that requires grad
    (``torch.no_grad``) has no backward: ∂L/∂A from other uses of A is not its own. Only scalars are
    kept, never a gradient."""
    on_out = GradNorms(rows, "_grad_norm", lock, accumulate=True)
    hooked = False
    for out in outputs:
        found = hookable(out)
        if found is not None:
            found[0].register_hook(_guarded(on_out, found[1]))
            hooked = True
    found = hookable(A)
    if hooked and found is not None and found[0].grad_fn is not None:
        on_in = GradNorms(rows, "_grad_in_norm", lock, accumulate=False)
        found[0].register_hook(_guarded(on_in, found[1]))
    return hooked


def _guarded(measure, layout):
    """The tensor hook of ``measure``: it runs inside the user's backward, so a failure is warned about
    as the forward's bookkeeping is (:func:`.hooks._never_fails`), never raised there."""

    def hook(g):
        from .hooks import _never_fails  # here: .hooks imports this module

        with _never_fails():
            measure(g, layout)

    return hook
