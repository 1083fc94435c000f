"""The certified ground truth against independent computations.

Independent checks: mpmath finite differences of the loss *value* (no Daleckii–Krein code), the
other engine (mpmath.eigsy vs float64 eigh + Ogita–Aishima in integers), and eigenvalues known in
closed form.
"""

import time

import mpmath
import numpy as np
import pytest

from stabkit import reference as R
from stabkit import spectra
from stabkit.losses import LOSSES, make_loss
from tests.conftest import build


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _loss(name, d, seed=0):
    return make_loss(name, d, seed=seed, k=2)


def _hp_rel(g1, g2):
    with mpmath.workdps(120):
        return float(max(abs(x - y) for x, y in zip(g1, g2)) / max(abs(y) for y in g2))


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
def test_cache_identical_and_fast(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_CACHE", str(tmp_path / "cache"))
    A = build(np.linspace(1, 3, 16), seed=2)
    loss = _loss("log", 16, seed=3)
    t = time.perf_counter()
    first = R.ground_truth(A, loss, engine=engine)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    second = R.ground_truth(A, loss, engine=engine)
    t_second = time.perf_counter() - t
    np.testing.assert_array_equal(first.grad, second.grad)
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    assert (first.digits, first.engine) == (second.digits, second.engine)
    assert t_second < t_first / 5
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    # the eigendecomposition is cached separately: a new loss on the same matrix reuses it
    files = {p.name for p in (tmp_path / "cache").iterdir()}
    assert any(f.startswith("eig-") for f in files) and any(f.startswith("grad-") for f in files)
    other = R.ground_truth(A, _loss("projector", 16, seed=3), engine=engine)
    assert other.certified
    assert len([f for f in (tmp_path / "cache").iterdir() if f.name.startswith("eig-")]) == 1
    # cache=False recomputes and writes nothing new
    n = len(list((tmp_path / "cache").iterdir()))
    again = R.ground_truth(A, loss, engine=engine, cache=False)
    np.testing.assert_array_equal(again.grad, first.grad)
    assert len(list((tmp_path / "cache").iterdir())) == n


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


def test_eigh_exact():
    A = build([1.0, 2.0, 5.0], seed=4)
    lam, U = R.eigh_exact(A, 40)
    with mpmath.workdps(40):
        M = mpmath.matrix(A.tolist())
        assert mpmath.mnorm(M * U - U * mpmath.diag(lam), 1) < mpmath.mpf(10) ** -35
        assert list(lam) == sorted(lam)


def test_input_validation():
    loss = _loss("zca", 3)
    with pytest.raises(ValueError):
        R.ground_truth(np.ones((3, 4)), loss)
    with pytest.raises(ValueError, match="not symmetric"):
        R.ground_truth(np.array([[1.0, 2.0, 0], [0, 1, 0], [0, 0, 1]]), loss)
    with pytest.raises(ValueError, match="engine"):
        R.ground_truth(np.eye(3) * 2, loss, engine="lapack")
    with pytest.raises(ValueError, match="positive definite"):
        R.ground_truth(np.diag([-1.0, 1.0, 2.0]), loss)


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


# ----------------------------------------------------------------------------------------------
# exactly repeated eigenvalues in the float64 sense: LAPACK xLATMS modes 1 and 2


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("name", ["zca", "sqrt"])
def test_lapack_repeated_spectrum_certified(mode, name):
    """d − 1 (mode 1) or d − 1 (mode 2) eigenvalues equal before rounding, split by ~1e-16 after:
    the flint engine resolves the cluster and certifies the gradient rigorously."""
    A = spectra.make("lapack", 32, mode=mode).matrix
    truth = R.ground_truth(A, make_loss(name, 32), engine="flint", cache=False)
    assert truth.engine == "flint"
    assert truth.digits >= 20 and truth.certified


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("name", ["zca", "sqrt"])
def test_lapack_repeated_spectrum_matches_mpmath(mode, name):
    """d = 8: flint's certified result agrees with mpmath at 100 digits to ≥ 20 digits, and its
    claimed digits never exceed the true accuracy."""
    A = spectra.make("lapack", 8, mode=mode).matrix
    loss = make_loss(name, 8)
    g_fl, _, d_fl = R._hp_gradient(A, loss, "flint")
    g_mp, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=100)
    err = _hp_rel(g_fl, g_mp)
    assert d_fl >= 20
    assert err <= 1e-20
    assert err <= 10.0 ** -d_fl


def _kron3():
    return np.kron(np.eye(3), np.array([[2.0, 0.5], [0.5, 3.0]]))  # {(5 ± √2)/2} each 3 times


@pytest.mark.parametrize("case", ["exact-ties", "lapack1-low", "lapack2-low", "lapack1-lower"])
@pytest.mark.parametrize("name", ["zca", "sqrt", "log"])
def test_group_bound_is_honest(case, name):
    """The invariant-subspace (group) certificate never claims more digits than the true error,
    measured against mpmath at 100 digits: exact ties (the group's radius is the enclosure width
    only), and LAPACK spectra at a forced low precision where the ~1e-17 splits are not resolved
    (the group's radius includes the true splitting, bounded by the mean-value term)."""
    if case == "exact-ties":
        A, dps = _kron3(), None
    else:
        A = spectra.make("lapack", 8, mode=1 if "1" in case else 2).matrix
        dps = 8 if case.endswith("-low") else 4
    d = A.shape[0]
    loss = make_loss(name, d, seed=3)
    st = __import__("stabkit.reference._flint", fromlist=["eig_states"]).eig_states(
        R._as_exact_float64(A), dps=dps, cache=False)[0]
    assert np.isfinite(st["eps"]).all() and len(np.unique(st["grp"])) < d  # the group path is used
    g_fl, _, d_fl = R._hp_gradient(A, loss, "flint", _dps=dps)
    g_mp, _, _ = R._hp_gradient(A, loss, "mpmath", _dps=100)
    err = _hp_rel(g_fl, g_mp)
    assert err <= 10.0 ** -d_fl
    assert d_fl >= (40 if case == "exact-ties" else 2)


def test_cache_keys_carry_the_engine_version(monkeypatch):
    A = build([1.0, 2.0, 3.0], seed=1)
    loss = _loss("zca", 3)
    for engine in ("mpmath", "flint"):
        k_eig, k_grad = R._eig_key(A, engine, None), R._grad_key(A, engine, loss, None)
        assert f"-{engine}{R.ENGINE_VERSIONS[engine]}-" in k_eig and R._CACHE_VERSION in k_eig
        assert f"-{engine}{R.ENGINE_VERSIONS[engine]}-" in k_grad and R._CACHE_VERSION in k_grad
        monkeypatch.setitem(R.ENGINE_VERSIONS, engine, "bumped")
        assert R._eig_key(A, engine, None) != k_eig
        assert R._grad_key(A, engine, loss, None) != k_grad


@pytest.mark.parametrize("spectrum", [[1.0, 2.0, 2.0, 2.0, 4.0], [0.5, 1.0, 1.0, 1.0, 1.0, 3.0]])
def test_repeated_eigenvalues_certified_from_any_start(spectrum):
    """A triple (quadruple) split only by rounding is resolved and certified whatever basis of the
    cluster the float64 eigh returns: seeded matrices, the start vectors rotated inside the cluster
    and perturbed (so the result does not hang on one LAPACK's rounding)."""
    from stabkit.reference import _flint as F

    lam = np.asarray(spectrum)
    cl = np.nonzero(lam == lam[1])[0]
    d = lam.size
    for seed in range(8):
        rng = np.random.default_rng(seed)
        A = R._as_exact_float64(build(lam, seed=seed))
        k = -int(np.frexp(np.abs(A).max())[1])
        A2 = np.ldexp(A, k)
        lam0, Q0 = np.linalg.eigh(A2)
        Z, _ = np.linalg.qr(rng.standard_normal((cl.size, cl.size)))
        Q0[:, cl] = Q0[:, cl] @ Z
        Q0 += rng.standard_normal(Q0.shape) * 10.0 ** rng.uniform(-15, -10)
        bits = F._choose_bits(lam0, None)
        last, _ = F._refine(A2, bits, lam0, Q0)
        st = F._state_from_pass(last, bits, certify=True, k=k)
        loss = _loss("zca", d, seed=2)
        g, scale, bound = F._gradient(st, loss, np.asarray(loss.weight, dtype=np.float64), True)
        assert bound is not None, seed
        assert F._digits_from(bound, g, scale) >= 20, seed
        # and the certified gradient is the true one (finite differences, independent of the engine)
        if seed < 2:
            assert rel(F._to_float(g, scale), R.finite_difference_grad(A, loss)) <= 1e-12
