"""SVD-PI (``pi``) and the authors' conventions as named variants, each pinned by an independent formula."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stabkit import methods
from stabkit.losses import make_loss
from stabkit.methods import taylor, taylor_authors
from stabkit.torch import eigh_kept

from .conftest import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def paper_rule(lam, eps):
    """NeurIPS 2019 Sec. 4 / authors' ZCANormPI, written out: from the largest down, keep pair k
    while λ_k > ε and γ_k = (Σ of λ_k and the larger ones) / Σλ < 1 − ε; ascending mask."""
    lam = np.asarray(lam, dtype=np.float64)
    kept = np.zeros(lam.size, bool)
    for n, k in enumerate(range(lam.size - 1, -1, -1)):
        gamma = lam[k:].sum() / lam.sum()
        if not (lam[k] > eps and gamma < 1 - eps):
            break
        kept[k] = True
    return kept


def plain_svd_pi_objective(A, gU, glam, kept, steps=19):
    """Autograd through a plain SVD-PI: for the kept pairs, largest first, T power-iteration steps
    from the exact eigenvector (a constant), Rayleigh quotient, deflation M ← M − M v vᵀ."""
    _, U0 = torch.linalg.eigh(A.detach())
    M, total = A, 0.0
    for k in range(A.shape[-1] - 1, -1, -1):
        if not kept[..., k].any():
            break
        v = U0[..., :, k]
        for _ in range(steps):
            w = (M @ v[..., :, None])[..., 0]
            v = w / w.norm(dim=-1, keepdim=True)
        Mv = (M @ v[..., :, None])[..., 0]
        term = (v * gU[..., :, k]).sum(-1) + (v * Mv).sum(-1) * glam[..., k]
        total = total + torch.where(kept[..., k], term, torch.zeros_like(term)).sum()
        M = M - Mv[..., :, None] * v[..., None, :]
    return total


@pytest.mark.parametrize("d, steps", [(5, 19), (8, 19), (8, 3)])
def test_pi_gradient_is_autograd_through_its_truncated_forward(d, steps):
    gen = torch.Generator().manual_seed(d)
    X = torch.randn(3, d, 2 * d, generator=gen, dtype=torch.float64)
    A = (X @ X.mT / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)).requires_grad_(True)
    gU = torch.randn(3, d, d, generator=gen, dtype=torch.float64)
    glam = torch.randn(3, d, generator=gen, dtype=torch.float64)
    lam, U, kept = eigh_kept(A, "pi", steps=steps)
    expected_kept = np.stack([paper_rule(x, 1e-4) for x in torch.linalg.eigvalsh(A.detach()).numpy()])
    np.testing.assert_array_equal(kept.numpy(), expected_kept)
    ours = torch.autograd.grad(torch.where(kept, (U * gU).sum(-2) + lam * glam, 0.0).sum(), A)[0]
    (auto,) = torch.autograd.grad(plain_svd_pi_objective(A, gU, glam, kept, steps), A)
    auto = (auto + auto.mT) / 2
    assert float((ours - auto).norm() / auto.norm()) < 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-7, 10.0), min_size=1, max_size=9), st.sampled_from([1e-4, 1e-2, 0.1]))
def test_pi_kept_pairs_follow_the_papers_energy_rule(values, eps):
    lam, _, state = methods.get("pi").forward(build(np.sort(np.array(values))), steps=19, eps=eps)
    gammas = np.cumsum(lam[::-1]) / lam.sum()
    # a γ_k or λ_k within rounding of its threshold may go either way: not this test's subject
    assume(np.abs(gammas - (1 - eps)).min() > 1e-9 and np.abs(lam - eps).min() > 1e-9 * eps)
    np.testing.assert_array_equal(state["kept"], paper_rule(lam, eps))
    assert not state["kept"][0]  # γ of the smallest pair is 1: it is always dropped


def test_paper_energy_rule_differs_from_legacy_by_one_pair():
    """The issue's off-by-one: γ_k includes λ_k (paper) — stabkit's old rule excluded it."""
    lam = np.array([0.05, 0.5, 1.0, 2.0, 5.0])
    A = build(lam, seed=1)
    _, _, st_pi = methods.get("pi").forward(A, eps=0.1)
    # Σλ = 8.55: γ(5) = 0.58, γ(2) = 0.82, γ(1) = 8/8.55 = 0.94 ≥ 1 − ε: the paper stops at λ = 1
    np.testing.assert_array_equal(st_pi["kept"], [False, False, False, True, True])
    _, _, st_old = methods.get("pi-legacy").forward(A, eps=0.1)
    assert "kept" not in st_old  # legacy: a full forward
    # the old rule summed only the larger pairs: 7/8.55 = 0.82 < 0.9 kept λ = 1, stopped at 0.5
    np.testing.assert_array_equal(st_old["active"], [False, False, True, True, True])


def test_pi_stops_at_an_eigenvalue_at_or_below_eps_even_where_the_energy_rule_would_go_on():
    """NeurIPS 2019 Sec. 4: λ_k ≤ ε breaks on its own. λ = (.04, .045, .05, .055, 1), ε = .06: the pairs
    below .055 still hold .135 > ε·Σλ = .0714, so only the λ rule stops SVD-PI after the top pair."""
    lam = np.array([0.04, 0.045, 0.05, 0.055, 1.0])
    _, _, state = methods.get("pi").forward(build(lam, seed=2), eps=0.06)
    np.testing.assert_array_equal(state["kept"], [False, False, False, False, True])
    np.testing.assert_array_equal(state["kept"], paper_rule(np.linalg.eigvalsh(build(lam, seed=2)), 0.06))


def test_pi_legacy_stops_at_an_eigenvalue_at_or_below_eps():
    """``pi-legacy``'s λ_k ≤ ε break: λ = (5, 6, 7)·1e-5 and 0.1 with ε = 1e-4 — its energy rule alone
    (larger pairs < (1 − ε)Σλ) would keep all four; λ = 7e-5 ≤ ε stops it after the top pair."""
    _, _, state = methods.get("pi-legacy").forward(build([5e-5, 6e-5, 7e-5, 0.1], seed=1), eps=1e-4)
    np.testing.assert_array_equal(state["active"], [False, False, False, True])


def test_pi_legacy_batch_equals_each_matrix_alone():
    """A batch whose matrices keep different numbers of pairs (λ ≤ ε drops two in the first, none in
    the second): the stages iterated must cover the matrix that keeps most, so each gradient is its own."""
    A = np.stack([build([1e-6, 2e-6, 1.0, 2.0, 4.0], seed=3), build([0.5, 1.0, 2.0, 3.0, 5.0], seed=4)])
    rng = np.random.default_rng(2)
    gU, glam = rng.standard_normal((2, 5, 5)), rng.standard_normal((2, 5))
    spec = methods.spec("pi-legacy")
    _, _, state = spec.forward(A)
    batch = spec.backward(state, gU, glam)
    for b in range(2):
        alone = spec.backward(spec.forward(A[b])[2], gU[b], glam[b])
        np.testing.assert_allclose(batch[b], alone, rtol=0, atol=1e-12 * np.abs(alone).max())


def test_pi_forward_start_vectors_are_the_documented_integer_hash():
    """``start_vectors``: an LCG step on (row·d + column, seed) mod 2^31, then xor-shift-multiply rounds,
    mapped to [−½, ½) and normalised per column — recomputed here in Python integers (d = 4, seed = 7)."""
    from stabkit.methods.power_iteration import start_vectors

    d, seed, mod = 4, 7, 2 ** 31
    want = np.empty((d, d))
    for row in range(d):
        for col in range(d):
            x = ((row * d + col) * 1103515245 + seed * 2531011 + 0x91) % mod
            for multiplier in (0x2C1B3C6D, 0x297A2D39):
                x = ((x ^ (x >> 15)) * multiplier) % mod
            want[row, col] = (x ^ (x >> 15)) / mod - 0.5
    want /= np.sqrt((want ** 2).sum(0))
    np.testing.assert_allclose(start_vectors(np.zeros((d, d)), seed), want, rtol=1e-15, atol=1e-16)


def test_kept_accessor_and_eigh_kept_for_non_truncating_methods():
    A = torch.tensor(build([1.0, 2.0, 3.0]))
    for name in ("analytic", "taylor", "torch"):
        _, _, kept = eigh_kept(A, name)
        assert kept.dtype == torch.bool and kept.all()
    lam, U, state = methods.get("analytic").forward(A.numpy())
    assert methods.get("analytic").kept(state, lam).all()
    with pytest.raises(ValueError, match="square"):
        eigh_kept(torch.zeros(2, 3), "pi")
    # the forward's state and the rule eigh_kept applies to the returned λ agree
    A = build([1e-6, 1e-3, 0.5, 1.0, 3.0], seed=2)
    for spec in ("pi", "pi:eps=0.2", "analytic-trunc:eps=0.01", "pi-forward:stop=true,steps=60"):
        spec = methods.parse(spec)
        lam, _, state = spec.forward(A)
        np.testing.assert_array_equal(state["kept"], spec.kept_of(lam))
        np.testing.assert_array_equal(state["kept"], eigh_kept(torch.tensor(A), spec.name, **spec.params)[2].numpy())
        np.testing.assert_array_equal(state["kept"], eigh_kept(torch.tensor(A), spec)[2].numpy())


def test_pi_forward_stop_rule_of_the_authors_pi_baseline():
    """stop=true: after the first stage, stop at a Rayleigh quotient < ε or above the previous one."""
    lam_small = np.array([1e-6, 1.0, 2.0, 4.0])
    _, _, state = methods.get("pi-forward").forward(build(lam_small, seed=3), steps=60, stop=True, eps=1e-4)
    np.testing.assert_array_equal(state["kept"], [False, True, True, True])
    # power iteration finds the dominant |λ| = 5 first (λ̂ = −5); the next stage's 3 > −5 stops it
    lam_neg = np.array([-5.0, 1.0, 2.0, 3.0])
    lam_hat, _, state = methods.get("pi-forward").forward(build(lam_neg, seed=3), steps=200, stop=True, eps=1e-4)
    assert lam_hat[-1] == pytest.approx(-5.0)
    np.testing.assert_array_equal(state["kept"], [False, False, False, True])
    _, _, free = methods.get("pi-forward").forward(build(lam_neg, seed=3), steps=200)
    assert "kept" not in free  # default: no stopping rule


def test_pi_forward_stop_gradient_is_its_reverse_mode():
    A = torch.tensor(build(np.array([1e-6, 1.0, 2.0, 4.0]), seed=3), requires_grad=True)
    method = methods.get("pi-forward")
    lam, U, state = method.forward(A, steps=30, seed=0, stop=True, eps=1e-4)
    rng = np.random.default_rng(1)
    gU, glam = torch.tensor(rng.standard_normal((4, 4))), torch.tensor(rng.standard_normal(4))
    objective = torch.where(state["kept"], (U * gU).sum(0) + lam * glam, 0.0).sum()
    (auto,) = torch.autograd.grad(objective, A)
    hand = method.backward(state, gU, glam).detach()
    auto = auto.detach()
    assert float((hand - (auto + auto.T) / 2).norm() / auto.norm()) < 1e-12


class _ReleasedStep(torch.autograd.Function):
    """One step v ↦ M v / ‖M v‖ whose backward hands the gradient back as the released PI layer
    does: ∂M = h vᵀ and ∂v = M h (reverse mode would be Mᵀ h), h = (I − v′v′ᵀ) ∂v′ / ‖M v‖."""

    @staticmethod
    def forward(ctx, M, v):
        w = M @ v
        norm = w.norm()
        out = w / norm
        ctx.save_for_backward(M, v, out, norm)
        return out

    @staticmethod
    def backward(ctx, g):
        M, v, out, norm = ctx.saved_tensors
        h = (g - out * (out @ g)) / norm
        return torch.outer(h, v), M @ h


def released_pi_objective(A, starts, gU, glam, steps):
    """⟨gU, U⟩ + ⟨glam, λ⟩ through the released PI layer: stages largest first from ``starts``,
    ``steps`` steps of :class:`_ReleasedStep`, Rayleigh quotient, deflation M ← M − M v vᵀ."""
    M, total = A, 0.0
    for k in range(A.shape[-1] - 1, -1, -1):
        v = starts[:, k]
        for _ in range(steps):
            v = _ReleasedStep.apply(M, v)
        Mv = M @ v
        total = total + v @ gU[:, k] + (v @ Mv) * glam[k]
        M = M - torch.outer(Mv, v)
    return total


@pytest.mark.parametrize("seed", [0, 7])
def test_pi_authors_is_autograd_through_the_released_layer_and_not_pi_forward_once_a_stage_is_unconverged(seed):
    # near-tied pairs and 4 steps: no stage converges, so every deflated M_k is not symmetric
    A = torch.tensor(build(np.array([0.5, 0.52, 1.0, 1.04, 1.1]), seed=5), requires_grad=True)
    steps = 4
    rng = np.random.default_rng(seed)
    gU, glam = torch.tensor(rng.standard_normal((5, 5))), torch.tensor(rng.standard_normal(5))
    starts = torch.as_tensor(methods.power_iteration.start_vectors(A.detach(), seed))
    (auto,) = torch.autograd.grad(released_pi_objective(A, starts, gU, glam, steps), A)
    auto = (auto + auto.T) / 2
    grads = {}
    for name in ("pi-authors", "pi-forward"):
        method = methods.get(name)
        lam, U, state = method.forward(A.detach(), steps=steps, seed=seed)
        grads[name] = method.backward(state, gU, glam, steps=steps, seed=seed)
    assert float((grads["pi-authors"] - auto).norm() / auto.norm()) < 1e-12
    assert float((grads["pi-forward"] - auto).norm() / auto.norm()) > 1e-3
    # from the largest pair alone only the first stage (M = A, symmetric) is differentiated: both agree
    only_first = torch.zeros(5, 5, dtype=torch.float64)
    only_first[:, 4] = gU[:, 4]
    first = [methods.get(name).backward(methods.get(name).forward(A.detach(), steps=steps, seed=seed)[2],
                                        only_first, glam * 0, steps=steps, seed=seed) for name in ("pi-authors", "pi-forward")]
    assert float((first[0] - first[1]).norm() / first[1].norm()) < 1e-13


def test_taylor_authors_ties_have_the_same_sign():
    """Released code: F_ij = +(1/λ_hi) Σ_{k≤K} (λ_lo/λ_hi)^k when λ_j ≥ λ_i, else −…: both entries of
    an exact tie are +(K+1)/λ; ``taylor`` (default) keeps them antisymmetric."""
    lam = np.array([0.5, 1.3, 1.3, 2.0])
    K = 9
    F = taylor_authors.kernel(lam, K=K)
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i != j:
                hi, lo = max(lam[i], lam[j]), min(lam[i], lam[j])
                expected[i, j] = (1 if lam[j] >= lam[i] else -1) * sum((lo / hi) ** k for k in range(K + 1)) / hi
    np.testing.assert_allclose(F, expected, rtol=1e-14)
    assert F[1, 2] == F[2, 1] == pytest.approx(10 / 1.3)
    F_clean = taylor.kernel(lam, K=K)
    assert F_clean[1, 2] == -F_clean[2, 1]
    off_tie = np.ones((4, 4), bool)
    off_tie[1, 2] = off_tie[2, 1] = False
    np.testing.assert_array_equal(F[off_tie], F_clean[off_tie])


def test_analytic_trunc_is_the_exact_gradient_of_the_decomposition_cut_at_eps():
    lam = np.array([1e-6, 5e-5, 0.3, 1.0, 2.0])
    A = build(lam, seed=5)
    loss = make_loss("zca", 5, seed=2)
    g, lam_np, U, kept = methods.spec("analytic-trunc").evaluate(A, loss)
    np.testing.assert_array_equal(kept, [False, False, True, True, True])
    # Daleckii–Krein for f·1[λ > ε], written out here
    f = np.where(kept, lam_np ** -0.5, 0.0)
    df = np.where(kept, -0.5 * lam_np ** -1.5, 0.0)
    D = (f[:, None] - f[None, :]) / (lam_np[:, None] - lam_np[None, :] + np.eye(5))
    D[np.diag_indices(5)] = df
    Gs = (loss.weight + loss.weight.T) / 2
    expected = U @ (D * (U.T @ Gs @ U)) @ U.T
    np.testing.assert_allclose(g, expected, atol=1e-11 * np.abs(expected).max())
    # a larger ε cuts higher: everything from the first λ ≤ ε down
    _, _, _, kept2 = methods.spec("analytic-trunc:eps=0.5").evaluate(A, loss)
    np.testing.assert_array_equal(kept2, [False, False, False, True, True])


def test_o2p_principal_vector_scoring_refuses_a_dropped_principal_pair():
    """pi's function on a spectrum where the top pair holds ≥ 1 − ε of the energy has no principal
    vector (γ_1 ≥ 1 − ε drops it): the o2p study records that instead of scoring a zero gradient."""
    from stabkit.studies.o2p_stability import _pc_grad

    rng = np.random.default_rng(0)
    B, w = rng.standard_normal((3, 3)), rng.standard_normal(3)
    with pytest.raises(ValueError, match="drops the principal eigenpair"):
        _pc_grad(build([1e-5, 2e-5, 1.0]), B, w, "pi", torch.float64)
    g = _pc_grad(build([0.2, 0.5, 1.0]), B, w, "pi", torch.float64)
    assert np.isfinite(g).all()


class _SeriesPI(torch.autograd.Function):
    """Identity forward on an exact eigenvector v; backward ∂M = (Σ_{s<n} (M/‖Mv‖)^s (I − vvᵀ)/‖Mv‖) ∂v vᵀ —
    the n-term geometric-series form of the power-iteration gradient (the form of ``power_iteration_once``
    in the authors' Power-Iteration-SVD code, whose default num_iter = 19 sums n = 20 terms)."""

    @staticmethod
    def forward(ctx, M, v, n):
        ctx.save_for_backward(M, v)
        ctx.n = n
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        M, v = ctx.saved_tensors
        norm = (M @ v).norm()
        term = (torch.eye(M.shape[0], dtype=M.dtype) - v @ v.T) / norm
        total = term.clone()
        for _ in range(ctx.n - 1):
            term = M @ term / norm
            total = total + term
        return total @ g @ v.T, None, None


@pytest.mark.parametrize("n", [10, 20])
def test_pi_steps_equal_the_geometric_series_layer_through_a_truncated_whitening(n):
    """T power-iteration steps from the exact start = an n = T-term series per stage (with deflation
    and the truncated whitening W = Σ_kept λ^-½ v vᵀ around it): ``pi:steps=20`` is the authors' layer
    at its default (num_iter = 19, 20 terms), ``pi:steps=10`` Robust-Differentiable-SVD's copy."""
    d = 6
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(d, 2 * d, generator=gen, dtype=torch.float64)
    A = (X @ X.T / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)).requires_grad_(True)
    G = torch.randn(d, d, generator=gen, dtype=torch.float64)
    _, U0 = torch.linalg.eigh(A.detach())
    kept = paper_rule(torch.linalg.eigvalsh(A.detach()).numpy(), 1e-4)
    M, W = A, torch.zeros(d, d, dtype=torch.float64)
    for k in range(d - 1, -1, -1):
        if not kept[k]:
            break
        v = _SeriesPI.apply(M, U0[:, k:k + 1].clone(), n)
        lam = (M @ v).T @ v
        W = W + lam.rsqrt() * (v @ v.T)
        M = M - M @ v @ v.T
    (expected,) = torch.autograd.grad((G * W).sum(), A)
    lam, U, kp = eigh_kept(A, "pi", steps=n)
    W_pi = (U * (torch.where(kp, lam, torch.ones_like(lam)).rsqrt() * kp)) @ U.T
    (ours,) = torch.autograd.grad((G * W_pi).sum(), A)
    expected = (expected + expected.T) / 2
    assert float((ours - expected).norm() / expected.norm()) < 1e-12


@pytest.mark.parametrize("lam, spec", [
    ([1.5e-4, 1.6e-4, 1e-3, 1.0], "pi"),       # the review's spectrum: max|F| 70 660, an ε-shifted series gave 54 361
    ([1.0, 1.5, 2.0], "pi"),
    ([0.01, 0.5, 0.5001, 2.0, 3.0], "pi"),
    ([1e-3, 0.2, 0.2 + 1e-6, 1.0], "pi:steps=5,eps=0.01"),
])
def test_pi_bound_is_the_max_coefficient_of_autograd_through_plain_svd_pi(lam, spec):
    """The bound the monitor logs for ``pi`` is max_ij |F_ij| of the rule: each F_ij measured by
    autograd through the plain iteration at A = diag(λ), with ∂L/∂U = u_i e_jᵀ (then
    ∂L/∂A = F_ij sym(u_i u_jᵀ), so F_ij = 2 u_iᵀ sym(∂L/∂A) u_j)."""
    spec = methods.spec(spec)
    d = len(lam)
    A = torch.diag(torch.tensor(lam, dtype=torch.float64)).requires_grad_(True)
    U = torch.linalg.eigh(A.detach()).eigenvectors
    kept = torch.tensor(paper_rule(lam, spec.params["eps"]))
    F = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if i != j:
                gU = torch.zeros(d, d, dtype=torch.float64)
                gU[:, j] = U[:, i]
                (G,) = torch.autograd.grad(plain_svd_pi_objective(A, gU, torch.zeros(d, dtype=torch.float64), kept,
                                                                  spec.params["steps"]), A)
                F[i, j] = float(2 * U[:, i] @ ((G + G.mT) / 2) @ U[:, j])
    bound = float(spec.bound(torch.tensor(lam, dtype=torch.float64)))
    assert bound == pytest.approx(np.abs(F).max(), rel=1e-9)


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_pi_legacy_drops_from_the_first_rayleigh_quotient_off_by_more_than_ten_percent(xp):
    """The paper's third breaking condition (|λ̂_k − λ_k| > 0.1 |λ_k|) on constructed quotients: 9.5 % off
    is kept, 10.5 % off stops the loop there (and everything below it), whatever ``kept`` says."""
    from stabkit.methods.power_iteration import _rayleigh_kept

    lam = np.array([0.5, 1.0, 2.0, 4.0])
    cases = {  # λ̂ for indices 3, 2, 1, 0 → expected active
        (4.0, 2.19, 0.905, 0.5): [True, True, True, True],      # 9.5 % (2.19, 0.905) kept
        (4.0, 2.21, 1.0, 0.5): [False, False, False, True],     # 10.5 % at index 2 stops it
        (4.0, 2.0, 1.105, 0.5): [False, False, True, True],     # 10.5 % at index 1
        (3.58, 2.0, 1.0, 0.5): [False, False, False, False],    # 10.5 % at the first
    }
    for hats, want in cases.items():
        lam_hat = {3 - i: h for i, h in enumerate(hats)}
        kept = np.ones(4, dtype=bool)
        if xp == "torch":
            got = _rayleigh_kept(torch.tensor(kept), torch.tensor(lam),
                                 {k: torch.tensor(v, dtype=torch.float64) for k, v in lam_hat.items()}, [3, 2, 1, 0])
            got = got.numpy()
        else:
            got = _rayleigh_kept(kept, lam, {k: np.float64(v) for k, v in lam_hat.items()}, [3, 2, 1, 0])
        assert got.tolist() == want, hats
    # only the iterated indices can be active: order 3, 2 leaves 1 and 0 out even where kept
    got = _rayleigh_kept(np.ones(4, dtype=bool), lam, {3: np.float64(4.0), 2: np.float64(2.0)}, [3, 2])
    assert got.tolist() == [False, False, True, True]


@pytest.mark.parametrize("name", ["pi-forward", "pi-authors"])
def test_power_iteration_at_a_zero_eigenvalue_returns_zero_and_an_orthogonal_unit_vector(name):
    """Rank-deficient PSD input: once deflation leaves M_k v = 0, ‖M_k v‖ = 0 (it was 0/0 = NaN). The
    stage returns λ = 0 and its start vector orthogonalised against the vectors found, so the
    spectrum is torch.linalg.eigh's, U is orthogonal, and Σλ's gradient is finite — the identity
    (= U Uᵀ), the exact one. x is exactly representable and xxᵀ converges in one step."""
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    for A, truth in [(torch.diag(torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)), [0.0, 0.0, 3.0]),
                     (torch.outer(x, x), [0.0, 0.0, 0.0, 6.25]), (torch.zeros(3, 3, dtype=torch.float64), [0.0] * 3)]:
        d = A.shape[-1]
        torch.testing.assert_close(torch.linalg.eigvalsh(A), torch.tensor(truth, dtype=torch.float64), rtol=0, atol=1e-14)
        A = A.requires_grad_()
        lam, U, _ = eigh_kept(A, method=name)
        assert lam.tolist() == truth
        torch.testing.assert_close(U.mT @ U, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-12)
        g = torch.autograd.grad(lam.sum(), A)[0]
        torch.testing.assert_close(g, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-12)
    lam, U, state = methods.spec(name).forward(np.diag([0.0, 0.0, 3.0]))  # numpy path alike
    assert lam.tolist() == [0.0, 0.0, 3.0] and np.allclose(U.T @ U, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("name", ["pi-forward", "pi-authors"])
def test_power_iteration_pairs_come_in_ascending_magnitude_as_documented(name):
    """Each stage finds the eigenvalue of largest |λ| left: on the indefinite diag(−8, −1, 2, 4) the pairs come
    as (−1, 2, 4, −8) (ascending |λ|, the documented exception to eigh's ascending order), each with its
    eigenvector; on a PSD matrix that order is the ascending one."""
    lam, U, _ = eigh_kept(torch.diag(torch.tensor([-8.0, -1.0, 2.0, 4.0], dtype=torch.float64)), method=name, steps=80)
    torch.testing.assert_close(lam, torch.tensor([-1.0, 2.0, 4.0, -8.0], dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(U.abs(), torch.eye(4, dtype=torch.float64)[:, [1, 2, 3, 0]], rtol=0, atol=1e-8)
    lam, _, _ = eigh_kept(torch.diag(torch.tensor([8.0, 1.0, 2.0, 4.0], dtype=torch.float64)), method=name, steps=80)
    torch.testing.assert_close(lam, torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64), rtol=0, atol=1e-10)


def test_power_iteration_numpy_batch_where_only_some_matrices_reach_mv_zero():
    """numpy computes the Mv = 0 fallback only once a stage meets it: in a batch mixing matrices that
    never reach Mv = 0 with ones that reach it at different stages, each gets what it gets alone
    (forward and backward), and exact zero eigenvalues come out as 0 with an orthogonal U."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 4))
    batch = np.stack([X @ X.T / 4, np.diag([0.0, 0.0, 0.0, 3.0]), np.zeros((4, 4)), np.diag([0.0, 2.0, 0.0, 5.0])])
    gU, glam = rng.standard_normal(batch.shape), rng.standard_normal(batch.shape[:-1])
    method = methods.spec("pi-forward")
    lam, U, state = method.forward(batch)
    grad = method.backward(state, gU, glam)
    for i, A in enumerate(batch):
        lam_i, U_i, state_i = method.forward(A)
        np.testing.assert_allclose(lam[i], lam_i, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(U[i], U_i, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(grad[i], method.backward(state_i, gU[i], glam[i]), rtol=1e-12, atol=1e-12)
    assert sorted(lam[1].tolist()) == [0.0, 0.0, 0.0, 3.0] and lam[2].tolist() == [0.0] * 4
    for i in (1, 2):
        np.testing.assert_allclose(U[i].T @ U[i], np.eye(4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("xp", ["numpy", "torch"])
@pytest.mark.parametrize("name", ["pi-forward", "pi-authors", "pi-legacy", "pi"])
@pytest.mark.parametrize("dtype, e", [(np.float32, 64), (np.float32, 100), (np.float32, -66), (np.float32, -80),
                                      (np.float64, 520), (np.float64, -540)],
                         ids=["f32-2^64", "f32-2^100", "f32-2^-66", "f32-2^-80", "f64-2^520", "f64-2^-540"])
def test_power_iteration_at_extreme_scales_is_the_scaled_result(xp, name, dtype, e):
    """A·2^e with λ(A) = (1, 2, 3, 5): |λ| ~ 1e19 … 1e30 or 1e-20 … 1e-24 in float32 (‖M v‖² over- or
    underflows: ‖M v‖ was inf or 0, λ̂ off by up to 2.5× and gradients inf or 0, silently), 1e156 / 1e-163 in
    float64. λ must be 2^e times, U equal to (up to each column's sign), and the gradient of
    L = 2^−e ⟨gλ, λ⟩ + Σ_k w_k u_kᵀ B u_k (sign-free, as LAPACK's are for pi) 2^−e times the float64 values
    at A (ε = 0: the pairs that pi and pi-legacy keep must not depend on the scale)."""
    A = build([1.0, 2.0, 3.0, 5.0], seed=4).astype(dtype).astype(np.float64)   # A·2^e exact in dtype
    rng = np.random.default_rng(5)
    B, w, glam = rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4)
    spec = methods.spec(name).replace(eps=0.0)
    lam0, U0, state0 = spec.forward(A)
    want = spec.backward(state0, 2 * (B + B.T) / 2 @ U0 * w, glam)
    scaled = (A * 2.0 ** e).astype(dtype)
    if xp == "numpy":
        lam, U, state = spec.forward(scaled)
        gU = ((B + B.T) @ U.astype(np.float64) * w).astype(dtype)
        grad = spec.backward(state, gU, (glam * 2.0 ** -e).astype(dtype))
    else:
        a = torch.tensor(scaled, requires_grad=True)
        lam, U, _ = eigh_kept(a, method=spec)
        loss = (lam * torch.tensor(glam * 2.0 ** -e, dtype=a.dtype)).sum() + (
            (U * (torch.tensor(B, dtype=a.dtype) @ U)).sum(0) * torch.tensor(w, dtype=a.dtype)).sum()
        (grad,) = torch.autograd.grad(loss, a)
        lam, U, grad = lam.detach().numpy(), U.detach().numpy(), grad.numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(lam, np.float64) * 2.0 ** -e, lam0, rtol=tol)
    U = np.asarray(U, np.float64)
    np.testing.assert_allclose(U * np.sign((U * U0).sum(0)), U0, rtol=0, atol=tol)
    got = np.asarray(grad, np.float64) * 2.0 ** e
    assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
