"""The mpmath engine (``stabkit.reference._mpmath``): its eigendecomposition and the cap on its
agreement estimate."""

import mpmath
import numpy as np
import pytest

from stabkit import reference as R
from stabkit.errors import InputError
from stabkit.losses import make_loss
from tests.conftest import build


def test_eigh_exact():
    A = build([1.0, 2.0, 5.0], seed=4)
    lam, U = R.eigh_exact(A, 40)
    with mpmath.workdps(40):
        M = mpmath.matrix(A.tolist())
        assert mpmath.mnorm(M * U - U * mpmath.diag(lam), 1) < mpmath.mpf(10) ** -35
        assert list(lam) == sorted(lam)


def test_mpmath_forced_precision_cannot_certify_a_shared_error():
    """Both forced precisions (30, 50) treat the 1e-61 coupling as negligible and agree on the wrong
    gradient; the digit estimate is capped by the condition and does not certify it."""
    A = np.array([[1.0, 1e-61], [1e-61, 1e-120]])
    truth = R.ground_truth(A, make_loss("log", 2, seed=0), engine="mpmath", cache=False, _dps=30)
    assert not truth.certified and truth.digits == 0


@pytest.mark.parametrize("dps", [0, -1, 2.5, float("nan"), "30", None])
def test_a_precision_that_is_no_digit_count_is_refused(dps):
    """eigh_exact(A, 0) returned eigenvalues 1, 1.5, 3 for a matrix whose are 0.92, 1.24, 2.34 (mpmath's
    minimum precision), without a word; NaN gave a bare ValueError from int()."""
    A = np.array([[2.0, 0.5, 0.1], [0.5, 1.5, 0.2], [0.1, 0.2, 1.0]])
    with pytest.raises(InputError, match="decimal digits"):
        R.eigh_exact(A, dps)
    with pytest.raises(InputError, match="decimal digits"):
        R.finite_difference_grad(A, make_loss("zca", 3), dps=dps)


def test_divided_differences_near_a_tie_and_apart():
    """Daleckii–Krein's f[a, b] for f = log at 30 digits, against (log b − log a)/(b − a) at 80: b − a =
    1e-20 takes the midpoint branch, f'((a + b)/2) (off by f'''h²/24 ≈ 1e-42; f'(a) by 2.5e-21),
    b − a = 1e-10 and ½ the direct quotient, the first with 10 extra digits against its cancellation;
    the diagonal is f'(λ) = 1/λ."""
    from stabkit.reference._mpmath import _divided_differences_mp

    loss = make_loss("log", 2)
    for gap in ("1e-20", "1e-10", "0.5"):
        with mpmath.workdps(30):
            a, b = mpmath.mpf(2), 2 + mpmath.mpf(gap)
            D = _divided_differences_mp([a, b], loss, 30)
        with mpmath.workdps(80):
            want = (mpmath.log(b) - mpmath.log(a)) / (b - a)
            assert abs(D[0][1] - want) < mpmath.mpf("1e-28") * want and D[1][0] == D[0][1]
            assert abs(D[1][1] - 1 / b) < mpmath.mpf("1e-29")


def test_gap_digits_count_the_relative_gap_whatever_the_scale():
    """P's gap digits: ⌈−log10(min gap / max|λ|)⌉ = ⌈−log10(1e-6/3)⌉ = 7 for λ = (1, 1 + 1e-6, 3)·c, for
    c = 1e-8, 1 and 1e8 alike (an absolute gap would give 0 at c = 1e8 and 15 at c = 1e-8)."""
    from stabkit.reference._common import gap_digits

    for c in (1e-8, 1.0, 1e8):
        assert gap_digits(np.diag([1.0, 1.0 + 1e-6, 3.0]) * c) == 7


def _weighted_truth(A, loss, dps):
    """∂L/∂A row-major for a weighted loss, independently: mpmath.eigsy at ``dps`` and the sum
    Σ_{w_i ≠ w_j} (w_i − w_j)/(λ_i − λ_j) (u_iᵀ G_sym u_j) u_i u_jᵀ written out term by term."""
    d = A.shape[0]
    with mpmath.workdps(dps):
        E, Q = mpmath.eigsy(mpmath.matrix(A.tolist()))
        order = sorted(range(d), key=lambda i: E[i])
        lam, u = [E[i] for i in order], [Q[:, i] for i in order]
        Gs = (mpmath.matrix(loss.weight.tolist()) + mpmath.matrix(loss.weight.T.tolist())) / 2
        w = [mpmath.mpf(x) for x in loss.w]
        g = mpmath.zeros(d, d)
        for i in range(d):
            for j in range(d):
                if w[i] != w[j]:
                    g += (w[i] - w[j]) / (lam[i] - lam[j]) * (u[i].T * Gs * u[j])[0, 0] * (u[i] * u[j].T)
        return [g[r, c] for r in range(d) for c in range(d)]


def _true_digits(hp, exact, dps):
    with mpmath.workdps(dps):
        err = max(abs(x - y) for x, y in zip(hp, exact)) / max(abs(y) for y in exact)
        return 60.0 if err == 0 else float(min(60, max(0, -mpmath.log10(err))))


_TINY_COUPLING = {
    # 1e-61 is below both precisions' deflation threshold (P = 32, P2 = 53): both return diagonal
    # eigenvectors and agree to 60 digits on ∂L/∂A = 0; the truth is ±2e-61 (0 digits right)
    "coupling 1e-61": (np.array([[1.0, 1e-61], [1e-61, 2.0]]), np.diag([1.0, 3.0])),
    # the same beside a genuine 5e-51 from G's 1e-50: both agree on the 5e-51 and miss the 2e-61 (10.4 right)
    "coupling 1e-61 beside 1e-50": (np.array([[1.0, 0, 0], [0, 2.0, 1e-61], [0, 1e-61, 3.0]]),
                                    np.array([[1.0, 0, 1e-50], [0, 3.0, 0], [1e-50, 0, 5.0]])),
    # ∂L/∂A ≈ 1e-12 of its terms' scale (G = I + 2^-40 e₃e₃ᵀ: L nearly constant): P and P2 differ, and
    # without the cancellation term only their agreement (19.7 digits, not the cap's 28) caught it
    "G = I + 2^-40 e3 e3^T": (build([1.0, 2.0, 3.0], seed=1), np.diag([1.0, 1.0, 1.0 + 2.0 ** -40])),
}


@pytest.mark.parametrize("case", list(_TINY_COUPLING))
def test_mpmath_digits_never_exceed_the_truth_for_a_gradient_small_by_cancellation(case):
    """The cap P − 3 − gap − cond is on the scale of the gradient's terms (max|D|·‖G_sym‖_F ≈ 3–6 here),
    the agreement relative to ∂L/∂A itself: where ∂L/∂A is 1e-50 or 0 of that scale and both precisions
    make the same (backward-stable) error, they agree exactly and 28 digits were certified. The cap now
    loses the cancellation's digits too. Checked against an independent truth at 160 digits."""
    A, G = _TINY_COUPLING[case]
    loss = make_loss("projector", A.shape[0], weight=G)
    hp, _, digits = R._hp_gradient(A, loss, "mpmath")
    assert digits <= _true_digits(hp, _weighted_truth(A, loss, 160), 160)
    if case.startswith("coupling"):
        assert not R.ground_truth(A, loss, engine="mpmath", cache=False).certified


@pytest.mark.parametrize("dps", [5, 6])
def test_mpmath_weights_are_exact_at_a_small_forced_precision(dps):
    """mpmath.mpf(float) rounds to the working precision: at dps 5 and 6 (P2 = 13, 14: below 53 bits) the
    weights 1 and 1 + 2^-52 became equal at both precisions, ∂L/∂A = 0 at both, and the cap's 1–2 digits
    were certified for a gradient with 0 right. The weights (and G) now enter exactly."""
    from stabkit.losses import WeightedEigvecLoss

    A = np.array([[1.0, 0.5], [0.5, 2.0]])
    loss = WeightedEigvecLoss("eigvec", np.array([[1.0, 0.0], [0.3, 1.0]]), np.array([1.0, 1.0 + 2.0 ** -52]))
    hp, _, digits = R._hp_gradient(A, loss, "mpmath", _dps=dps)
    assert digits <= _true_digits(hp, _weighted_truth(A, loss, 60), 60)
    assert max(abs(x) for x in hp) > 0


@pytest.mark.parametrize("case", ["generic", "G = I + 2^-40 e3 e3^T"])
def test_mpmath_agreement_never_exceeds_the_returned_digits(case, monkeypatch):
    """The agreement of the results at P and P2 ≈ 1.5P + 5 measures the error of the one at P; the engine
    returns the one at P2 (here ~21 digits more accurate), so the agreement is a lower bound on the
    returned entries' true digits. Were the second precision P again, it would be 60 whatever they are:
    the cap (27.6 and 15 digits here) hides that wherever its model holds, so only this test sees it."""
    from stabkit.reference import _mpmath
    from stabkit.reference._common import agreement_digits

    seen = []
    monkeypatch.setattr(_mpmath, "agreement_digits", lambda hi, lo: seen.append(agreement_digits(hi, lo)) or seen[-1])
    A, G = _TINY_COUPLING[case] if case in _TINY_COUPLING else (build([1.0, 2.0, 3.0], seed=1), None)
    loss = make_loss("projector", 3, seed=2, weight=G)
    hp, _, digits = R._hp_gradient(A, loss, "mpmath")
    assert digits <= seen[-1] <= _true_digits(hp, _weighted_truth(A, loss, 160), 160)
