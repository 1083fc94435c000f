"""A method choice as one object: :class:`Spec` = a registered :class:`Method` bound to validated
parameters. It is made once at an edge (a CLI option, a study file's grid, a Python call) by
:func:`spec` and passed down as is; nothing below the edge parses or resolves a method again.

Text form (the one grammar of ``stabkit._assign``): ``name`` or ``name:key=value,...``, e.g.
``taylor:K=19,eps=1e-4``. ``str(spec)`` is the canonical text: only parameters that differ from
the method's defaults, in the method's parameter order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .. import _xp
from .._assign import split_assignments
from ._base import Domain, Method


class MethodSpecError(ValueError):
    """A method spec that names no registered method, or a parameter the method does not have or
    outside its domain. The message names the method, the parameter, the value and what is allowed."""


def _text(value) -> str:
    """A parameter as a user writes it: ``stop=true`` (TOML, the CLI), not Python's ``True``; a float
    in its short ``g`` form where that reads back to the same float, else in full (``repr``), so the
    canonical text parses back to the same Spec (``tau=123456789.5``, not ``tau=1.23457e+08``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)

@dataclass(frozen=True)
class Spec:
    """A method bound to its parameters (defaults filled in, each checked against its domain).

    Frozen and hashable, so it can be a constant of ``torch.compile`` and a key of a dict. Its
    calls run the method with its parameters; ``params`` is a fresh dict every time.
    """

    method: Method
    items: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def params(self) -> dict:
        return dict(self.items)

    def __str__(self) -> str:
        defaults = self.method.defaults
        changed = [f"{k}={_text(v)}" for k, v in self.items if v != defaults.get(k)]
        return self.name + (":" + ",".join(changed) if changed else "")

    def __repr__(self) -> str:
        return f"Spec({str(self)!r})"

    def replace(self, **params) -> "Spec":
        """The same method with some parameters changed (validated like any other)."""
        return bind(self.method, {**self.params, **params})

    # --- running the method -------------------------------------------------------------------
    def forward(self, A):
        """(λ, U, state): the method's forward at A (numpy or torch, batched)."""
        return self.method.forward(A, **self.params)

    def backward(self, state: dict, gU, glam):
        """∂L/∂A from the forward's state and the incoming ∂L/∂U, ∂L/∂λ."""
        return self.method.backward(state, gU, glam, **self.params)

    def iteration(self, A):
        """(start vectors, steps) of its power-iteration forward at A (``Method.iteration``), or None."""
        return None if self.method.iteration is None else self.method.iteration(A, **self.params)

    def kept(self, state: dict, lam):
        return self.method.kept(state, lam)

    def kept_of(self, lam):
        return self.method.kept_of(lam, self.params)

    def kernel(self, lam):
        """F(λ) of a kernel method; None for a method that replaces the whole rule."""
        return None if self.method.kernel is None else self.method.kernel(lam, **self.params)

    def bound(self, lam):
        """max_ij |F_ij| per matrix (shape λ.shape[:-1]): the largest coefficient the backward can
        multiply an incoming gradient by, NaN counted as ∞; None where the method has no F."""
        if self.method.bound_kernel is not None:  # power iteration's F: finite wherever λ is
            F = abs(self.method.bound_kernel(lam, **self.params))
        elif self.method.kernel is not None:
            F = abs(self.method.kernel(lam, **self.params))
            F = _xp.namespace(F).nan_to_num(F, nan=math.inf, posinf=math.inf)  # posinf: its default is the largest float
        else:
            return None
        return _xp.amax(F, (-2, -1), keepdims=False)

    def evaluate(self, A, loss):
        """(grad, lam, U, kept) for probe loss ``loss`` at A: the forward decides (λ, U), the loss
        gradient is taken there; a truncating method's grad is that of the loss on its kept pairs.

        A numpy A meets the input contract of ``stabkit.torch.eigh`` (``validation.check_symmetric``:
        InputError for NaN/Inf, a dtype other than float32/float64, a non-square or non-symmetric A);
        a tensor is taken as is (``stabkit.torch`` checks its own calls). Either way, InputError if
        ``loss`` is not a probe loss (``stabkit.losses.make_loss``; a loss name is refused, as by
        ``ground_truth``) or was built for another matrix size d than A's."""
        from ..errors import InputError  # here: stabkit.errors imports this module

        if not _xp.is_torch(_xp.namespace(A)):
            from ..validation import check_symmetric

            check_symmetric(A)
            A = np.asarray(A)  # what was checked: a list or np.matrix as an ndarray, in native byte order
            A = A.astype(A.dtype.newbyteorder("="), copy=False)
        if not callable(getattr(loss, "grads", None)):  # e.g. a loss name: ground_truth refuses it alike
            raise InputError(f"method '{self}': loss must be a probe loss "
                             f"(stabkit.losses.make_loss(name, {A.shape[-1]})), got {loss!r}")
        weight = getattr(loss, "weight", None)
        if weight is not None and A.shape[-1:] != weight.shape[-1:]:
            raise InputError(f"method '{self}': the {getattr(loss, 'name', 'probe')} loss is built for d = {weight.shape[-1]} "
                             f"but A is {' × '.join(map(str, A.shape))} (d = {A.shape[-1]}): make the loss for A's size")
        with _xp.errstate(A):
            lam, U, state = self.forward(A)
            gU, glam = loss.grads(U, lam)
            return self.backward(state, gU, glam), lam, U, self.method.kept(state, lam)

    def gradient(self, A, loss):
        """(grad, lam, U): :meth:`evaluate` without the kept mask."""
        return self.evaluate(A, loss)[:3]


def get(name: str) -> Method:
    from . import REGISTRY, NAMES

    try:
        return REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name (a list)
        raise MethodSpecError(f"unknown method {name!r}: choose one of {', '.join(NAMES)}") from None


def bind(method: Method | str, params: Mapping | None = None) -> Spec:
    """A :class:`Spec` from a method (or its name) and parameter values (text or numbers), each
    converted to its domain's type and checked; MethodSpecError naming what is wrong otherwise."""
    method = method if isinstance(method, Method) else get(method)
    if params is not None and not isinstance(params, Mapping):
        raise MethodSpecError(f"method {method.name!r}: parameters must be a mapping such as {{'K': 19}}, got {params!r}")
    merged = dict(method.defaults)
    for key, value in (params or {}).items():
        if key not in method.defaults:
            allowed = ", ".join(method.defaults) or "none"
            raise MethodSpecError(f"method {method.name!r} has no parameter {key!r} (allowed: {allowed})")
        domain = method.domains[key]
        converted = _convert(method.name, key, value, domain)
        if not domain.contains(converted):
            raise MethodSpecError(f"method {method.name!r}: parameter {key}={value} is out of range (must be {domain})")
        merged[key] = converted
    return Spec(method, tuple(merged.items()))


def parse(text: str) -> Spec:
    """``"taylor:K=19,eps=1e-4"`` → Spec(taylor, K=19, eps=1e-4), validated."""
    name, colon, rest = str(text).partition(":")
    base, paren, inside = name.partition("(")
    if paren and not colon and inside.rstrip().endswith(")"):  # "taylor(K=9, eps=1e-3)": a call's spelling
        params = ",".join(item.strip() for item in inside.rstrip()[:-1].split(",") if item.strip())
        written = f"{base.strip()}:{params}" if params else base.strip()
        raise MethodSpecError(f"method spec {text!r}: write name:key=value,key=value, e.g. {written!r}")
    items = rest.split(",") if colon else []
    if any(not item.strip() for item in items):  # "taylor:" or "taylor:K=3,," : a parameter left out
        raise MethodSpecError(f"method spec {text!r} has an empty parameter: write name:key=value,key=value")
    try:
        params = split_assignments(items, f"method spec {text!r}")
    except ValueError as err:
        raise MethodSpecError(str(err)) from None
    return bind(name.strip(), params)


def spec(value: "Spec | str | Method | tuple[str, Mapping]") -> Spec:
    """The one edge conversion: a Spec passes through unchanged; text is parsed; a Method or a
    (name, params) pair is bound."""
    if isinstance(value, Spec):
        return value
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, Method):
        return bind(value)
    if isinstance(value, tuple) and len(value) == 2:
        return bind(*value)
    raise MethodSpecError(f"a method spec is text like 'taylor:K=19' or a Spec, got {value!r}")


def _convert(name: str, key: str, value, domain: Domain):
    """Text or number → the domain's type (None stays None; the domain decides whether it may)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if domain.kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, (bool, np.bool_)) or text in ("true", "false", "1", "0", "yes", "no"):
            return bool(value) if isinstance(value, (bool, np.bool_)) else text in ("true", "1", "yes")
        raise MethodSpecError(f"method {name!r}: parameter {key}={value} is not a switch (must be {domain})")
    if domain.kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if domain.kind is int and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)  # exact past 2**53, where float() would round
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except OverflowError:  # an int past the float range (10**400): out of the domain, as the text "1e400" is
        number = math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        raise MethodSpecError(f"method {name!r}: parameter {key}={value} is not a number (must be {domain})") from None
    if domain.kind is int:
        if not math.isfinite(number) or number != int(number):
            raise MethodSpecError(f"method {name!r}: parameter {key}={value} is not an integer (must be {domain})")
        return int(number)
    return number
