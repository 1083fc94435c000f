"""``reference.iterated_truth``: the P-bit reverse mode of power iteration with deflation, checked
against a closed form, against high-precision central differences of a forward written here in
mpmath, and on a spectrum where 128 bits are not enough."""

import mpmath
import numpy as np
import pytest

import stabkit.reference as R
from stabkit import spectra
from stabkit.losses import make_loss
from stabkit.reference import _power_iteration, iterated_truth

from .conftest import build


def _loss_after_iteration(A, starts, steps, loss, kept, dps):
    """L(λ̂, Û) after ``steps`` power-iteration steps with deflation from ``starts``, all in mpmath at
    ``dps`` digits, written out independently of the module (indices largest first, M ← M − M u uᵀ)."""
    with mpmath.workdps(dps):
        d = A.rows
        M = A.copy()
        W = mpmath.matrix(loss.weight.tolist())
        total = mpmath.mpf(0)
        for k in range(d - 1, -1, -1):
            v = mpmath.matrix(starts[:, k].tolist())
            for _ in range(steps):
                w = M * v
                v = w / mpmath.norm(w)
            Mv = M * v
            lam = (v.T * Mv)[0]
            if kept[k]:
                quad = (v.T * W * v)[0]
                total += (loss.f_mp(lam) if loss.kind == "spectral" else mpmath.mpf(float(loss.w[k]))) * quad
            M = M - Mv * v.T
        return total


def _directional_fd(A, starts, steps, loss, kept, E, dps=80, h=mpmath.mpf(10) ** -30):
    """Central difference of the mpmath forward along the symmetric direction E (error ~h² + 10^-dps/h)."""
    with mpmath.workdps(dps):
        Am, Em = mpmath.matrix(A.tolist()), mpmath.matrix(E.tolist())
        up = _loss_after_iteration(Am + h * Em, starts, steps, loss, kept, dps)
        down = _loss_after_iteration(Am - h * Em, starts, steps, loss, kept, dps)
        return (up - down) / (2 * h)


def _directions(d, seed, n=3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        E = rng.standard_normal((d, d))
        yield (E + E.T) / 2


@pytest.mark.parametrize("loss_name,kept", [("zca", [1, 1, 1, 1, 1]), ("eigvec", [1, 1, 1, 1, 1]),
                                            ("sqrt", [0, 0, 1, 1, 1])])
def test_matches_high_precision_central_differences(loss_name, kept):
    """⟨∂L/∂A, E⟩ equals the 80-digit central difference of an independent mpmath forward to ≥ 25
    digits, for random starts (the iteration has not converged: 4 steps), dropped pairs included."""
    A = build([0.2, 0.5, 0.9, 1.4, 2.0], seed=3)
    starts = np.random.default_rng(7).standard_normal((5, 5))
    kept = np.array(kept, dtype=bool)
    loss = make_loss(loss_name, 5, seed=2)
    truth = iterated_truth(A, loss, starts, 4, kept)
    assert truth.engine == "arb" and truth.digits >= 30
    for E in _directions(5, seed=11):
        fd = float(_directional_fd(A, starts, 4, loss, kept, E))
        assert abs(float((truth.grad * E).sum()) - fd) <= 1e-14 * max(1.0, abs(fd))


def test_exact_starts_on_a_diagonal_matrix_give_the_power_iteration_closed_form():
    """A = diag(λ), starts e_k: every iterate stays e_k, and reverse mode through T steps is the series
    F_ik = S_T(λ_i/λ_k)/λ_k (i < k), −S_{T−1}(λ_k/λ_i)/λ_i (i > k), S_n(r) = Σ_{s<n} r^s
    (the closed form in ``stabkit.methods.power_iteration``, written out here): ∂L/∂A = sym(F ∘ gU + diag(gλ))."""
    lam = np.array([0.3, 0.7, 1.1, 2.5])
    T = 6
    loss = make_loss("zca", 4, seed=5)
    truth = iterated_truth(np.diag(lam), loss, np.eye(4), T)
    G = loss.weight
    gU = 2 * ((G + G.T) / 2) * lam ** -0.5  # ∂L/∂U at U = I: column k scaled by f(λ_k)
    glam = -0.5 * lam ** -1.5 * np.diag(G)
    F = np.zeros((4, 4))
    for i in range(4):
        for k in range(4):
            if i < k:
                F[i, k] = sum((lam[i] / lam[k]) ** s for s in range(T)) / lam[k]
            elif i > k:
                F[i, k] = -sum((lam[k] / lam[i]) ** s for s in range(T - 1)) / lam[i]
    expected = F * gU + np.diag(glam)
    expected = (expected + expected.T) / 2
    np.testing.assert_allclose(truth.grad, expected, rtol=0, atol=1e-14 * np.abs(expected).max())
    np.testing.assert_allclose(truth.eigenvalues, lam, rtol=1e-15)


def test_raises_precision_until_two_precisions_agree():
    """On an arithmetic spectrum (LAPACK mode 4, d = 16) 19 steps with deflation are so sensitive
    that 128 bits agree with 256 on no digit; the engine doubles until they do and the answer
    matches a 150-digit central difference of the independent forward."""
    A = spectra.make("lapack", 16, seed=0, mode=4).matrix
    starts = np.random.default_rng(1).uniform(-0.5, 0.5, (16, 16))
    loss = make_loss("eigvec", 16, seed=0)
    kept = np.ones(16, dtype=bool)
    lo = _power_iteration._at_precision(A, starts, 19, kept, loss, 128)[0]
    hi = _power_iteration._at_precision(A, starts, 19, kept, loss, 256)[0]
    assert _power_iteration.agreement_digits(hi, lo) < 10
    truth = iterated_truth(A, loss, starts, 19)
    assert truth.digits >= 30 and "128 bits" not in truth.note
    E = next(_directions(16, seed=4, n=1))
    fd = float(_directional_fd(A, starts, 19, loss, kept, E, dps=150, h=mpmath.mpf(10) ** -60))
    assert abs(float((truth.grad * E).sum()) - fd) <= 1e-12 * max(1.0, abs(fd))


def test_refuses_what_is_undefined_and_reuses_its_cache():
    A = build([0.2, 0.5, 0.9], seed=1)
    loss = make_loss("zca", 3, seed=0)
    with pytest.raises(ValueError, match="start vectors"):
        iterated_truth(A, loss, np.eye(2), 3)
    with pytest.raises(ValueError, match="zero"):
        iterated_truth(np.zeros((3, 3)), loss, np.eye(3), 3)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            iterated_truth(A, loss, np.eye(3), steps)
    indefinite = build([-0.9, -0.5, -0.2], seed=1)
    with pytest.raises(ValueError, match="positive definite"):
        iterated_truth(indefinite, loss, np.eye(3), 25)
    first = iterated_truth(A, loss, np.eye(3), 3)
    again = iterated_truth(A, loss, np.eye(3), 3)
    assert again.seconds == first.seconds and np.array_equal(again.grad, first.grad)


def test_a_dropped_pair_outside_the_loss_domain_does_not_block_the_truth():
    """Eigenvalues 1, −1.5, 2: the middle stage finds the pair at −1.5 (the largest |λ| left), which
    is dropped, and the last stage is kept. L = Σ_kept λ̂^-½ ûᵀWû is smooth at A and its gradient
    matches the 80-digit central difference; only the kept λ̂ must be in zca's domain."""
    A = build([-1.5, 1.0, 2.0], seed=4)
    starts = np.random.default_rng(0).standard_normal((3, 3))
    kept = np.array([True, False, True])
    loss = make_loss("zca", 3, seed=1)
    truth = iterated_truth(A, loss, starts, 25, kept, cache=False)
    assert truth.eigenvalues[1] < 0 < truth.eigenvalues[[0, 2]].min()
    for E in _directions(3, seed=2, n=2):
        fd = float(_directional_fd(A, starts, 25, loss, kept, E))
        assert abs(float((truth.grad * E).sum()) - fd) <= 1e-13 * max(1.0, abs(fd))


def test_stages_after_the_last_kept_pair_are_not_run():
    """diag(2, 0) from exact starts: the first stage deflates M to exactly 0, so a second stage would
    break down; with only the first pair kept it is not run (λ̂ NaN there) and the gradient is the
    closed form ∂(u₁ᵀWu₁)/∂A of the top pair's converged eigenvector e₁ on a diagonal matrix."""
    A = np.diag([0.0, 2.0])
    loss = make_loss("eigvec", 2, seed=0)
    with pytest.raises(ValueError, match="zero"):
        iterated_truth(A, loss, np.eye(2), 5, cache=False)
    truth = iterated_truth(A, loss, np.eye(2), 5, [False, True], cache=False)
    assert np.isnan(truth.eigenvalues[0]) and truth.eigenvalues[1] == 2.0
    # against a central difference of the kept stage alone (5 normalised steps from e₂), written here
    E = np.array([[0.3, 1.0], [1.0, -0.2]])
    with mpmath.workdps(60):
        h = mpmath.mpf(10) ** -25
        def f(t):
            M = mpmath.matrix(A.tolist()) + t * mpmath.matrix(E.tolist())
            v = mpmath.matrix([0, 1])
            for _ in range(5):
                v = M * v / mpmath.norm(M * v)
            W = mpmath.matrix(loss.weight.tolist())
            return (v.T * W * v)[0] * mpmath.mpf(float(loss.w[1]))
        fd = float((f(h) - f(-h)) / (2 * h))
    assert abs(float((truth.grad * E).sum()) - fd) <= 1e-13 * max(1.0, abs(fd))


def test_truths_computed_in_several_threads_equal_the_serial_ones():
    """The working precision is process-wide: truths computed at once in threads (a threaded Dask
    worker, a user's thread pool) must still be those computed one after another."""
    import threading

    # a spectrum settled at 128/256 bits beside ones that need 1024 bits and more (exact zeros)
    families = [("separated", {}), ("rank_deficient", {}), ("separated", {"cond": 3.0}), ("rank_deficient", {"r": 2})]
    cases = [(spectra.make(f, 8, seed=s, **p).matrix, np.random.default_rng(s).standard_normal((8, 8)))
             for s, (f, p) in enumerate(families)]
    loss = make_loss("eigvec", 8, seed=0)
    serial = [iterated_truth(A, loss, S, 19, cache=False).grad for A, S in cases]
    together = [None] * len(cases)

    def work(i):
        together[i] = iterated_truth(*cases[i][:1], loss, cases[i][1], 19, cache=False).grad

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, together):
        np.testing.assert_array_equal(a, b)


# a weight entry of 1e-100 beside 1 is lost alike at P and 2P bits; ∂L/∂A consists of nothing else
_LOST_ALIKE = {
    # one stage from (1/2, 1): W = I contributes exactly 0 at 128 and 256 bits (û's norm rounds to 1), the
    # 1e-100 is lost in W_sym û at both: ∂L/∂A = 0 twice, 60 digits certified; the truth is ±4.2e-101
    "exact zero": (np.array([[1.0, 1e-100], [1e-100, 2.0]]), np.array([[1.0, 0.5], [0.25, 1.0]]),
                   np.array([[1.0, 1e-100], [1e-100, 1.0]]), [False, True]),
    # the same beside an exact 1e-150 from a stage on e₃ (λ = 4): both return the 2.5e-151 alone,
    # agreeing to 38 digits; the truth is 4.2e-101 (0 right)
    "beside 1e-150": (np.array([[1.0, 1e-100, 0], [1e-100, 2.0, 0], [0, 0, 4.0]]),
                      np.array([[1.0, 0.5, 0], [0.25, 1.0, 0], [0, 0, 1.0]]),
                      np.array([[1.0, 1e-100, 1e-150], [1e-100, 1.0, 0], [1e-150, 0, 1.0]]), [False, True, True]),
}


@pytest.mark.parametrize("case", list(_LOST_ALIKE))
def test_digits_never_exceed_the_truth_for_a_gradient_small_by_cancellation(case):
    """The agreement of P and 2P bits cannot see what both lose alike: information below 2^-2P of the
    terms. ``digits`` is now capped by what 2P bits leave of max|∂L/∂A| against the magnitude of the
    terms summed into it, so the engine doubles on (here to 1024 bits). Truth: a 400-digit central
    difference (h = 1e-150) of the independent forward, per entry."""
    A, starts, W, kept = _LOST_ALIKE[case]
    d = A.shape[0]
    kept = np.array(kept)
    loss = make_loss("projector", d, weight=W, k=int(kept.sum()))
    _, _, digits, bits = _power_iteration.gradient(A, starts, 1, kept, loss)
    hi = _power_iteration._at_precision(A, starts, 1, kept, loss, bits)[0]
    with mpmath.workdps(400):
        exact = [[None] * d for _ in range(d)]
        for i in range(d):
            for j in range(i, d):
                E = np.zeros((d, d))
                E[i, j] = E[j, i] = 1.0
                fd = _directional_fd(A, starts, 1, loss, kept, E, dps=400, h=mpmath.mpf(10) ** -150)
                exact[i][j] = exact[j][i] = fd if i == j else fd / 2
        exact = [x for row in exact for x in row]
        err = max(abs(x - y) for x, y in zip(hi, exact)) / max(abs(y) for y in exact)
        true_digits = float(min(60, max(0, -mpmath.log10(err)))) if err else 60.0
    assert digits <= true_digits
    truth = iterated_truth(A, loss, starts, 1, kept, cache=False)
    top = float(max(exact, key=abs))
    assert truth.certified and abs(truth.grad.flat[np.argmax(np.abs(truth.grad))] - top) <= 1e-14 * abs(top)


def test_an_exact_zero_gradient_is_certified_as_in_the_mpmath_engine():
    """With an antisymmetric weight (W_sym = 0) every term summed into ∂L/∂A is exactly 0, so is ∂L/∂A
    (closed form: ⟨W, P⟩ = ⟨W_sym, P⟩ = 0 for every symmetric P). The cancellation rule is now one
    function for both engines: nothing is lost where S = 0. Before, arb charged ∞ digits for any
    computed 0 (0 certified) while mpmath certified it."""
    A = np.array([[1.0, 0.5], [0.5, 2.0]])
    loss = make_loss("projector", 2, weight=np.array([[0.0, 1.0], [-1.0, 0.0]]), k=1)
    grad, _, digits, _ = _power_iteration.gradient(A, np.array([[1.0, 0.5], [0.25, 1.0]]), 3,
                                                   np.array([False, True]), loss)
    assert not grad.any() and digits == 60.0
    _, _, mp_digits = R._hp_gradient(A, loss, "mpmath")
    assert mp_digits >= 15
