"""Probe losses: their (∂L/∂U, ∂L/∂λ) against finite differences, and their domains."""

import dataclasses

import mpmath
import numpy as np
import pytest
import torch

from stabkit.errors import InputError
from stabkit.losses import LOSSES, make_loss, truncate

from .conftest import build


@pytest.mark.parametrize("name", LOSSES)
def test_grads_match_central_differences(name):
    d = 5
    loss = make_loss(name, d, seed=4, k=2)
    lam, U = np.linalg.eigh(build([0.5, 1.0, 1.7, 2.5, 4.0]))
    rng = np.random.default_rng(0)
    dU, dlam = rng.standard_normal(U.shape), rng.standard_normal(d)
    gU, glam = loss.grads(U, lam)
    h = 1e-6
    fd = (loss.value(U + h * dU, lam + h * dlam) - loss.value(U - h * dU, lam - h * dlam)) / (2 * h)
    assert (gU * dU).sum() + (glam * dlam).sum() == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize("name", ["zca", "sqrt", "log"])
def test_spectral_value_is_trace_of_matrix_function(name):
    lam = np.array([0.5, 1.0, 2.0])
    A = build(lam)
    loss = make_loss(name, 3, seed=1)
    f = {"zca": lambda x: x**-0.5, "sqrt": np.sqrt, "log": np.log}[name]
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))  # the basis build() used
    fA = (Q * f(lam)) @ Q.T
    w, U = np.linalg.eigh(A)
    assert loss.value(U, w) == pytest.approx((loss.weight * fA).sum(), rel=1e-12)


def test_losses_run_on_torch_tensors():
    loss = make_loss("zca", 4, seed=0)
    A = torch.as_tensor(build([1.0, 2.0, 3.0, 4.0]))
    lam, U = torch.linalg.eigh(A)
    assert float(loss.value(U, lam)) == pytest.approx(loss.value(U.numpy(), lam.numpy()), rel=1e-14)


def test_domains_and_bad_parameters():
    with pytest.raises(ValueError, match="positive definite"):
        make_loss("zca", 3).check(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="degenerate spectrum"):
        make_loss("eigvec", 3).check(np.array([1.0, 1.0, 2.0]))
    make_loss("projector", 3, k=1).check(np.array([1.0, 1.0, 2.0]))  # equal weights inside the tie: defined
    with pytest.raises(InputError, match="unknown loss 'nuclear'"):  # typed, as an unknown spectrum family
        make_loss("nuclear", 3)
    with pytest.raises(InputError, match="shape"):  # a ValueError, typed: a bad input matrix
        make_loss("zca", 3, weight=np.ones((2, 2)))
    with pytest.raises(InputError, match="non-finite"):
        make_loss("zca", 2, weight=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(InputError, match="rank k"):
        make_loss("projector", 3, k=3)


@pytest.mark.parametrize("name", LOSSES)
def test_check_refuses_non_finite_eigenvalues(name):
    """check passed λ = (0.5, NaN, 2) for every loss (NaN ≤ 0 and NaN ≤ tol are both False), though
    none is defined there; an infinite λ likewise. Finite λ keep their verdicts: (0.5, 1, 2) passes
    for every loss, (0, 1, 2) fails the spectral ones only (f(0) or f'(0) is not finite)."""
    loss = make_loss(name, 3, k=1)
    for bad in ([0.5, np.nan, 2.0], [0.5, 1.0, np.inf]):
        with pytest.raises(ValueError, match=rf"{name} loss: the eigenvalues have non-finite entries \(1 of 3\)"):
            loss.check(np.array(bad))
    loss.check(np.array([0.5, 1.0, 2.0]))
    if loss.kind == "spectral":
        with pytest.raises(ValueError, match="positive definite"):
            loss.check(np.array([0.0, 1.0, 2.0]))
    else:
        loss.check(np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("name", ["zca", "sqrt", "log"])
def test_spectral_losses_carry_bounds_on_their_higher_derivatives(name):
    """d2_bound(x), d3_bound(x) are |f''|, |f'''| at x (tight) and bound them on [x, ∞) — what the
    flint reference engine needs to certify divided differences; checked against mpmath's own
    numerical derivatives of f_mp."""
    loss = make_loss(name, 3)
    with mpmath.workdps(40):
        for x in (1e-3, 0.37, 1.0, 2.5, 1e4):
            for bound, order in ((loss.d2_bound, 2), (loss.d3_bound, 3)):
                at = [abs(float(mpmath.diff(loss.f_mp, mpmath.mpf(y), order))) for y in (x, 1.5 * x, 10 * x)]
                assert bound(x) == pytest.approx(at[0], rel=1e-12)
                assert all(v <= bound(x) * (1 + 1e-12) for v in at)


def test_losses_without_higher_derivative_bounds():
    """The truncated spectral function f·1[kept] has no such bounds (not one smooth f): None."""
    loss = make_loss("zca", 3)
    cut = truncate(loss, np.array([0.5, 1.0, 2.0]), [False, True, True])
    assert cut.d2_bound is None and cut.d3_bound is None
    assert dataclasses.replace(loss, d2_bound=None).d2_bound is None


def test_truncate_rejects_a_mask_of_the_wrong_size():
    with pytest.raises(InputError, match="kept mask has 2 entries for 3 eigenvalues"):
        truncate(make_loss("zca", 3), np.array([0.5, 1.0, 2.0]), [True, False])


@pytest.mark.parametrize("args, kwargs, needle", [
    (("zca", -1), {}, r"d must be an integer in \[1, 2\^63 − 1\], got -1"), (("zca", 0), {}, "got 0"), (("zca", 2.5), {}, "got 2.5"),
    (("zca", "3"), {}, "got '3'"), (("eigvec", 3, -1), {}, r"seed must be an integer in \[0, 2\^63 − 1\], got -1"),
    (("zca", 3, 1.5), {}, "got 1.5"), (("zca", 3, None), {}, "got None"),
    (("projector", 3), {"k": 1.5}, "got 1.5"), (("projector", 3), {"k": "1"}, "got '1'"),
    (("zca", 3, 2**70), {}, r"seed must be an integer in \[0, 2\^63 − 1\], got 1180591620717411303424"),
])
def test_bad_size_seed_or_rank_is_named(args, kwargs, needle):
    """numpy's "expected non-negative integer", "seed must be integer" or a slice TypeError before;
    d = 0 gave a loss of an empty matrix."""
    with pytest.raises(ValueError, match=needle):
        make_loss(*args, **kwargs)
    assert make_loss("projector", 4, seed=2.0, k=2.0).w.tolist() == [0, 0, 1, 1]
