"""The certified ground truth (``stabkit.reference``, the public API) against independent computations.

Independent checks: mpmath finite differences of the loss *value* (no Daleckii–Krein code), the
other engine (mpmath.eigsy vs float64 eigh + Ogita–Aishima in integers), eigenvalues known in
closed form, and exact power-of-two scaling laws.  The faults of issue 13 (false certificates at
huge condition numbers, gradients outside the float64 range) are reproduced here too.
"""

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabkit import reference as R
from stabkit.errors import InputError
from stabkit.losses import LOSSES, make_loss
from tests.conftest import build


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _loss(name, d, seed=0):
    return make_loss(name, d, seed=seed, k=2)


def _hp_rel(g1, g2):
    with mpmath.workdps(120):
        return float(max(abs(x - y) for x, y in zip(g1, g2)) / max(abs(y) for y in g2))


def _honest(truth, exact) -> bool:
    """Claimed digits never exceed the true accuracy of the float64 gradient."""
    return rel(truth.grad, exact) <= 10.0 ** -(truth.digits - 1) or truth.digits == 0


SEPARATED = {4: [0.5, 1.3, 2.0, 3.7], 6: [0.3, 0.9, 1.6, 2.2, 3.1, 4.5]}


@pytest.fixture(scope="module")
def degenerate():
    """d = 5, spectrum {1, 2, 2, 2, 4} before rounding: rounding splits the triple by ~1e-16."""
    return build([1.0, 2.0, 2.0, 2.0, 4.0], seed=3)


@pytest.mark.parametrize("d", [4, 6])
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_matches_finite_differences(d, name, engine):
    A = build(SEPARATED[d], seed=d)
    loss = _loss(name, d, seed=1)
    truth = R.ground_truth(A, loss, engine=engine)
    fd = R.finite_difference_grad(A, loss)
    assert truth.certified and truth.engine == engine
    assert rel(truth.grad, fd) <= 1e-12
    assert np.allclose(truth.grad, truth.grad.T, rtol=0, atol=1e-15 * np.abs(truth.grad).max())
    np.testing.assert_allclose(truth.eigenvalues, SEPARATED[d], rtol=1e-14)


@pytest.mark.parametrize("name", ["zca", "log"])
@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_degenerate_spectral(degenerate, name, engine):
    loss = _loss(name, 5, seed=2)
    truth = R.ground_truth(degenerate, loss, engine=engine)
    fd = R.finite_difference_grad(degenerate, loss)
    assert truth.certified
    assert truth.digits >= 20
    assert rel(truth.grad, fd) <= 1e-12
    # divided differences vs the closed form f(A) derivative: for f(A) with a repeated eigenvalue
    # the gradient is smooth, finite and O(1) — no 1/gap blow-up
    assert np.abs(truth.grad).max() < 100 * np.abs(loss.weight).max()


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_eigvec_loss_undefined_on_degenerate(degenerate, engine):
    with pytest.raises(ValueError, match="degenerate"):
        R.ground_truth(degenerate, _loss("eigvec", 5), engine=engine)


@pytest.mark.parametrize("spectrum", ["separated", "clustered"])
@pytest.mark.parametrize("name", ["zca", "eigvec", "projector"])
def test_engines_agree(spectrum, name):
    lam = np.linspace(1.0, 4.0, 12)
    if spectrum == "clustered":
        lam[5] = lam[4] * (1 + 1e-10)
        lam[6] = lam[4] * (1 + 2e-10)
    A = build(lam, seed=7)
    loss = _loss(name, 12, seed=4)
    g_mp, lam_mp, d_mp = R._hp_gradient(A, loss, "mpmath")
    g_fl, lam_fl, d_fl = R._hp_gradient(A, loss, "flint")
    assert d_mp >= 25 and d_fl >= 25
    assert _hp_rel(g_fl, g_mp) <= 1e-25
    np.testing.assert_array_equal(lam_mp, lam_fl)


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_digits_and_forced_low_precision(engine):
    A = build([0.5, 1.0, 2.0, 3.0, 5.0, 8.0], seed=11)
    loss = _loss("sqrt", 6, seed=5)
    good = R.ground_truth(A, loss, engine=engine, cache=False)
    assert good.digits >= 25 and good.certified
    bad = R.ground_truth(A, loss, engine=engine, cache=False, _dps=4)
    assert not bad.certified
    assert bad.digits < R.MIN_DIGITS
    # the reported digits are honest: the low-precision result is at least that accurate
    assert rel(bad.grad, good.grad) <= 10.0 ** -(bad.digits - 1) or bad.digits == 0


def test_rigorous_bound_is_not_vacuous_or_wrong():
    """flint's certified digits never exceed the true accuracy (measured against mpmath at 2x)."""
    A = build([0.7, 0.7 * (1 + 1e-8), 1.5, 2.0, 2.9, 3.3, 4.0, 6.0], seed=5)
    for name in ("log", "projector"):
        loss = _loss(name, 8, seed=6)
        g_fl, _, d_fl = R._hp_gradient(A, loss, "flint", _dps=24)
        g_mp, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=80)
        err = _hp_rel(g_fl, g_mp)
        assert 15 <= d_fl
        assert err <= 10.0 ** -d_fl


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_float32_input_is_exact(engine):
    A64 = build([0.4, 1.1, 2.5, 3.0, 5.5], seed=9)
    A32 = A64.astype(np.float32)
    loss = _loss("zca", 5, seed=8)
    t32 = R.ground_truth(A32, loss, engine=engine)
    exact = A32.astype(np.float64)
    # independent: eigenvalues by mpmath of the widened matrix, gradient by finite differences
    with mpmath.workdps(50):
        ev = sorted(mpmath.eigsy(mpmath.matrix(exact.tolist()))[0])
    np.testing.assert_array_equal(t32.eigenvalues, [float(x) for x in ev])
    assert rel(t32.grad, R.finite_difference_grad(exact, loss)) <= 1e-12
    # and it is not the float64 matrix's truth (the float32 rounding is visible)
    assert rel(t32.grad, R.ground_truth(A64, loss, engine=engine).grad) > 1e-9


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_asymmetry_within_tolerance_is_averaged_not_read_from_one_triangle(engine):
    """A accepted with A₀₁ − A₁₀ = 1e-9 (below √eps·max|A|): its truth is that of (A + Aᵀ)/2 exactly, and
    visibly not that of either triangle (mpmath.eigsy reads only the upper one)."""
    A = build([0.5, 1.0, 2.0, 3.5], seed=6)
    A[0, 1] += 1e-9
    loss = _loss("zca", 4, seed=1)
    sym = (A + A.T) / 2
    upper = np.triu(A) + np.triu(A, 1).T
    g = R.ground_truth(A, loss, engine=engine, cache=False).grad
    np.testing.assert_allclose(g, R.ground_truth(sym, loss, engine=engine, cache=False).grad, rtol=1e-15, atol=0)
    assert rel(g, R.ground_truth(upper, loss, engine=engine, cache=False).grad) > 1e-11


def test_input_validation():
    loss = _loss("zca", 3)
    with pytest.raises(ValueError):
        R.ground_truth(np.ones((3, 4)), loss)
    with pytest.raises(InputError, match="single d×d matrix"):  # a ValueError, typed
        R.ground_truth(np.stack([np.eye(3), np.eye(3)]), loss)
    with pytest.raises(ValueError, match="not symmetric"):
        R.ground_truth(np.array([[1.0, 2.0, 0], [0, 1, 0], [0, 0, 1]]), loss)
    with pytest.raises(ValueError, match="engine"):
        R.ground_truth(np.eye(3) * 2, loss, engine="lapack")
    with pytest.raises(ValueError, match="positive definite"):
        R.ground_truth(np.diag([-1.0, 1.0, 2.0]), loss)


@pytest.mark.parametrize("engine", ["mpmath", "flint", "auto"])
@pytest.mark.parametrize("d_loss", [3, 1])
def test_a_loss_built_for_another_d_is_refused(engine, d_loss):
    """mpmath used to cut a 3×3 weight to A's 2×2 block and certify that loss; flint failed deep inside."""
    with pytest.raises(InputError, match=r"weight has shape .* but A is 2×2"):
        R.ground_truth(np.diag([1.0, 2.0]), make_loss("zca", d_loss), engine=engine, cache=False)


def test_iterated_truth_refuses_a_loss_of_another_d():
    with pytest.raises(InputError, match="weight has shape"):
        R.iterated_truth(np.diag([1.0, 2.0]), make_loss("eigvec", 3), np.eye(2), 3, cache=False)


@pytest.mark.parametrize("name", ["zca", "projector"])
def test_exactly_repeated_eigenvalues(name):
    """Exact ties (a duplicated block): no isolated single enclosures; flint certifies each tied
    pair as one invariant subspace (rigorous), and both engines match finite differences."""
    A = np.kron(np.eye(2), np.array([[2.0, 0.5], [0.5, 3.0]]))
    loss = make_loss(name, 4, seed=3, k=2)
    fd = R.finite_difference_grad(A, loss)
    for engine in ("mpmath", "flint"):
        truth = R.ground_truth(A, loss, engine=engine, cache=False)
        assert truth.certified
        assert rel(truth.grad, fd) <= 1e-12
        if engine == "flint":
            assert truth.digits >= 40


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_eigvec_loss_definedness_follows_the_input_precision(engine):
    """Eigenvalues 1e-9 apart are distinct for a float64 matrix but not for a float32 one."""
    lam = np.array([0.5, 1.0, 1.0 + 1e-9, 2.0])
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    loss = make_loss("eigvec", 4, seed=0)
    A64 = (Q * lam) @ Q.T
    A64 = (A64 + A64.T) / 2
    assert R.ground_truth(A64, loss, engine=engine).certified
    with pytest.raises(ValueError, match="degenerate spectrum"):
        R.ground_truth(A64.astype(np.float32), loss, engine=engine, cache=False)


@pytest.mark.parametrize("name", ["sqrt", "projector"])
def test_finite_differences_against_the_closed_form(name):
    """The independent oracle itself: at A = diag(λ), ∂L/∂A_ij = D_ij (G_ij + G_ji)/2 in closed form
    (D_ii = f'(λ_i), D_ij = divided difference of f or of the weights)."""
    lam = np.array([0.5, 1.5, 4.0])
    loss = make_loss(name, 3, seed=2, k=1)
    if name == "sqrt":
        f, df = np.sqrt(lam), 0.5 / np.sqrt(lam)
    else:
        f, df = np.asarray(loss.w, dtype=np.float64), np.zeros(3)
    D = (f[:, None] - f[None, :]) / np.where(np.eye(3, dtype=bool), 1.0, lam[:, None] - lam[None, :])
    np.fill_diagonal(D, df)
    expected = D * (loss.weight + loss.weight.T) / 2
    assert rel(R.finite_difference_grad(np.diag(lam), loss), expected) <= 1e-13

# ----------------------------------------------------------------------------------------------
# huge condition numbers: no certificate for a wrong number


def test_mpmath_condition_1e120_is_not_a_false_certificate():
    """[[1, 1e-61], [1e-61, 1e-120]] (exactly SPD, condition ~1e120), log loss: claimed 31.5 digits
    with ~2 correct (g01 = −25.4 instead of 1.468e59).  Checked against finite differences at 400
    digits, which use only eigenvalues/vectors of perturbed matrices (no Daleckii–Krein code)."""
    A = np.array([[1.0, 1e-61], [1e-61, 1e-120]])
    loss = make_loss("log", 2, seed=0)
    truth = R.ground_truth(A, loss, engine="mpmath", cache=False)
    fd = R.finite_difference_grad(A, loss, dps=400, h="1e-200")
    assert abs(fd[0, 1] / 1.468e59 - 1) < 1e-3  # the value quoted in the issue
    assert _honest(truth, fd)
    assert truth.certified  # with the precision raised to the condition it is also right
    assert rel(truth.grad, fd) <= 1e-12


def _dcd(seed: int, d: int = 8) -> np.ndarray:
    """D C D with a well-conditioned correlation matrix C and D = diag(10^0 … 10^-75): SPD, condition
    ~1e150 (each entry is rounded relatively, so the float64 matrix is SPD too)."""
    C = build(np.linspace(0.5, 2.0, d), seed=seed)
    s = np.sqrt(np.diag(C))
    C = C / s[:, None] / s[None, :]
    D = 10.0 ** -np.linspace(0, 75, d)
    A = D[:, None] * C * D[None, :]
    return (A + A.T) / 2


@pytest.mark.parametrize("seed", [0, 1])
def test_mpmath_dcd_condition_1e150(seed):
    """Seed 0 was rejected as "smallest eigenvalue −1.7e-77"; seed 1 claimed 47.8 digits with a
    relative error 0.13.  Reference: the mpmath engine forced to 500 digits."""
    A = _dcd(seed)
    loss = make_loss("log", 8, seed=0)
    with mpmath.workdps(400):
        lam_min = min(mpmath.eigsy(mpmath.matrix(A.tolist()))[0])
    assert 1e-152 < lam_min < 1e-149  # SPD indeed, independent of the engine
    truth = R.ground_truth(A, loss, engine="mpmath", cache=False)
    assert truth.eigenvalues[0] > 0
    g_ref, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=500)
    exact = np.array([float(x) for x in g_ref]).reshape(8, 8)
    assert _honest(truth, exact)
    assert truth.certified and rel(truth.grad, exact) <= 1e-12


@pytest.mark.parametrize("seed", [0, 3])
def test_flint_dcd_condition_1e150(seed):
    """The flint engine refined to absolute accuracy ~1e-50 only: λ_min of an SPD matrix with
    condition 1e150 came out as 4.7e-150 instead of 8.86e-151 (0 digits, and the wrong eigenvalues
    in ``Truth.eigenvalues``).  For spectral losses its precision now follows λ_min too; the result
    is rigorous and matches the mpmath engine at 500 digits."""
    A = _dcd(seed)
    loss = make_loss("log", 8, seed=0)
    g_fl, lam, digits = R._hp_gradient(A, loss, "flint")
    g_mp, lam_mp, _ = R._hp_gradient(A, loss, "mpmath", _dps=500)
    np.testing.assert_allclose(lam, lam_mp, rtol=1e-14)
    assert digits >= 30
    assert _hp_rel(g_fl, g_mp) <= 10.0 ** -digits


def test_flint_condition_1e120():
    A = np.array([[1.0, 1e-61], [1e-61, 1e-120]])
    loss = make_loss("log", 2, seed=0)
    truth = R.ground_truth(A, loss, engine="flint", cache=False)
    fd = R.finite_difference_grad(A, loss, dps=400, h="1e-200")
    assert truth.certified and rel(truth.grad, fd) <= 1e-12


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), span=st.floats(0.0, 60.0), engine=st.sampled_from(["mpmath", "flint"]))
def test_graded_matrices_are_certified_honestly(seed, span, engine):
    """Property: D C D with condition up to ~1e120 (3×3, log loss) — the claimed digits never exceed
    the true accuracy (mpmath forced to 400 digits), and the truth is certified."""
    C = build([0.5, 1.0, 2.0], seed=seed)
    s = np.sqrt(np.diag(C))
    D = 10.0 ** -np.array([0.0, span / 2, span])
    A = D[:, None] * (C / s[:, None] / s[None, :]) * D[None, :]
    A = (A + A.T) / 2
    loss = make_loss("log", 3, seed=seed % 7)
    g, _, digits = R._hp_gradient(A, loss, engine)
    g_ref, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=400)
    assert digits >= R.MIN_DIGITS
    assert _hp_rel(g, g_ref) <= 10.0 ** -digits


# ----------------------------------------------------------------------------------------------
# gradients outside the float64 range


@pytest.mark.parametrize("engine,d", [("flint", 32), ("mpmath", 6)])
def test_overflowing_gradient_is_not_certified(engine, d):
    """diag(logspace(−300, 0, d)), zca: ∂L/∂A ~ λ_min^-3/2 = 1e450.  flint raised OverflowError,
    mpmath labelled an inf gradient "certified 48.3 digits"."""
    A = np.diag(np.logspace(-300, 0, d))
    truth = R.ground_truth(A, make_loss("zca", d, seed=0), engine=engine, cache=False)
    assert not np.isfinite(truth.grad).all()
    assert not truth.certified and truth.digits == 0
    assert "overflows float64" in truth.note


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_exact_power_of_two_scaling(engine):
    """A' = 2^k A exactly.  log: ∂L/∂A(A') = 2^-k ∂L/∂A(A) (in range: certified and equal);
    zca: scales by 2^(-3k/2), which underflows (k = 996) or overflows (k = −996) float64 — the
    truth used to be 0 and "certified" (every method then scored angle 0)."""
    A = build([1.0, 2.0, 3.0, 4.0], seed=0)
    base = R.ground_truth(A, make_loss("log", 4, seed=1), engine=engine, cache=False)
    up = R.ground_truth(np.ldexp(A, 996), make_loss("log", 4, seed=1), engine=engine, cache=False)
    assert base.certified and up.certified
    assert rel(up.grad, np.ldexp(base.grad, -996)) <= 1e-14
    for k, what in ((996, "underflows"), (-996, "overflows")):
        t = R.ground_truth(np.ldexp(A, k), make_loss("zca", 4, seed=1), engine=engine, cache=False)
        assert not t.certified and t.digits == 0
        assert what in t.note


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_matrix_scaled_by_1e300(engine):
    """The reported case: A·1e300 with the zca loss — the truth (~1e-450) underflows to 0 and was
    reported certified with angle 0 for every method."""
    A = build([1.0, 2.0, 3.0, 4.0], seed=0) * 1e300
    t = R.ground_truth(A, make_loss("zca", 4, seed=1), engine=engine, cache=False)
    assert not t.grad.any() and not t.certified and "underflows" in t.note


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
@pytest.mark.parametrize("A", [np.array([[8.9e307, 8.9e307], [8.9e307, -8.9e307]]), np.full((3, 3), 8e307)],
                         ids=["eigenvalues ±1.26e308", "eigenvalue 2.4e308"])
def test_entries_whose_eigenvalues_or_gaps_may_overflow_are_refused(A, engine):
    """A + Aᵀ is finite, but λ or the gaps between them leave float64 (|λ| ≤ d·max|a_ij|, a gap ≤ twice
    that): mpmath's digit estimate raised 'cannot convert float NaN to integer', flint an OverflowError or
    a 'degenerate (≤ inf)' verdict. Refused before any work, naming the bound."""
    with pytest.raises(InputError, match=r"exceed .* = float64's largest / \(2d\)"):
        R.ground_truth(A, make_loss("eigvec", A.shape[0], seed=0), engine=engine, cache=False)


def test_truth_keeps_its_old_constructor():
    """Truth gained a ``note`` field with a default: five-argument construction still works."""
    t = R.Truth(np.eye(2), np.ones(2), 30.0, "flint", 0.1)
    assert t.note == "" and t.certified


def test_ground_truth_and_iterated_truth_name_a_bad_loss_steps_or_mask():
    """AttributeError ('str' object has no attribute 'weight'), int(nan)/int(None) errors and a numpy
    reshape error before."""
    A = np.diag([1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="loss must be a probe loss .*'zca'"):
        R.ground_truth(A, "zca", cache=False)
    loss = make_loss("zca", 3)
    for steps in (float("nan"), None, "3", 2.5, 0):
        with pytest.raises(ValueError, match="whole number of steps"):
            R.iterated_truth(A, loss, np.eye(3), steps, cache=False)
    with pytest.raises(InputError, match="mask of the 3 eigenpairs"):
        R.iterated_truth(A, loss, np.eye(3), 3, kept=[True], cache=False)
