"""Counting host read-backs in tests: the calls that copy a tensor's value to the host, each of which
waits for the device on CUDA (``item``, ``bool(t)``, ``nonzero``, …). The fast training path
promises none between its checks (issue 12); the CPU cannot time a synchronisation, but it can count
the calls that would make one.

The methods are patched on the class, not watched with a ``TorchFunctionMode``: the autograd engine
runs backward rules outside the mode, and a read-back there synchronises like any other.
"""

import collections
import contextlib
import traceback

import torch

_TENSOR_METHODS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__")
_TORCH_FUNCTIONS = ("nonzero", "argwhere", "masked_select", "unique", "equal", "allclose", "is_nonzero")


@contextlib.contextmanager
def count_host_reads():
    """A Counter of (call, stabkit file:line that made it) for every read-back made inside the block;
    calls from outside the ``stabkit`` package are counted under ``"?"``."""
    seen: collections.Counter = collections.Counter()

    def spy(name, original):
        def counted(*args, **kwargs):
            site = [f for f in traceback.extract_stack()[:-1] if "/stabkit/" in f.filename]
            seen[(name, f"{site[-1].filename.rsplit('/stabkit/', 1)[-1]}:{site[-1].lineno}" if site else "?")] += 1
            return original(*args, **kwargs)
        return counted

    patched = [(torch.Tensor, n) for n in _TENSOR_METHODS] + [(torch, n) for n in _TORCH_FUNCTIONS]
    own = [name in vars(owner) for owner, name in patched]  # else inherited (torch.Tensor's from its C base)
    originals = [getattr(owner, name) for owner, name in patched]
    try:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, spy(name, original))
        yield seen
    finally:
        for (owner, name), original, mine in zip(patched, originals, own):
            if mine:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
