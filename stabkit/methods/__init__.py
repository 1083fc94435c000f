"""The registry of gradient methods for A = U diag(λ) Uᵀ, one small module each.

``get(name)`` returns a :class:`Method`; ``parse_spec("taylor:K=19,eps=1e-4")`` turns the CLI
spelling into (name, params); ``gradient(spec, A, loss)`` runs a method end to end on a numpy
matrix. The same formula code runs on numpy arrays and torch tensors (``stabkit.torch``).
"""

from __future__ import annotations

import math

import numpy as np

from .._assign import split_assignments
from . import (analytic, analytic_trunc, clip, clip_authors, degenerate, lorentzian, pade, power_iteration, taylor, taylor_authors,
               taylor_song, torch_autograd)
from ._base import Method, assemble
from .. import _xp

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
    )
}

NAMES = tuple(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(NAMES)}") from None


def resolve_params(name: str, params: dict | None = None) -> dict:
    """The method's defaults overridden by ``params``, converted to the default's type and checked
    against the parameter's declared domain (``Method.domains``): ValueError naming the method, the
    parameter, the value and the domain otherwise."""
    method = get(name)
    merged = dict(method.defaults)
    for key, value in (params or {}).items():
        if key not in method.defaults:
            allowed = ", ".join(method.defaults) or "none"
            raise ValueError(f"method {name!r} has no parameter {key!r} (allowed: {allowed})")
        domain = method.domains[key]
        converted = _convert(name, key, value, domain)
        if not domain.contains(converted):
            raise ValueError(f"method {name!r}: parameter {key}={value} is out of range (must be {domain})")
        merged[key] = converted
    return merged


def _convert(name, key, value, domain):
    """Text or number → the domain's type (None stays None; the domain decides whether it may)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if domain.kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, (bool, np.bool_)) or text in ("true", "false", "1", "0", "yes", "no"):
            return bool(value) if isinstance(value, (bool, np.bool_)) else text in ("true", "1", "yes")
        raise ValueError(f"method {name!r}: parameter {key}={value} is not a switch (must be {domain})")
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method {name!r}: parameter {key}={value} is not a number (must be {domain})") from None
    if domain.kind is int and math.isfinite(number):
        if number != int(number):
            raise ValueError(f"method {name!r}: parameter {key}={value} is not an integer (must be {domain})")
        return int(number)
    return number


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"taylor:K=19,eps=1e-4"`` → ("taylor", {"K": 19, "eps": 1e-4}), validated."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    params = split_assignments(rest.split(","), f"method spec {spec!r}")
    return name, resolve_params(name, params)


def format_spec(name: str, params: dict) -> str:
    """Inverse of parse_spec, listing only parameters that differ from the defaults."""
    defaults = get(name).defaults
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if v != defaults.get(k)]
    return name + (":" + ",".join(changed) if changed else "")


def gradient(spec: str | tuple[str, dict], A, loss):
    """∂L/∂A by method ``spec`` for probe loss ``loss`` at matrix A (numpy or torch, batched ok).

    Returns (grad, lam, U): the method's forward decides (λ, U) — exact eigh for most, power
    iteration for ``pi-forward`` — and the loss gradient is taken there. For a truncating method
    (see :func:`evaluate`) this is the gradient of the loss restricted to its kept pairs.
    """
    return evaluate(spec, A, loss)[:3]


def evaluate(spec: str | tuple[str, dict], A, loss):
    """(grad, lam, U, kept): :func:`gradient` plus the method's kept mask (``Method.kept``)."""
    name, params = parse_spec(spec) if isinstance(spec, str) else (spec[0], resolve_params(*spec))
    method = get(name)
    with _xp.errstate():
        lam, U, state = method.forward(A, **params)
        gU, glam = loss.grads(U, lam)
        return method.backward(state, gU, glam, **params), lam, U, method.kept(state, lam)


__all__ = ["Method", "REGISTRY", "NAMES", "get", "parse_spec", "format_spec", "resolve_params", "gradient", "evaluate", "assemble"]
