"""The registry of gradient methods for A = U diag(λ) Uᵀ, one small module each.

``get(name)`` returns a :class:`Method`; ``parse_spec("taylor:K=19,eps=1e-4")`` turns the CLI
spelling into (name, params); ``gradient(spec, A, loss)`` runs a method end to end on a numpy
matrix. The same formula code runs on numpy arrays and torch tensors (``stabkit.torch``).
"""

from __future__ import annotations

from . import (analytic, analytic_trunc, clip, degenerate, lorentzian, pade, power_iteration, taylor, taylor_authors,
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
    )
}

NAMES = tuple(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(NAMES)}") from None


def resolve_params(name: str, params: dict | None = None) -> dict:
    """The method's defaults overridden by ``params``, checked and converted to the default's type."""
    method = get(name)
    merged = dict(method.defaults)
    for key, value in (params or {}).items():
        if key not in method.defaults:
            allowed = ", ".join(method.defaults) or "none"
            raise ValueError(f"method {name!r} has no parameter {key!r} (allowed: {allowed})")
        merged[key] = _convert(name, key, value, method.defaults[key])
    return merged


def _convert(name, key, value, default):
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    try:
        if isinstance(default, bool):
            return str(value).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"method {name!r}: parameter {key}={value!r} is not a number") from None


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"taylor:K=19,eps=1e-4"`` → ("taylor", {"K": 19, "eps": 1e-4}), validated."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"method spec {spec!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
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
