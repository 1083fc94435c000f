"""Method choices in the study kinds. Which methods a study looks at is data (its grid); where a
kind needs a default, it asks the registry here instead of naming methods. A grid's method specs
are parsed once (``methods.spec``) per grid when validated and once per cell when run; the
resulting :class:`~stabkit.methods.Spec` objects are what the kinds pass on."""

from __future__ import annotations

from .. import methods


def by_paper_name(*paper_names: str) -> list[str]:
    """Names of the registry methods that a paper calls ``paper_names`` (``Method.paper_name``:
    SVD, PI, SVD-PI, SVD-Taylor, SVD-Clip), in the order given."""
    out = []
    for paper_name in paper_names:
        out += [m.name for m in methods.REGISTRY.values() if m.paper_name == paper_name]
    return out


def native_names() -> list[str]:
    """Names of the registry methods that are the library's own decomposition and autograd."""
    return [m.name for m in methods.REGISTRY.values() if m.native]


def exact() -> methods.Spec:
    """The exact rule F_ij = 1/(λ_j − λ_i): the plain SVD/eigen backward of the papers."""
    return methods.spec(methods.EXACT)


def specs(values) -> list[methods.Spec]:
    """Each method spec (text or Spec) as a Spec: the one conversion of a grid's or a cell's list."""
    return [methods.spec(v) for v in values]
