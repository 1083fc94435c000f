"""The shape every gradient method shares: a forward giving (λ, U, state) and a backward rule.

Convention (Ionescu, Vantzos & Sminchisescu, "Matrix backpropagation for deep networks with
structured layers", ICCV 2015, Prop. 2, written with our index order): for A = U diag(λ) Uᵀ,

    ∂L/∂A = U ( F ∘ (Uᵀ ∂L/∂U) + diag(∂L/∂λ) ) Uᵀ,   F_ij = 1/(λ_j − λ_i) (i ≠ j), F_ii = 0,

symmetrized, since A ranges over symmetric matrices. F is Ionescu's K̃ transposed. Kernel
methods differ only in how they approximate F; the others (power iteration, torch) replace the
whole rule.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np

from .. import _xp
from .._xp import Array

_F = TypeVar("_F", bound=Callable[..., Array])


def quiet(func: _F) -> _F:
    """Run a kernel with numpy's divide/invalid warnings off: infinities are its result, not a bug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _xp.errstate(args[0] if args else None):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def exact_forward(A: Array, **_) -> tuple[Array, Array, dict]:
    """Exact symmetric eigendecomposition (ascending λ) by LAPACK (:func:`stabkit._xp.eigh`)."""
    lam, U = _xp.eigh(A)
    return lam, U, {"U": U, "lam": lam}


def assemble(U: Array, F: Array, gU: Array, glam: Array) -> Array:
    """∂L/∂A = sym(U (F ∘ Uᵀ gU + diag(gλ)) Uᵀ) — the common final step (Prop. 2). The product is
    ``_xp.kernel_product``: an entry of Uᵀ gU that is exactly 0 at an exact tie (gU = 0 for a loss
    of λ alone, or a loss of the untied columns only) contributes 0, not ∞ · 0."""
    inner = _xp.kernel_product(F, _xp.T(U) @ gU) + _xp.diag_embed(glam)
    return _xp.sym(U @ inner @ _xp.T(U))


def pair_diff(lam: Array) -> Array:
    """Δ_ij = λ_j − λ_i, shape (..., d, d)."""
    return lam[..., None, :] - lam[..., :, None]


def pair_sign(lam: Array) -> Array:
    """sign(λ_j − λ_i), with exact ties broken by index order so the result is antisymmetric."""
    xp = _xp.namespace(lam)
    diff = pair_diff(lam)
    s = xp.sign(diff)
    return xp.where(s == 0, _xp.index_sign(diff), s)


def offdiag(F: Array) -> Array:
    """F with its diagonal set to zero (also where it held inf or NaN)."""
    xp = _xp.namespace(F)
    eye = _xp.eye_like(F)
    return xp.where(eye == 1, xp.zeros_like(F), F)


def safe_diagonal(x: Array, fill: float = 1.0) -> Array:
    """x with its diagonal replaced by ``fill``: a denominator whose diagonal (zeroed later by
    ``offdiag``) must not be 0, since 1/0 there would turn a second derivative into 0·∞ = NaN."""
    xp = _xp.namespace(x)
    eye = _xp.eye_like(x)
    return xp.where(eye == 1, xp.ones_like(x) * fill, x)


@dataclass(frozen=True)
class Domain:
    """The values a method parameter accepts: a finite int or float in [lo, hi] (lo excluded when
    ``lo_open``), or None where ``optional`` (None then means the method's own default rule)."""

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    optional: bool = False

    def contains(self, value: object) -> bool:
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, (bool, np.bool_))
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # an int is finite (isfinite(10**400) overflows)
            return False
        if self.kind is int and value != int(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    def __str__(self) -> str:
        if self.kind is bool:
            return "true or false"
        kind = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None and not self.lo_open:
            text = f"{kind} from {self.lo:g} to {self.hi:g}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '≥'} {self.lo:g}" + (f" and ≤ {self.hi:g}" if self.hi is not None else "")
        else:
            text = kind + (f" ≤ {self.hi:g}" if self.hi is not None else "")
        return text + (", or none (the default rule)" if self.optional else "")


def real(lo: float | None = None, hi: float | None = None, *, positive: bool = False, optional: bool = False) -> Domain:
    """A finite float domain; ``positive`` means > lo (lo defaults to 0 then)."""
    return Domain(float, 0.0 if positive and lo is None else lo, hi, lo_open=positive, optional=optional)


def integer(lo: int | None = None, hi: int | None = None) -> Domain:
    """An integer domain [lo, hi] (either end open-ended when None)."""
    return Domain(int, lo, hi)


def boolean() -> Domain:
    """A switch: true/false (also 1/0, yes/no in a spec)."""
    return Domain(bool)


#: The largest series degree (K) and power-iteration step count accepted: far past any useful
#: value (the papers use K ≤ 100, 19 steps), small enough that a typo (K=1e9) is refused instead
#: of running for hours.
MAX_TERMS = 1000
MAX_STEPS = 10_000


@dataclass(frozen=True)
class Caveat:
    """A finding of this project about a method, stated once where the method is defined and shown
    by ``stabkit monitor report`` for every call site whose backward is that method.

    ``what`` may name ``{backward}`` (the site's backward specs) and ``{n}`` (its matrix size);
    ``min_n``: the smallest matrix size the finding is about; a ``warning`` (the gradient is not
    what the layer needs) is listed before a ``note`` (worth knowing, maybe intended)."""

    rule: str
    what: str
    action: str
    evidence: str
    min_n: int = 0
    warning: bool = False


@dataclass(frozen=True)
class Method:
    """A registered gradient method: forward (A → λ, U, state) and backward (state, ∂U, ∂λ → ∂A).

    ``domains`` declares, per parameter in ``defaults``, the values it accepts; ``bind``
    checks every value against it once, where the method is chosen.
    """

    name: str
    backward: Callable
    defaults: dict = field(default_factory=dict)
    forward: Callable = exact_forward
    paper: str = ""
    summary: str = ""
    kept_rule: Callable | None = None  # (λ from forward, **params) → bool mask, for truncating methods
    domains: dict = field(default_factory=dict)
    #: F(λ; **params) ≈ 1/(λ_j − λ_i) for a kernel method (its whole backward is ``assemble`` with it)
    kernel: Callable | None = None
    #: True when the backward needs only the exact (λ, U) of the forward, not iterates (stabkit.torch)
    exact_state: bool = False
    #: (λ, **params) → F whose magnitude bounds the backward's coefficients, where it is not
    #: ``kernel`` itself (SVD-PI: its own F on the kept pairs; PI: the degree-T series); the
    #: monitor logs max |F|
    bound_kernel: Callable | None = None
    #: torch's own eigh/svd and their autograd, not a stabkit rule
    native: bool = False
    #: (A as the forward gets it, **params) → (start vectors as float64 columns, steps) where the
    #: forward is power iteration with deflation that stops short of the exact decomposition (random
    #: starts): its own function is L∘forward, whose truth ``reference.iterated_truth`` computes
    iteration: Callable | None = None
    #: the name of this method in the paper that introduced it, where a study compares to it
    paper_name: str | None = None
    #: the backward of the paper's released code for this row, where it is another spec than the
    #: method itself (e.g. SVD-Taylor's layer is ``taylor-song:K=9``); None: the method as registered
    paper_variant: str | None = None
    #: its backward's coefficients stay finite on its domain, ties included (a series, a cap on
    #: |F|, zeros on ties, overflow handling): the fix ``stabkit monitor report`` recommends for a
    #: non-finite gradient, and not needed where the backward already is one. The domain is the
    #: whole spectrum except for the series on λ + ε (``taylor``, ``taylor-authors``): λ + ε > 0
    #: there; where two shifted eigenvalues are exactly 0 (ε = 0, two zero eigenvalues) their F is ±∞
    bounded: bool = False
    #: what a user of this method should know when it runs on a layer (``stabkit monitor report``)
    caveat: Caveat | None = None

    def __post_init__(self) -> None:
        if set(self.domains) != set(self.defaults):
            raise TypeError(f"method {self.name!r}: domains {sorted(self.domains)} do not match parameters "
                            f"{sorted(self.defaults)}; declare one Domain per parameter (domains={{'K': integer(0, 1000)}})")
        for key, default in self.defaults.items():
            if not self.domains[key].contains(default):
                raise TypeError(f"method {self.name!r}: default {key}={default!r} is outside its domain")

    def __hash__(self) -> int:
        """By name (its dict fields are not hashable): a registered method is one object, and a
        :class:`Spec` holding it is a dict key and a ``torch.compile`` constant."""
        return hash(self.name)

    @property
    def approximate_forward(self) -> bool:
        """Whether its forward stops short of the exact decomposition (see ``iteration``)."""
        return self.iteration is not None

    @property
    def has_svd_rule(self) -> bool:
        """Whether ``stabkit.torch.svd`` can use it: a kernel rule, or torch's own."""
        return self.kernel is not None or self.native

    def kept(self, state: dict, lam: Array) -> Array:
        """bool (..., d): True for the eigenpairs the method keeps — ``state["kept"]`` from its
        forward, all True when absent. A truncating method's function is the decomposition
        restricted to these pairs (a spectral function f becomes f·1[kept])."""
        kept = state.get("kept")
        return self.kept_of(lam, None) if kept is None else kept

    def kept_of(self, lam: Array, params: dict | None) -> Array:
        """The kept mask from the λ the forward returned (the rule its forward applies); all True
        for a method without a ``kept_rule`` or when ``params`` is None."""
        kept = self.kept_rule(lam, **params) if self.kept_rule is not None and params is not None else None
        return _xp.true_like(lam) if kept is None else kept


def kernel_method(name: str, kernel: Callable, defaults: dict, paper: str, summary: str, domains: dict | None = None,
                  **fields) -> Method:
    """A method defined by its approximation F(λ; params) of the matrix 1/(λ_j − λ_i)."""

    def backward(state: dict, gU: Array, glam: Array, **params) -> Array:
        with _xp.errstate(state["U"]):
            return assemble(state["U"], kernel(state["lam"], **params), gU, glam)

    return Method(name, backward, defaults, paper=paper, summary=summary, domains=domains or {}, kernel=kernel,
                  exact_state=True, **fields)
