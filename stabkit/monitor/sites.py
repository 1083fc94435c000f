"""Call sites: the ``site`` a monitored call is logged under.

A site is ``file:line`` of the first caller frame outside torch and stabkit's eigen internals. Every
instance of one layer class calls the eigensolver from the same line (two ``ZCAWhitening`` layers in
one network both call it in ``stabkit/train/zca.py``), so ``file:line`` alone merged their rows: a
report's count, smallest gap and largest gradient combined both layers. The module that made the call,
the innermost ``nn.Module`` being called, tells them apart: the first instance to reach a site keeps
the plain ``file:line`` (a network with one such layer logs as before), each other instance is logged
as ``file:line [name]``, ``name`` its path in the outermost module being called (``2`` in an
``nn.Sequential``, ``layers.3.zca``), or ``Class#k`` (the k-th instance to reach the site) where it has
none there or another instance has that label already (two models' ``norm1``). One instance called
several times keeps one site; calls made outside any module count as one instance. A module that is
garbage-collected gives up its label (a rebuilt model takes it over).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref

import torch

from .. import _xp, methods
import stabkit.torch
from ..layers import matrix_functions


def _folder(path: str) -> str:
    return os.path.dirname(os.path.realpath(path)) + os.sep


#: frames a call site is looked through, by where the code is installed (never by a name in the
#: path: a user's folder may be called ``torch`` or ``my_autograd_tests``): torch's package, the
#: method registry, this package, stabkit.torch, _xp, the layers (the site of a layer's
#: decomposition is the line that called the layer)
_SKIP_FOLDERS = (_folder(torch.__file__), _folder(methods.__file__), _folder(__file__), _folder(matrix_functions.__file__))
_SKIP_FILES = {os.path.realpath(m.__file__) for m in (stabkit.torch, _xp)}

_site_of_file: dict = {}


def _site_file(filename: str):
    """The name a call site is shown with, or None for files to look through (cached per file)."""
    try:
        return _site_of_file[filename]
    except KeyError:
        real = os.path.realpath(filename)
        if real in _SKIP_FILES or real.startswith(_SKIP_FOLDERS):
            shown = None
        else:
            file = os.path.abspath(filename)
            rel = os.path.relpath(file)
            shown = rel if not rel.startswith("..") else file
        _site_of_file[filename] = shown
        return shown


def call_site() -> str:
    """``file:line`` of the first frame of the caller outside the looked-through files ("?" if none)."""
    frame = sys._getframe(1)
    while frame is not None:
        shown = _site_file(frame.f_code.co_filename)
        if shown is not None:
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


#: the frame of ``nn.Module.__call__`` that holds the module being called as ``self``
_MODULE_CALL = torch.nn.Module._call_impl.__code__


def _modules_called():
    """(the innermost, the outermost) ``nn.Module`` being called in this thread; (None, None) outside any."""
    inner = outer = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _MODULE_CALL:
            module = frame.f_locals.get("self")
            inner = module if inner is None else inner
            outer = module
        frame = frame.f_back
    return inner, outer


class _Outside:
    """Stands for "no module" among a site's instances (weak-referenceable, never collected)."""


_OUTSIDE = _Outside()


def _name(module, outer, k: int) -> str:
    """``module``'s path in ``outer``, or ``Class#k`` where it has none (it is ``outer``, or not in it)."""
    if outer is not None and outer is not module:
        found = next((name for name, m in outer.named_modules(remove_duplicate=False) if m is module), "")
        if found:
            return found
    return f"{type(module).__name__}#{k}"


class SiteLabels:
    """One monitor's sites: which module instances reached each ``file:line``, and each one's label."""

    def __init__(self):
        self._seen: dict[str, dict[int, tuple]] = {}  # file:line → {id(module): (weakref, label)}
        self._count: dict[str, int] = {}              # file:line → instances that reached it so far
        self._lock = threading.Lock()

    def site(self) -> str:
        """The site of the monitored call now being made (see the module doc)."""
        where = call_site()
        inner, outer = _modules_called()
        module = _OUTSIDE if inner is None else inner
        with self._lock:
            seen = self._seen.setdefault(where, {})
            known = seen.get(id(module))
            if known is not None and known[0]() is module:
                return known[1]
            for key in [key for key, (ref, _) in seen.items() if ref() is None]:  # collected: labels free again
                del seen[key]
            k = self._count[where] = self._count.get(where, 0) + 1
            taken = {label for _, label in seen.values()}
            label = where
            if label in taken:
                label = f"{where} [{_name(module, outer, k) if inner is not None else 'outside modules'}]"
            if label in taken:  # one name in two models (each model's "norm1"): numbered instead
                label = f"{where} [{type(module).__name__}#{k}]"
            seen[id(module)] = (weakref.ref(module), label)
            return label
