"""``analytic``: the exact eigenvector gradient, F_ij = 1/(λ_j − λ_i).

Ionescu, Vantzos & Sminchisescu, "Matrix backpropagation for deep networks with structured
layers", ICCV 2015, Prop. 2 (their K̃_ij = 1/(λ_i − λ_j) is our Fᵀ). Infinite at equal
eigenvalues, which is what makes training with it fail.
"""

from .._xp import Array
from ._base import kernel_method, quiet, offdiag, pair_diff, safe_diagonal


@quiet
def kernel(lam: Array) -> Array:
    return offdiag(1 / safe_diagonal(pair_diff(lam)))


METHOD = kernel_method("analytic", kernel, {}, "Ionescu et al., ICCV 2015, Prop. 2", "exact 1/(λ_j − λ_i)",
                       paper_name="SVD")
