"""``pi-authors``: the PI baseline back-propagated as the authors' released code does it.

Wang, Dang, Hu, Fua & Salzmann, "Backpropagation-Friendly Eigendecomposition", NeurIPS 2019 (PI
baseline), as released in github.com/cvlab-epfl/Power-Iteration-SVD (``torch_utils.py``,
``power_iteration_unstable.backward``, every public version; the same layer in
Robust-Differentiable-SVD). The forward is ``pi-forward``'s: power iteration with deflation
M_{k+1} = M_k − M_k u_k u_kᵀ from seeded random starts (pairs in ascending |λ|, not λ, on an
indefinite A; see ``power_iteration``). Reverse mode of one step
v_t = M v_{t−1} / ‖M v_{t−1}‖ is, with h_t = (I − v_t v_tᵀ) ∂v_t / ‖M v_{t−1}‖,

    ∂M += h_t v_{t−1}ᵀ,      ∂v_{t−1} = Mᵀ h_t      (``pi-forward``),

and the released layer hands back ∂v_{t−1} = M h_t instead. The two agree while M_k is symmetric —
the first stage, or a later one whose earlier stages converged — and differ once a stage deflates
with an unconverged u_k, since M_k u_k u_kᵀ is then not symmetric. The deflations and Rayleigh
quotients are differentiated exactly (autograd in the released layer). Scored against the truth of
its own forward (``pi-forward``'s function), it is not that function's gradient: the ``paper``
preset's PI row uses it to reproduce the authors' training, not as a method to recommend.
"""

from ._base import MAX_STEPS, Method, boolean, integer, real
from .power_iteration import _pi_forward, _pi_forward_bound, _pi_forward_iteration, _pi_forward_kept, backward


def _backward(state, gU, glam, **params):
    return backward(state, gU, glam, authors_step=True, **params)


METHOD = Method(
    "pi-authors", _backward, {"steps": 19, "seed": 0, "stop": False, "eps": 1e-4}, forward=_pi_forward,
    paper="Wang et al., NeurIPS 2019 (PI baseline), released code (step gradient through M, not Mᵀ)",
    summary="pi-forward with the released layer's backward: each step hands back M h, not Mᵀ h",
    kept_rule=_pi_forward_kept,
    domains={"steps": integer(1, MAX_STEPS), "seed": integer(0), "stop": boolean(), "eps": real(0.0, 1.0)},
    bound_kernel=_pi_forward_bound, iteration=_pi_forward_iteration,
)
