"""Invariants of the backward rules, as properties over generated spectra, bases and upstream gradients.

Each follows from a method's documented formula (module docstrings of ``stabkit.methods``):

* orthogonal equivariance — a rule computed from the exact (λ, U) and a kernel of λ alone (every
  ``exact_state`` method, ``pi-legacy``'s iterations from the exact eigenvectors, torch's own) gives
  Q G Qᵀ at Q A Qᵀ when the loss is rotated with A. ``pi-forward`` is left out: its random start
  vectors are fixed, not rotated with A, so its gradient is not equivariant;
* the eigenvalue part is exact in every rule on the exact (λ, U): ∂L/∂U = 0 gives U diag(kept·∂L/∂λ) Uᵀ
  (torch's own backward too, but only away from exact ties, where it forms ∞ · 0);
* scale covariance of the kernels, F(cλ; θ) = F(λ; θ_c)/c with the parameters rescaled as their
  formulas say (ε/c for Taylor's shift, cτ for the clip cap, ε/c² for the Lorentzian width, atol/c);
  so the rules whose F is homogeneous of degree −1 (analytic, taylor/taylor-authors at ε = 0,
  taylor-song, pade, torch; pi and analytic-trunc while their ε lies below the spectrum) scale the
  gradient of a loss of U alone by 1/c. Taylor with ε > 0, clip, lorentzian do not (their θ is fixed);
* linearity of every backward in (∂L/∂U, ∂L/∂λ);
* the numpy and torch paths of one method agree on generated spectra.
"""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import methods
from stabkit.losses import make_loss
from stabkit.torch import eigh

from .conftest import build

ASSEMBLED = [n for n in methods.NAMES if methods.get(n).exact_state]
#: specs with parameters that put the approximation to work on gaps ≥ 0.05 (cap 1/τ = 0.2, width √ε = 0.1,
#: a short series with a shift); all continuous in λ, so rounding cannot flip a branch
BUSY = ["clip:tau=5", "lorentzian:eps=0.01", "taylor:K=3,eps=0.1", "clip-authors:tau=5", "taylor-song:K=4"]
#: thresholds inside the generated spectra, so that pairs are dropped
TRUNCATING = ["analytic-trunc:eps=0.5", "pi:eps=0.05"]
EQUIVARIANT = [*ASSEMBLED, "torch", "pi-legacy", *BUSY]


def _orthogonal(d, seed):
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return Q * np.sign(np.diagonal(R))


@st.composite
def separated(draw, d_max=6, lo=0.5, gap=0.05):
    """Ascending λ ∈ [lo, 7], adjacent gaps in [gap, 1]: eigenvectors to ~eps/gap on any LAPACK."""
    d = draw(st.integers(2, d_max))
    first = draw(st.floats(lo, 1.0))
    steps = draw(st.lists(st.floats(gap, 1.0), min_size=d - 1, max_size=d - 1))
    return np.cumsum([first, *steps])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@settings(max_examples=40, deadline=None)
@given(lam=separated(), seed=st.integers(0, 2**31 - 1), name=st.sampled_from(EQUIVARIANT),
       loss_name=st.sampled_from(["sqrt", "eigvec"]))
def test_gradient_is_orthogonally_equivariant(lam, seed, name, loss_name):
    """L'(X) = L(QᵀXQ) with L' built on the rotated weight Q B Qᵀ (λ unchanged, U' = QU up to signs,
    which the losses ignore): ∇L'(QAQᵀ) = Q ∇L(A) Qᵀ."""
    d = lam.size
    A = build(lam, seed=seed)
    Q = _orthogonal(d, seed + 1)
    loss = make_loss(loss_name, d, seed=seed % 1000)
    rotated = make_loss(loss_name, d, seed=seed % 1000, weight=Q @ loss.weight @ Q.T)
    spec = methods.spec(name)
    g, _, _ = spec.gradient(A, loss)
    g_rot, _, _ = spec.gradient((Q @ A @ Q.T + (Q @ A @ Q.T).T) / 2, rotated)
    assert np.isfinite(g).all() and np.linalg.norm(g) > 0
    assert _rel(g_rot, Q @ g @ Q.T) <= 1e-9


@settings(max_examples=40, deadline=None)
@given(lam=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=6), seed=st.integers(0, 2**31 - 1),
       name=st.sampled_from([*ASSEMBLED, *BUSY, *TRUNCATING]))
def test_eigenvalue_part_is_exact_for_every_rule(lam, seed, name):
    """∂L/∂U = 0: ∂L/∂A = U diag(kept ∘ ∂L/∂λ) Uᵀ whatever F is — near-ties included (λ may repeat
    or nearly: F huge or infinite there, but it multiplies exact zeros). Not ``torch``: torch's own
    backward forms ∞ · 0 = NaN at an exact tie even then — the shipped baseline, kept as it is."""
    lam = np.sort(lam)
    A = build(lam, seed=seed)
    glam = np.random.default_rng(seed).standard_normal(lam.size)
    spec = methods.spec(name)
    lam_f, U, state = spec.forward(A)
    expected = (U * (glam * spec.kept(state, lam_f))) @ U.T
    got = spec.backward(state, np.zeros_like(A), glam)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13 * np.abs(glam).max())


# F(cλ; θ) = F(λ; θ_c)/c: (spec at λ, parameters θ_c at scale c)
SCALED = {
    "analytic": ({}, lambda c: {}),
    "taylor": ({"K": 7, "eps": 0.3}, lambda c: {"K": 7, "eps": 0.3 / c}),
    "taylor-authors": ({"K": 7, "eps": 0.3}, lambda c: {"K": 7, "eps": 0.3 / c}),
    "taylor-song": ({"K": 12}, lambda c: {"K": 12}),
    "pade": ({}, lambda c: {}),
    "clip": ({"tau": 4.0}, lambda c: {"tau": 4.0 * c}),
    "clip-authors": ({"tau": 4.0}, lambda c: {"tau": 4.0 * c}),
    "lorentzian": ({"eps": 0.01}, lambda c: {"eps": 0.01 / c**2}),
    "degenerate": ({"atol": 0.05, "rtol": 0.01}, lambda c: {"atol": 0.05 / c, "rtol": 0.01}),
}


def test_scaled_covers_every_kernel_method():
    assert set(SCALED) == {n for n in methods.NAMES if methods.get(n).kernel is not None}


@settings(max_examples=60, deadline=None)
@given(lam=st.lists(st.floats(0.05, 20.0), min_size=2, max_size=7), k=st.integers(-10, 10),
       name=st.sampled_from(sorted(SCALED)))
def test_kernel_scale_covariance(lam, k, name):
    """c = 2^k, so every scaled quantity is exact in floating point: cF(cλ; θ) = F(λ; θ_c) to the last
    bit, ties and the branches of clip and degenerate included."""
    lam, c = np.sort(lam), 2.0**k
    params, scaled = SCALED[name]
    kernel = methods.get(name).kernel
    F = kernel(lam, **scaled(c))
    np.testing.assert_allclose(c * kernel(c * lam, **params), F, rtol=1e-15, atol=0)


#: F homogeneous of degree −1 in λ (pi, analytic-trunc: also their kept mask, while ε < λ at both scales)
HOMOGENEOUS = ["analytic", "taylor", "taylor-authors", "taylor-song", "pade", "torch", "pi", "analytic-trunc"]


@settings(max_examples=40, deadline=None)
@given(lam=separated(), seed=st.integers(0, 2**31 - 1), c=st.floats(1 / 16, 16.0), name=st.sampled_from(HOMOGENEOUS))
def test_gradient_of_an_eigenvector_loss_scales_as_one_over_c(lam, seed, c, name):
    """L = Σ w_i u_iᵀ B u_i depends on U only, U(cA) = U(A) for c > 0: ∇L(cA) = ∇L(A)/c for a rule
    whose F is homogeneous of degree −1 (not Taylor with ε > 0, clip, lorentzian). c is any float
    (cA rounded), so this is no identity of exact power-of-2 scaling."""
    A = build(lam, seed=seed)
    loss = make_loss("eigvec", lam.size, seed=seed % 1000)
    spec = methods.spec(name)
    g, _, _ = spec.gradient(A, loss)
    g_c, _, _ = spec.gradient(c * A, loss)
    assert _rel(c * g_c, g) <= 1e-9


def test_a_fixed_shift_or_cap_breaks_the_one_over_c_scaling():
    """The contrast: taylor:eps=0.5 and clip:tau=2 on gaps below 1/τ are not homogeneous."""
    lam = np.array([1.0, 1.2, 1.5, 3.0])
    A, loss = build(lam, seed=4), make_loss("eigvec", 4, seed=4)
    for name in ("taylor:eps=0.5", "clip:tau=2", "lorentzian:eps=0.01"):
        g = methods.spec(name).gradient(A, loss)[0]
        g_c = methods.spec(name).gradient(4 * A, loss)[0]
        assert _rel(4 * g_c, g) > 1e-3, name


@settings(max_examples=40, deadline=None)
@given(lam=separated(), seed=st.integers(0, 2**31 - 1), a=st.floats(-3.0, 3.0), name=st.sampled_from(methods.NAMES))
def test_backward_is_linear_in_the_upstream_gradients(lam, seed, a, name):
    """backward(a·(gU₁, gλ₁) + (gU₂, gλ₂)) = a·backward(gU₁, gλ₁) + backward(gU₂, gλ₂), power iteration
    included (a reverse pass is linear in its seed); a fresh forward per call (torch frees its graph)."""
    A = build(lam, seed=seed)
    d = lam.size
    rng = np.random.default_rng(seed)
    gU1, gU2 = rng.standard_normal((2, d, d))
    gl1, gl2 = rng.standard_normal((2, d))
    spec = methods.spec(name)

    def back(gU, gl):
        return spec.backward(spec.forward(A)[2], gU, gl)

    b1, b2 = back(gU1, gl1), back(gU2, gl2)
    both = back(a * gU1 + gU2, a * gl1 + gl2)
    scale = abs(a) * np.abs(b1).max() + np.abs(b2).max()
    np.testing.assert_allclose(both, a * b1 + b2, rtol=0, atol=1e-12 * scale)


@settings(max_examples=30, deadline=None)
@given(lam=separated(d_max=5), seed=st.integers(0, 2**31 - 1), name=st.sampled_from(methods.NAMES),
       loss_name=st.sampled_from(["zca", "eigvec"]))
def test_torch_op_equals_numpy_twin_on_generated_spectra(lam, seed, name, loss_name):
    """stabkit.torch.eigh's gradient (float64) is the numpy rule's, on any well-separated spectrum."""
    A = build(lam, seed=seed)
    loss = make_loss(loss_name, lam.size, seed=seed % 1000)
    leaf = torch.from_numpy(A).requires_grad_(True)
    lam_t, U = eigh(leaf, method=name)
    loss.value(U, lam_t).backward()
    g_numpy, _, _ = methods.spec(name).gradient(A, loss)
    np.testing.assert_allclose(leaf.grad.numpy(), g_numpy, rtol=0, atol=1e-11 * np.abs(g_numpy).max())
