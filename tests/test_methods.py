"""The backward rules against closed forms, each other, and the certified truth."""

import re

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import methods, spectra
from stabkit.losses import WeightedEigvecLoss, make_loss
from stabkit.methods import analytic, clip, degenerate, lorentzian, pade, taylor, taylor_song
from stabkit.reference import ground_truth
from stabkit.torch import eigh

from .conftest import build

KERNELS = {
    "analytic": analytic.kernel, "taylor": taylor.kernel, "clip": clip.kernel,
    "lorentzian": lorentzian.kernel, "degenerate": degenerate.kernel,
}


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("d", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("loss_name", ["zca", "eigvec"])
def test_analytic_matches_certified_truth(d, loss_name):
    A = spectra.make("separated", d, seed=d).matrix
    loss = make_loss(loss_name, d, seed=1)
    truth = ground_truth(A, loss)
    assert truth.certified
    g, _, _ = methods.spec("analytic").gradient(A, loss)
    assert rel(g, truth.grad) <= 1e-10


@pytest.mark.parametrize("name", methods.NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_op_equals_numpy_twin(name, dtype):
    d = 5
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(2, 3, d, d, generator=gen, dtype=torch.float64)
    A = (X @ X.transpose(-1, -2) + torch.eye(d, dtype=torch.float64)).to(dtype)
    loss = make_loss("zca", d, seed=2)
    leaf = A.clone().requires_grad_(True)
    lam, U = eigh(leaf, method=name)
    loss.value(U, lam).sum().backward()
    g_numpy, _, _ = methods.spec(name).gradient(A.numpy(), loss)
    tol = 1e-12 if dtype == torch.float64 else 2e-4
    assert leaf.grad.dtype == dtype
    np.testing.assert_allclose(leaf.grad.numpy(), g_numpy, atol=tol * np.abs(g_numpy).max())


def test_taylor_converges_to_analytic_as_K_grows():
    lam = np.array([1.0, 1.5, 2.0, 2.2, 3.0])  # largest ratio 2.0/2.2 ≈ 0.91
    A = build(lam)
    loss = make_loss("zca", 5)
    exact, _, _ = methods.spec("analytic").gradient(A, loss)
    errors = [rel(methods.spec(("taylor", {"K": K})).gradient(A, loss)[0], exact) for K in (1, 5, 20, 80, 300)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-10
    # the truncation error of one entry is exactly the discarded tail (λ_lo/λ_hi)^(K+1) of the series
    F = taylor.kernel(lam, K=9)
    assert F[3, 2] == pytest.approx(-(1 - (2.0 / 2.2) ** 10) / (2.2 - 2.0), rel=1e-12)


def test_taylor_is_finite_and_antisymmetric_at_exact_ties():
    lam = np.array([0.5, 2.0, 2.0, 2.0, 3.0])
    F = taylor.kernel(lam, K=9, eps=0.0)
    assert np.isfinite(F).all()
    np.testing.assert_array_equal(F, -F.T)
    # magnitude at a tie is the full (K+1)/λ of the series
    assert abs(F[1, 2]) == pytest.approx(10 / 2.0)


def test_taylor_with_shift_uses_shifted_eigenvalues():
    lam = np.array([0.0, 0.0, 1.0])
    F = taylor.kernel(lam, K=3, eps=0.5)
    r = 0.5 / 1.5
    assert F[0, 2] == pytest.approx((1 + r + r**2 + r**3) / 1.5)
    assert abs(F[0, 1]) == pytest.approx(4 / 0.5)


#: diag(2, 1, 1): eigenvalues (1, 1, 2) exactly from every eigensolver (a diagonal input; a rotated
#: block such as 1 ⊕ [[1.5, .5], [.5, 1.5]] ties exactly only where the solver's 2 × 2 step rounds so,
#: and MRRR splits it), in a basis that is not the identity: the sorted U is a cyclic permutation
#: (the tied pair e₂, e₃, up to a rotation within it; u₃ = ±e₁ for the untied λ₃)
BLOCK_TIE = np.diag([2.0, 1.0, 1.0])
#: the methods whose backward is the kernel rule on the exact (λ, U) (``methods.assemble``)
ASSEMBLED = [n for n in methods.NAMES if methods.get(n).exact_state]


@pytest.mark.parametrize("name", ASSEMBLED)
def test_eigenvalue_gradient_is_finite_at_an_exact_tie_with_zero_eigenvector_gradient(name):
    """∂L/∂U = 0 (a loss of λ alone, with U's gradient passed as zeros) at an exact tie:
    ∂L/∂A = U diag(kept ∘ ∂L/∂λ) Uᵀ, whatever F is at the tie (∞ · 0 = NaN before
    ``_xp.kernel_product``)."""
    spec = methods.spec(name)
    lam, U, state = spec.forward(BLOCK_TIE)
    assert lam[0] == lam[1] and lam[2] == 2.0  # the tie is exact
    glam = np.array([1.0, 1.0, 4.0])
    expected = (U * (glam * spec.kept(state, lam))) @ U.T
    np.testing.assert_allclose(spec.backward(state, np.zeros((3, 3)), glam), expected, rtol=0, atol=1e-14)


def test_eigenvector_gradient_through_the_untied_column_is_exact_at_a_tie():
    """L = u₃ᵀ B u₃ (weight 0 on the tied pair): Uᵀ∂L/∂U is 0 at the tied entries, and the analytic
    rule gives ∂L/∂A = sym(2 R B u₃ u₃ᵀ), R = (I − u₃u₃ᵀ)/(λ₃ − 1) the reduced resolvent; a weight on
    a tied column has no derivative (±∞ in the rule)."""
    B = np.cos(np.arange(9.0).reshape(3, 3))
    loss = WeightedEigvecLoss("u3", B, np.array([0.0, 0.0, 1.0]))
    g, lam, _ = methods.spec("analytic").gradient(BLOCK_TIE, loss)
    assert lam[0] == lam[1]
    u3 = np.array([1.0, 0.0, 0.0])
    G = 2 * (np.eye(3) - np.outer(u3, u3)) @ ((B + B.T) / 2) @ np.outer(u3, u3)
    np.testing.assert_allclose(g, (G + G.T) / 2, rtol=0, atol=1e-14)
    tied = WeightedEigvecLoss("u1", B, np.array([1.0, 0.0, 0.0]))
    assert not np.isfinite(methods.spec("analytic").gradient(BLOCK_TIE, tied)[0]).all()


@pytest.mark.parametrize("K", [0, 3, 9, 30])
def test_dominant_eigenvector_taylor_equals_power_iteration(K):
    """TPAMI 2021 Sec. 3.3: for the dominant eigenvector, degree-K Taylor = power-iteration gradient.

    Starting from the exact eigenvector, T power-iteration steps give exactly the degree T − 1
    geometric series, so Taylor(K) is matched by T = K + 1 steps.
    """
    lam = np.array([0.3, 1.0, 2.0, 3.5, 4.0])
    A = build(lam, seed=4)
    w = np.zeros(5)
    w[-1] = 1.0
    loss = WeightedEigvecLoss("top", np.random.default_rng(5).standard_normal((5, 5)), w)
    g_taylor, _, _ = methods.spec(("taylor", {"K": K})).gradient(A, loss)
    g_pi, _, _ = methods.spec(("pi", {"steps": K + 1})).gradient(A, loss)
    assert rel(g_pi, g_taylor) < 1e-12


def test_power_iteration_methods_converge_to_analytic_with_many_steps():
    A = build([1.0, 2.0, 3.0, 4.5, 6.0], seed=7)
    loss = make_loss("eigvec", 5, seed=3)
    exact, _, _ = methods.spec("analytic").gradient(A, loss)
    # pi keeps all but the smallest pair here (its energy ratio includes λ_k): its function is the
    # loss without that pair, whose exact gradient is the analytic rule on w·[0, 1, 1, 1, 1]
    truncated = WeightedEigvecLoss("top4", loss.weight, loss.w * np.array([0.0, 1, 1, 1, 1]))
    exact_truncated, _, _ = methods.spec("analytic").gradient(A, truncated)
    assert rel(methods.spec("pi:steps=400").gradient(A, loss)[0], exact_truncated) < 1e-10
    assert rel(methods.spec("pi-legacy:steps=400").gradient(A, loss)[0], exact) < 1e-10
    assert rel(methods.spec("pi-forward:steps=2000").gradient(A, loss)[0], exact) < 1e-8


@pytest.mark.parametrize("name, lam", [
    ("pi-forward", [0.5, 1.0, 2.0, 3.0, 5.0]),
    ("pi-legacy", [0.5, 1.0, 2.0, 3.0, 5.0]),
    ("pi-legacy", [1e-6, 2e-6, 1.0, 2.0, 4.0]),  # the two smallest are dropped (λ ≤ ε) and never iterated
])
def test_power_iteration_backward_is_reverse_mode_of_its_forward(name, lam, monkeypatch):
    """The hand-written backward = torch autograd through the same iterations and deflations."""
    from stabkit import _xp
    from stabkit.methods import power_iteration

    eigh = _xp.eigh
    monkeypatch.setattr(_xp, "eigh", lambda A: eigh(A.detach()))  # SVD-PI's start vectors are constants
    A = torch.tensor(build(np.array(lam), seed=3), requires_grad=True)
    method = methods.get(name)
    lam_out, U, state = method.forward(A, **method.defaults)
    rng = np.random.default_rng(0)
    gU, glam = torch.tensor(rng.standard_normal((5, 5))), torch.tensor(rng.standard_normal(5))
    # the loss reads each iterated index's last iterate and Rayleigh quotient (for pi-forward these are U, λ)
    objective = sum(torch.where(state["active"][k], state["paths"][k][-1] @ gU[:, k] + state["lam_hat"][k] * glam[k], 0.0)
                    for k in state["order"])
    (auto,) = torch.autograd.grad(objective, A)
    hand = power_iteration.backward(state, gU, glam)
    assert rel(hand.detach().numpy(), ((auto + auto.T) / 2).numpy()) < 1e-12
    assert len(state["order"]) == (3 if lam[0] < 1e-4 else 5)
    if name == "pi-forward":
        torch.testing.assert_close(U, torch.stack([state["paths"][k][-1] for k in range(5)], -1), rtol=0, atol=0)


def test_analytic_zca_gradient_stays_bounded_as_a_gap_closes():
    """Daleckii–Krein: for a matrix function such as ZCA's Σ^{-1/2} the true gradient is a divided
    difference, bounded as λ_i → λ_j, and the analytic rule only amplifies rounding, by ~eps·λ_max/gap.
    A loss on the eigenvectors themselves has a true gradient that grows like 1/gap."""
    norms, errs = {}, {}
    for delta in (1e-4, 1e-8):
        A = spectra.make("cluster", 8, seed=1, delta=delta).matrix
        lam = np.linalg.eigvalsh(A)
        for name in ("zca", "eigvec"):
            loss = make_loss(name, 8, seed=2)
            truth = ground_truth(A, loss)
            assert truth.certified
            g, _, _ = methods.spec("analytic").gradient(A, loss)
            norms[name, delta] = np.linalg.norm(truth.grad)
            errs[name, delta] = rel(g, truth.grad) / (np.finfo(float).eps * lam.max() / np.diff(lam).min())
    assert norms["zca", 1e-8] == pytest.approx(norms["zca", 1e-4], rel=1e-3)
    assert norms["eigvec", 1e-8] / norms["eigvec", 1e-4] == pytest.approx(1e4, rel=0.05)
    assert max(errs.values()) < 10  # relative error within 10 × eps·λ_max/gap


def test_svd_pi_breaking_drops_tiny_eigenvalues():
    """λ ≤ ε stops SVD-PI (Wang et al. 2019): the gradient loses exactly those eigenvectors."""
    lam = np.array([1e-6, 1.0, 2.0, 4.0])
    A = build(lam, seed=2)
    loss = make_loss("eigvec", 4, seed=0)
    g, _, _ = methods.spec("pi").gradient(A, loss)
    assert np.isfinite(g).all()
    # nothing flows through the dropped eigenvector's own weight: perturbing w_0 changes nothing
    w = loss.w.copy()
    w[0] += 10.0
    g2, _, _ = methods.spec("pi").gradient(A, WeightedEigvecLoss("w", loss.weight, w))
    np.testing.assert_allclose(g, g2, atol=1e-12)


def test_clip_bounds_and_keeps_small_entries():
    lam = np.array([1.0, 1.0 + 1e-4, 2.0, 5.0])
    F = clip.kernel(lam, tau=100.0)
    assert np.abs(F).max() == pytest.approx(100.0)
    exact = analytic.kernel(lam)
    small = np.abs(exact) <= 100
    np.testing.assert_allclose(F[small], exact[small], rtol=1e-15)
    np.testing.assert_array_equal(F, -F.T)


def test_lorentzian_closed_form():
    lam = np.array([1.0, 1.0 + 1e-7, 3.0])
    F = lorentzian.kernel(lam, eps=1e-12)
    diff = lam[1] - lam[0]  # the representable gap
    assert F[0, 1] == pytest.approx(diff / (diff**2 + 1e-12), rel=1e-12)
    assert F[0, 2] == pytest.approx(2.0 / (4.0 + 1e-12), rel=1e-15)


def test_degenerate_zeroes_only_degenerate_pairs():
    lam = np.array([1.0, 1.0 + 1e-12, 2.0])
    F = degenerate.kernel(lam)
    assert F[0, 1] == 0 and F[1, 0] == 0
    assert F[0, 2] == pytest.approx(1.0)


def test_pade_is_the_geometric_function_itself():
    """Padé approximants are unique: the [m/1] one of Σ x^k is 1/(1 − x), hence so is [50/50]."""
    with mpmath.workdps(40):
        p, q = mpmath.pade([mpmath.mpf(1)] * 12, 10, 1)
    assert [float(c) for c in q] == [1.0, -1.0]
    assert float(p[0]) == 1.0 and all(abs(c) < 1e-30 for c in p[1:])
    lam = np.array([0.5, 1.0, 1.7, 4.0])
    np.testing.assert_allclose(pade.kernel_raw(lam), analytic.kernel(lam), rtol=1e-14)


def test_pade_overflow_handling_is_per_sample():
    tie = np.array([1.0, 2.0, 2.0, 3.0])
    clean = np.array([1.0, 1.5, 2.0, 3.0])
    raw = pade.kernel_raw(np.stack([tie, clean]))
    assert not np.isfinite(raw[0]).all()  # the analytic blow-up is reproduced
    F = pade.kernel(np.stack([tie, clean]))
    assert np.isfinite(F).all()
    np.testing.assert_allclose(F[1], analytic.kernel(clean), rtol=1e-14)  # untouched by sample 0
    finite0 = raw[0][np.isfinite(raw[0])]
    assert F[0].max() == finite0.max()


def test_taylor_song_keeps_published_tie_signs():
    F = taylor_song.kernel(np.array([1.0, 2.0, 2.0]))
    assert F[1, 2] == F[2, 1] == pytest.approx(101 / 2.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.1, 10.0), min_size=2, max_size=7, unique=True), st.sampled_from(sorted(KERNELS)))
def test_kernels_are_antisymmetric_with_zero_diagonal(values, name):
    lam = np.sort(np.array(values))
    F = KERNELS[name](lam)
    np.testing.assert_array_equal(F, -F.T)
    assert (np.diag(F) == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(list(methods.NAMES)))
def test_every_gradient_is_symmetric(seed, name):
    A = build(np.linspace(1.0, 2.0, 4) + np.random.default_rng(seed).uniform(0, 0.1, 4), seed=seed)
    g, _, _ = methods.spec(name).gradient(A, make_loss("sqrt", 4, seed=seed))
    np.testing.assert_allclose(g, g.T, atol=1e-14 * np.abs(g).max())


def test_parse_spec():
    spec = methods.parse("taylor:K=19,eps=1e-4")
    assert (spec.name, spec.params) == ("taylor", {"K": 19, "eps": 1e-4})
    assert str(methods.parse("clip:tau=10")) == "clip:tau=10"
    # a flag reads as it is written (TOML and the CLI say true), and the text parses back to the same spec
    stop = methods.parse("pi-authors:stop=true,eps=0.01")
    assert str(stop) == str(stop.replace(eps=0.01)) == "pi-authors:stop=true,eps=0.01" and methods.parse(str(stop)) == stop
    for bad, needle in [("nope", "unknown method"), ("taylor:Q=1", "no parameter 'Q'"),
                        ("taylor:K=a", "not a number"), ("taylor:K=1.5", "not an integer"), ("clip:tau", "KEY=VALUE")]:
        with pytest.raises(methods.MethodSpecError, match=needle):
            methods.parse(bad)


@pytest.mark.parametrize("text, written, given", [("taylor(K=9, eps=1e-3)", "taylor:K=9,eps=1e-3", {"K": 9, "eps": 1e-3}),
                                                  ("pi( steps=5 )", "pi:steps=5", {"steps": 5}), ("clip()", "clip", {})])
def test_a_call_spelling_is_refused_with_the_grammar_written_out(text, written, given):
    """``taylor(K=9, eps=1e-3)`` was "unknown method 'taylor(K=9, eps=1e-3)'" with the list of names; the
    message now gives the text in the spec grammar, which parses to the parameters meant."""
    with pytest.raises(methods.MethodSpecError, match=re.escape(f"write name:key=value,key=value, e.g. {written!r}")):
        methods.parse(text)
    meant = methods.parse(written)
    assert meant.name == written.partition(":")[0] and meant.params == {**meant.method.defaults, **given}


def test_an_integer_parameter_is_read_exactly():
    """Past 2**53 a float cannot hold every integer: 2**53 + 1 must not become a different seed."""
    assert methods.parse("pi-forward:seed=9007199254740993").params["seed"] == 2**53 + 1
    assert methods.spec(("pi-forward", {"seed": 2**53 + 1})).params["seed"] == 2**53 + 1
    assert methods.parse("taylor:K=+7").params["K"] == 7 and methods.parse("taylor:K=7.0").params["K"] == 7


def test_canonical_text_keeps_every_float_parameter():
    """str(spec) parses back to the same spec, so distinct specs keep distinct texts (a study grid keys
    its cells by that text and runs them from it): 6 significant digits would read tau = 123456789.5 back as
    123457000 and give clip:tau=1234567 and clip:tau=1234568 one text. Short values keep the short form."""
    for text in ["clip:tau=123456789.5", "lorentzian:eps=1.2345678901234e-07", "degenerate:atol=0.123456789,rtol=3.3333333e-05",
                 "taylor:K=19,eps=0.1", "clip:tau=1234567", "clip:tau=1234568"]:
        spec = methods.parse(text)
        assert methods.parse(str(spec)) == spec
    assert str(methods.parse("clip:tau=1234567")) != str(methods.parse("clip:tau=1234568"))
    assert str(methods.bind("clip", {"tau": 123456789.5})) == "clip:tau=123456789.5"
    assert str(methods.parse("taylor:K=19,eps=1e-4")) == "taylor:K=19,eps=0.0001"
    assert str(methods.parse("lorentzian:eps=1e-3")) == "lorentzian:eps=0.001"


def test_an_integer_past_the_float_range_is_a_spec_error():
    """float(10**400) raises OverflowError (not a ValueError): the spec must still say what is wrong."""
    with pytest.raises(methods.MethodSpecError, match="eps=1000.* is out of range"):
        methods.bind("lorentzian", {"eps": 10**400})
    with pytest.raises(methods.MethodSpecError, match="out of range"):
        methods.bind("clip", {"tau": -(10**400)})


def test_an_integer_parameter_past_the_float_range_is_a_spec_error():
    """Domain.contains ran math.isfinite on an int parameter, OverflowError for K = 10**400 (as a
    number or as text): an integer is finite, so K is out of [0, 1000] and seed (no upper bound) is
    accepted and hashed modulo 2^31 like any other seed."""
    for given in (10**400, "1" + "0" * 400, -(10**400)):
        with pytest.raises(methods.MethodSpecError, match=r"parameter K=-?10+ is out of range \(must be an integer from 0 to 1000\)"):
            methods.bind("taylor", {"K": given})
    with pytest.raises(methods.MethodSpecError, match="out of range"):
        methods.parse("pi:steps=" + "9" * 400)
    assert methods.bind("pi-forward", {"seed": 2**1030}).params["seed"] == 2**1030


def test_specs_are_hashable_and_equal_by_method_and_params():
    """A Spec is a dict key and a torch.compile constant: equal specs hash alike whatever the spelling."""
    a, b = methods.spec("taylor:K=9"), methods.bind("taylor", {"K": "9"})
    assert a == b and hash(a) == hash(b) and len({a, b, methods.spec("taylor:K=3")}) == 2
    assert methods.spec(("clip", {"tau": 10})) == methods.spec("clip:tau=10")


def test_spec_bound_is_infinite_at_an_exact_tie():
    """Spec.bound: max |F_ij|, an infinite F (the analytic rule at a tie) or a NaN one is ∞ — not the
    dtype's largest finite number, which nan_to_num substitutes for ∞ by default."""
    tie = [1.0, 1.0, 3.0]
    assert methods.spec("analytic").bound(np.array(tie)) == np.inf
    assert float(methods.spec("analytic").bound(torch.tensor(tie, dtype=torch.float32))) == np.inf
    assert methods.spec("analytic").bound(np.array([1.0, np.nan, 3.0])) == np.inf
    assert methods.spec("clip:tau=50").bound(np.array(tie)) == 50.0


def test_torch_eigh_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported dtype"):
        eigh(torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="square"):
        eigh(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown method"):
        eigh(torch.eye(3), method="svd-magic")


def test_resolved_params_round_trip_through_gradient():
    """A (name, params) pair from a Spec is accepted again (defaults of None included)."""
    A = build([1.0, 2.0, 3.0])
    loss = make_loss("zca", 3)
    for name in methods.NAMES:
        spec = methods.parse(name)
        g, _, _ = methods.spec((spec.name, spec.params)).gradient(A, loss)
        assert np.isfinite(g).all()
    assert methods.parse("degenerate:atol=1e-9").params == {"atol": 1e-9, "rtol": None}


@pytest.mark.parametrize("bad, needle", [
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "NaN"),
    (np.array([[2.0, 0.5], [0.5, 1.0]]) * (1 + 1j), "unsupported dtype .*complex128"),
    (np.array([[2, 1], [1, 3]]), "unsupported dtype .*int64"),
    (np.array([[2.0, 5.0], [1.0, 3.0]]), "not symmetric"),
    (np.ones((2, 3)), "square"),
])
def test_evaluate_on_numpy_refuses_what_stabkit_torch_eigh_refuses(bad, needle):
    """Spec.evaluate gave a NaN gradient for a NaN input, a complex one for a complex input and read
    the lower triangle of a non-symmetric one, all without a word, where stabkit.torch.eigh refuses."""
    loss = make_loss("zca", 2)
    with pytest.raises(ValueError, match=needle):
        methods.spec("taylor").evaluate(bad, loss)
    with pytest.raises(ValueError, match=needle):
        eigh(torch.from_numpy(bad))


@pytest.mark.parametrize("name", ["analytic", "torch", "pi-forward"])
@pytest.mark.parametrize("convert", [lambda A: A.tolist(), lambda A: A.astype(">f8"), np.asmatrix],
                         ids=["list", "big-endian", "matrix"])
def test_evaluate_takes_what_its_check_accepts(name, convert):
    """check_symmetric validates np.asarray(A), native byte order, but evaluate went on with A as
    given: a list raised AttributeError ('list' object has no attribute 'shape'), np.matrix numpy's
    matmul ValueError, a big-endian array torch's byte-order ValueError (``torch``), where
    ground_truth takes all three. At A = diag(1, 2, 3) the eigvec loss L = Σ w_i u_iᵀ B u_i has the
    closed-form gradient D ∘ sym(B), D_ij = (w_i − w_j)/(λ_i − λ_j), D_ii = 0 (stabkit.losses)."""
    lam = np.array([1.0, 2.0, 3.0])
    loss = make_loss("eigvec", 3, seed=5)
    diff = lam[:, None] - lam[None, :]
    D = np.divide(loss.w[:, None] - loss.w[None, :], diff, out=np.zeros((3, 3)), where=diff != 0)
    expected = D * (loss.weight + loss.weight.T) / 2
    spec = methods.spec(name if name != "pi-forward" else "pi-forward:steps=200")
    g, lam_out, _ = spec.gradient(convert(np.diag(lam)), loss)
    np.testing.assert_allclose(np.asarray(lam_out), lam, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("loss_name", ["zca", "eigvec", "projector"])
def test_loss_built_for_another_size_is_refused_naming_both(loss_name):
    """A loss for d = 5 at a 4 × 4 A raised numpy's matmul ValueError (torch's RuntimeError)."""
    from stabkit.errors import InputError

    A = spectra.make("separated", 4).matrix
    loss = make_loss(loss_name, 5)
    for a in (A, torch.as_tensor(A)):
        with pytest.raises(InputError, match=rf"method 'taylor': the {loss_name} loss is built for d = 5 but A is "
                                             r"4 × 4 \(d = 4\)"):
            methods.spec("taylor").evaluate(a, loss)


@pytest.mark.parametrize("loss", ["zca", None, 3.0])
def test_evaluate_refuses_what_is_not_a_probe_loss_as_ground_truth_does(loss):
    """Spec.evaluate(A, "zca") raised AttributeError ('str' object has no attribute 'grads') where
    ground_truth(A, "zca") raises InputError naming make_loss: the README's pair
    ``taylor.evaluate(A, loss)``, ``stabkit.ground_truth(A, loss)`` now refuse alike."""
    from stabkit.errors import InputError

    A = spectra.make("separated", 4).matrix
    for a in (A, torch.as_tensor(A)):
        with pytest.raises(InputError, match=r"method 'taylor': loss must be a probe loss \(stabkit\.losses\.make_loss\(name, 4\)\)"):
            methods.spec("taylor").evaluate(a, loss)
    with pytest.raises(InputError, match=r"loss must be a probe loss \(stabkit\.losses\.make_loss\(name, 4\)\)"):
        ground_truth(A, loss)


def test_degenerate_drops_the_tie_splitting_part_of_a_rotation_invariant_loss():
    """Kasim (2020) is exact only for perturbations that keep the degeneracy. L = ⟨W, U diag(λ) Uᵀ⟩ = ⟨W, A⟩ is
    invariant to rotations inside the tied eigenspace and its gradient is W, but at diag(1, 1, 2) the
    degenerate rule returns W with the tied pair's W_01 = W_10 removed (the documented limitation)."""
    W = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]])
    lam, U = np.array([1.0, 1.0, 2.0]), np.eye(3)
    gU, glam = 2 * W @ U * lam, np.einsum("ik,ij,jk->k", U, W, U)  # ∂L/∂U = (W + Wᵀ) U diag(λ), ∂L/∂λ_k = u_kᵀ W u_k
    expected = W.copy()
    expected[0, 1] = expected[1, 0] = 0.0
    g = methods.spec("degenerate").backward({"U": U, "lam": lam}, gU, glam)
    np.testing.assert_array_equal(g, expected)
    A = torch.diag(torch.tensor(lam)).requires_grad_()
    lam_t, U_t = eigh(A, method="degenerate")
    g_t = torch.autograd.grad((torch.tensor(W) * ((U_t * lam_t) @ U_t.mT)).sum(), A)[0]
    torch.testing.assert_close(g_t, torch.tensor(expected), rtol=0, atol=1e-12)
    off_tie = np.diag([1.0, 1.5, 2.0])  # no tie: the same rule gives W exactly
    g = methods.spec("degenerate").backward({"U": U, "lam": np.diag(off_tie)}, 2 * W @ U * np.diag(off_tie), glam)
    np.testing.assert_allclose(g, W, rtol=0, atol=1e-14)
