"""``degenerate`` (atol, rtol): analytic F, set to zero on numerically degenerate pairs.

F_ij = 0 where |λ_j − λ_i| < atol + rtol·max(|λ_i|, |λ_j|), else 1/(λ_j − λ_i).
This is the treatment of Kasim & Vinko's xitorch ("ξ-torch: differentiable scientific computing
library", 2020; Kasim, "Derivatives of partial eigendecomposition of a real symmetric matrix for
degenerate cases", arXiv:2011.04366). Kasim's result needs two assumptions: the loss is invariant
to rotations inside a degenerate eigenspace, *and* the perturbation of A keeps the degeneracy
(u_iᵀ dA u_j = 0 for a degenerate pair i ≠ j). So ∂L/∂A is exact only along perturbations
that do not split a tie: its u_i u_jᵀ component for every degenerate pair is dropped, not
computed. Rotation invariance alone is not enough: for L = ⟨W, U diag(λ) Uᵀ⟩ = ⟨W, A⟩ at
diag(1, 1, 2) the gradient is W with W_01 and W_10 set to 0, not W
(``tests/test_methods.py``). The same holds on a pair that is only numerically degenerate (a
gap below the tolerance), where it is an approximation. Neither assumption is checked here: xitorch's
backward returns NaN where the first fails (Uᵀ∂L/∂U not symmetric, beyond atol, on a degenerate pair),
this method drops those terms all the same. Defaults atol = eps^0.6, rtol = eps^0.4 of
the dtype. The max(|λ_i|, |λ_j|) (instead of |λ_i|) keeps F antisymmetric.
"""

from .. import _xp
from .._xp import Array, DType
from ._base import kernel_method, quiet, offdiag, pair_diff, real


def default_tolerances(dtype: DType) -> tuple[float, float]:
    """(atol, rtol) = (eps^0.6, eps^0.4) of a numpy or torch floating dtype."""
    eps = _xp.finfo_eps(dtype)
    return eps**0.6, eps**0.4


@quiet
def kernel(lam: Array, atol: float | None = None, rtol: float | None = None) -> Array:
    xp = _xp.namespace(lam)
    d_atol, d_rtol = default_tolerances(lam.dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    diff = pair_diff(lam)
    mag = xp.abs(lam)
    scale = xp.maximum(mag[..., :, None], mag[..., None, :])
    degenerate = xp.abs(diff) < atol + rtol * scale
    safe = xp.where(degenerate, xp.ones_like(diff), diff)
    return offdiag(xp.where(degenerate, xp.zeros_like(diff), 1 / safe))


METHOD = kernel_method(
    "degenerate", kernel, {"atol": None, "rtol": None},
    "Kasim, arXiv:2011.04366 (xitorch)", "analytic F, zero on degenerate pairs",
    domains={"atol": real(0.0, optional=True), "rtol": real(0.0, optional=True)}, bounded=True,
)
