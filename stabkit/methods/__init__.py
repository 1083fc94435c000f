"""The registry of gradient methods for A = U diag(λ) Uᵀ, one small module each.

``get(name)`` returns a :class:`Method`; ``spec("taylor:K=19,eps=1e-4")`` turns a choice made at an
edge (CLI option, study grid, Python call) into a validated :class:`Spec` that travels as an object;
``Spec.evaluate(A, loss)`` runs a method end to end. The same formula code runs on numpy arrays and
torch tensors (``stabkit.torch``).
"""

from __future__ import annotations

from . import (analytic, analytic_trunc, clip, clip_authors, degenerate, lorentzian, pade, pi_authors, power_iteration, taylor,
               taylor_authors, taylor_song, torch_autograd)
from ._base import Caveat, Method, assemble
from ._spec import MethodSpecError, Spec, bind, get, parse, spec

REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        analytic.METHOD,
        taylor.METHOD,
        power_iteration.SVD_PI,
        power_iteration.PI_FORWARD,
        power_iteration.PI_LEGACY,
        clip.METHOD,
        lorentzian.METHOD,
        pade.METHOD,
        taylor_song.METHOD,
        degenerate.METHOD,
        torch_autograd.METHOD,
        taylor_authors.METHOD,
        analytic_trunc.METHOD,
        clip_authors.METHOD,
        pi_authors.METHOD,
    )
}

NAMES = tuple(REGISTRY)

#: The method a function or layer uses when the caller names none: the exact rule (Prop. 2).
DEFAULT = "analytic"
#: The rule torch's own eigh/svd backward computes (what the monitor labels a plain torch.linalg call).
EXACT = "analytic"
#: the default of ``stabkit train`` (a bounded rule: a run is about training, not about the exact gradient)
TRAIN_DEFAULT = "taylor"


__all__ = ["Method", "Caveat", "Spec", "DEFAULT", "EXACT", "TRAIN_DEFAULT", "MethodSpecError", "spec", "parse", "bind", "REGISTRY", "NAMES", "get", "assemble"]
