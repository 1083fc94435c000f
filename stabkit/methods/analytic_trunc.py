"""``analytic-trunc`` (ε): the SVD baseline truncated at the first eigenvalue ≤ ε.

The SVD baseline of Wang, Dang, Hu, Fua & Salzmann, "Backpropagation-Friendly Eigendecomposition",
NeurIPS 2019 (Sec. 5), as the authors' ZCA layer runs it: going down from the largest, the
decomposition is cut at the first λ_k ≤ ε (σ_k of the SVD of the covariance), and only the pairs
above are used (``kept``). Its gradient is the exact (Ionescu et al., ICCV 2015, Prop. 2) gradient
of the loss restricted to those pairs:

    ∂L/∂A = sym(U (F ∘ Uᵀ ∂L/∂U + diag(kept·∂L/∂λ)) Uᵀ),  F_ik = kept_k/(λ_k − λ_i), F_kk = 0,

i.e. the analytic rule with the dropped pairs' own gradients removed. Default ε = 1e-4. (One
version of the authors' layer, ZCANormOrg in the Power-Iteration-SVD repository, keeps the first
pair ≤ ε as well and keeps a single pair when none is ≤ ε; this method is the plain reading
"truncated at σ ≤ ε".)
"""

from .. import _xp
from .._xp import Array
from ._base import Method, assemble, exact_forward, pair_diff, real


def kept_above(lam: Array, eps: float) -> Array:
    """Ascending λ (..., d): True above the first λ_k ≤ ε met going down from the largest."""
    return _xp.flip(_xp.cumall(_xp.flip(lam > eps)))


def _forward(A: Array, eps: float = 1e-4) -> tuple[Array, Array, dict]:
    lam, U, state = exact_forward(A)
    state["kept"] = kept_above(lam, eps)
    return lam, U, state


def backward(state: dict, gU: Array, glam: Array, eps: float = 1e-4, **_) -> Array:
    xp = _xp.namespace(glam)
    with _xp.errstate(glam):  # no numpy context on the torch path (torch.compile fullgraph)
        lam = state["lam"]
        kept = state["kept"] if "kept" in state else kept_above(lam, eps)
        diff = pair_diff(lam)
        col = kept[..., None, :] & (_xp.eye_like(diff) == 0)
        F = xp.where(col, 1 / xp.where(col, diff, xp.ones_like(diff)), xp.zeros_like(diff))
        return assemble(state["U"], F, gU, xp.where(kept, glam, xp.zeros_like(glam)))


METHOD = Method(
    "analytic-trunc", backward, {"eps": 1e-4}, forward=_forward,
    paper="Wang et al., NeurIPS 2019 (SVD baseline, truncated at σ ≤ ε)",
    summary="exact gradient of the decomposition cut at the first λ ≤ ε",
    kept_rule=lambda lam, eps=1e-4: kept_above(lam, eps), domains={"eps": real(0.0)}, exact_state=True,
)
