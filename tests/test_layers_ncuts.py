"""Normalized-cuts losses: input contract (degrees, E's shape), tensors saved for backward so
in-place edits are caught, first derivatives only."""

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import bad_matrices

D = torch.float64
E = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D)


def _W(seed=0):
    F = torch.rand(3, 2, dtype=D, generator=torch.Generator().manual_seed(seed)) + 0.2
    return F @ F.T


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
@pytest.mark.parametrize("label, W, match", bad_matrices(3, n=4), ids=[c[0] for c in bad_matrices(3, n=4)])
def test_bad_affinity_raises_input_error(fn, label, W, match):
    with pytest.raises(InputError, match=match):
        fn(W, E)


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_indicators_of_the_wrong_shape_raise_input_error(fn):
    with pytest.raises(InputError, match="indicators E"):
        fn(_W(), E[:2])


def test_zero_degree_node_raises_input_error():
    W = _W()
    W[2, :] = W[:, 2] = 0
    with pytest.raises(InputError, match="zero or negative degree"):
        layers.ncut_j1(W, E)


def test_in_place_edit_of_W_after_forward_is_caught():
    w = _W().requires_grad_()
    W = w * 1.0
    J = layers.ncut_j1(W, E, rank=2)
    W.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        J.backward()


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_second_derivative_is_refused(fn):
    w = _W().requires_grad_()
    (g,) = torch.autograd.grad(fn(w, E, rank=2) ** 2, w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (g * torch.ones_like(g)).sum().backward()


def test_indicators_and_weights_must_be_real_and_on_the_inputs_device():
    """A complex E was cast to its real part (torch's warning only); an E or λ on another device (here
    'meta') failed inside torch ('Cannot copy out of meta tensor')."""
    W = torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.5, 0.2], [0.1, 0.2, 1.0]], dtype=torch.float64)
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    for bad in (E.to(torch.complex128), E.to("meta")):
        for fn in (layers.ncut_j1, layers.ncut_j2):
            with pytest.raises(ValueError, match="expected real indicators E on W's device cpu"):
                fn(W, bad)
    with pytest.raises(ValueError, match="on cpu"):
        layers.low_rank_affinity(E, torch.ones(2, dtype=torch.float64, device="meta"))
    assert torch.isfinite(layers.ncut_j1(W, E.long()))  # integer indicators stay accepted


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_non_finite_indicators_and_weights_are_named_apart_from_w(fn):
    """A NaN in E, or an E finite in float64 whose 1e300 becomes inf in W's float32, said "ncut_j1: input
    has non-finite entries", the words a NaN in W gets: the message did not name E. Likewise λ."""
    bad = E.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match=rf"^{fn.__name__}: indicators E in torch.float64 .*non-finite"):
        fn(_W(), bad)
    with pytest.raises(InputError, match=rf"^{fn.__name__}: indicators E in torch.float32 .*1 Inf"):
        fn(_W().float(), E * torch.tensor([[1e300, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=D))
    with pytest.raises(InputError, match=r"^low_rank_affinity: weights λ: .*1 NaN of 2"):
        layers.low_rank_affinity(_W()[:, :2], torch.tensor([1.0, float("nan")], dtype=D))


def _closed_form_j(W, E, which):
    """J₁ or J₂ from pinv and E(EᵀE)⁻¹Eᵀ (E of full column rank): projectors onto range(M), range(W)
    and range(D^1/2 E), range(E)."""
    proj = lambda A: A @ torch.linalg.solve(A.T @ A, A.T)  # noqa: E731  full column rank
    if which == 2:
        return 0.5 * ((W @ torch.linalg.pinv(W) - proj(E)) ** 2).sum()
    deg = W.sum(-1)
    M = W / torch.outer(deg.sqrt(), deg.sqrt())
    return 0.5 * ((M @ torch.linalg.pinv(M) - proj(deg.sqrt()[:, None] * E)) ** 2).sum()


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("extra", ["empty cluster", "repeated column"])
def test_rank_deficient_indicators_project_onto_the_range_of_E(which, extra):
    """An empty cluster (a zero column of E) or a repeated column: Π_Ω, Π_Ψ are the projectors onto
    range(D^1/2 E), range(E). The layers kept k = E.shape[-1] singular values, the zero one's vector
    an arbitrary direction: J₂ 0.496 for 0.801 on this data, and J₁ a NaN gradient (1/σ = 1/0)."""
    F = torch.rand(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))  # W = FFᵀ: rank 3
    E2 = torch.zeros(6, 2, dtype=D)
    E2[:3, 0] = E2[3:, 1] = 1
    E3 = torch.cat([E2, torch.zeros(6, 1, dtype=D) if extra == "empty cluster" else E2[:, :1]], 1)
    fn = layers.ncut_j1 if which == 1 else layers.ncut_j2
    f = F.clone().requires_grad_()
    J = fn(f @ f.T, E3, rank=3)
    (g,) = torch.autograd.grad(J, f)
    truth = lambda F: _closed_form_j(F @ F.T, E2, which)  # noqa: E731  J of W(F) = FFᵀ, rank 3 throughout
    assert J.item() == pytest.approx(truth(F).item(), rel=1e-12)
    h, fd = 1e-6, torch.zeros_like(F)
    for i in range(6):
        for j in range(3):
            dF = torch.zeros_like(F)
            dF[i, j] = h
            fd[i, j] = (truth(F + dF) - truth(F - dF)) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)


def _projector_np(B):
    """Orthogonal projector onto range(B) (full column rank), B (BᵀB)⁻¹ Bᵀ in numpy."""
    import numpy as np

    B = np.asarray(B, dtype=np.float64)
    return B @ np.linalg.solve(B.T @ B, B.T)


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_batch_shapes_of_W_and_E_that_do_not_broadcast_raise_input_error(fn):
    """W (2, 3, 3) against E (3, 3, 2) failed inside torch ('The size of tensor a (2) must match …');
    batches that broadcast are accepted, each item its own J (J₂ here against numpy projectors)."""
    import numpy as np

    W = torch.stack([_W(0), _W(1)])
    with pytest.raises(InputError, match="batch"):
        fn(W, torch.stack([E, E, E]))
    Es = torch.stack([E, E.flip(0)])[:, None]                       # (2, 1, 3, 2) against W's (2,)
    J = layers.ncut_j2(W, Es)
    assert J.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            w, V = np.linalg.eigh(W[j].numpy())                    # W = F Fᵀ, F 3 × 2: rank 2
            PW = V[:, w > 1e-8 * w.max()] @ V[:, w > 1e-8 * w.max()].T
            ref = 0.5 * ((PW - _projector_np(Es[i, 0].numpy())) ** 2).sum()
            assert J[i, j].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_low_rank_factors_and_weights_that_do_not_broadcast_raise_input_error():
    F = torch.rand(2, 3, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="batch"):
        layers.low_rank_affinity(F, torch.ones(3, 2, dtype=D))
    lam = torch.tensor([[1.0, 2.0]], dtype=D)                      # (1, 2) broadcasts against (2,)
    torch.testing.assert_close(layers.low_rank_affinity(F, lam), F @ torch.diag(lam[0]) @ F.mT)


def _range_projector(B):
    return B @ torch.linalg.solve(B.mT @ B, B.mT)


@pytest.mark.parametrize("dtype, e, rtol", [(torch.float64, 0, 1e-10), (torch.float64, -900, 1e-10),
                                            (torch.float32, -90, 1e-3)], ids=["f64-1", "f64-2^-900", "f32-2^-90"])
def test_j1_gradient_of_a_small_affinity_is_finite_and_right(dtype, e, rtol):
    """J₁ does not change when W is scaled (nor M, nor range(D^1/2 E)), so for W = F diag(2^e λ) Fᵀ its
    gradient in F is the one at e = 0: against torch autograd of J₁ written with closed-form range
    projectors B(BᵀB)⁻¹Bᵀ (range M = range D^-1/2 F). The backward's δ^-3/2 overflowed (float64
    degrees below 1e-206, float32 below 2e-26) where ∂J/∂W ~ 1/δ does not: inf and NaN."""
    gen = torch.Generator().manual_seed(3)
    F = torch.rand(5, 2, dtype=D, generator=gen) + 0.1
    lam = torch.tensor([1.0, 0.5], dtype=D)
    E5 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=D)
    f = F.clone().requires_grad_()
    deg = ((f * lam) @ f.T).sum(-1)
    J = 0.5 * ((_range_projector(f / deg.sqrt()[:, None]) - _range_projector(E5 * deg.sqrt()[:, None])) ** 2).sum()
    (expected,) = torch.autograd.grad(J, f)
    f = F.to(dtype).requires_grad_()
    W = layers.low_rank_affinity(f, (lam * 2.0 ** e).to(dtype))
    (got,) = torch.autograd.grad(layers.ncut_j1(W, E5, rank=2), f)
    assert torch.isfinite(got).all()
    assert ((got.double() - expected).norm() / expected.norm()).item() < rtol


def test_degree_that_overflows_raises_input_error():
    """Finite float32 W whose row sums overflow (entries 2e38) failed inside torch.linalg.svd ('input
    matrix contained non-finite values'); J₁ is scale-invariant, so the advice is to scale W down."""
    W = torch.full((3, 3), 2e38, dtype=torch.float32)
    with pytest.raises(InputError, match="ncut_j1: .*degree.*overflows torch.float32"):
        layers.ncut_j1(W, E)
    # W = c·11ᵀ: M = Π_M = 11ᵀ/3 and equal degrees, so Π_Ω projects onto range E = span{e₁ + e₂, e₃}
    ones = torch.full((3, 3), 1.0 / 3.0, dtype=torch.float64)
    PE = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = 0.5 * ((ones - PE) ** 2).sum().item()
    assert layers.ncut_j1(W * 1e-30, E, rank=1).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fn, name", [(layers.ncut_j1, "ncut_j1"), (layers.ncut_j2, "ncut_j2")], ids=["j1", "j2"])
def test_a_bad_rank_is_named_by_the_loss(fn, name):
    """rank= outside [0, m] was reported as a 'projector:' error, a layer the caller did not call."""
    with pytest.raises(InputError, match=rf"^{name}: rank must be an integer in \[0, 3\], got 4"):
        fn(_W(), E, rank=4)


@pytest.mark.parametrize("fn", [layers.ncut_j1, layers.ncut_j2], ids=["j1", "j2"])
def test_a_rank_below_the_affinity_rank_refuses_the_backward(fn):
    """rank=2 on a full-rank 4 × 4 W truncates Π_M (Π_W) to the top two singular vectors, where Lemma 1 is
    not the derivative (on another random 4 × 4 W, J₁'s gradient along a random direction was −1.07
    against a central difference of −2.97; J₂: −1.14 against −2.70), silently. The backward now
    raises; the value is still computed."""
    from stabkit.errors import UnsupportedDerivativeError

    gen = torch.Generator().manual_seed(1)
    W = torch.rand(4, 4, dtype=D, generator=gen) + 0.1
    W = W + W.T
    E4 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=D)
    assert int(torch.linalg.matrix_rank(W)) == 4
    w = W.clone().requires_grad_()
    J = fn(w, E4, rank=2)
    assert torch.isfinite(J)
    with pytest.raises(UnsupportedDerivativeError, match=rf"{fn.__name__} backward: rank=2 is below the numerical rank 4"):
        J.backward()
