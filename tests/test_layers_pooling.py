"""CovariancePooling against scipy's sqrtm/logm in float64 (forward) and finite differences (backward);
ZCAWhitening reachable from stabkit.layers; the layers' docstring examples run."""

import doctest
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import stabkit.layers
import stabkit.layers.pooling
from stabkit.layers import CovariancePooling, ZCAWhitening

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feature_map(B=2, C=4, H=3, W=5, seed=0, dtype=torch.float64):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _numpy_covariance(x, eps):
    """Σ + εI per item, written with numpy: mean over pixels, 1/M normalisation."""
    out = []
    for item in x.detach().double().numpy():
        f = item.reshape(item.shape[0], -1)
        fc = f - f.mean(axis=1, keepdims=True)
        out.append(fc @ fc.T / f.shape[1] + eps * np.eye(f.shape[0]))
    return out


@pytest.mark.parametrize("function, reference", [("sqrt", scipy.linalg.sqrtm), ("log", scipy.linalg.logm)])
def test_forward_matches_scipy_in_float64(function, reference):
    x = _feature_map()
    out = CovariancePooling(function, eps=1e-2)(x)
    assert out.shape == (2, 4, 4) and out.dtype == torch.float64
    for got, cov in zip(out.numpy(), _numpy_covariance(x, 1e-2)):
        np.testing.assert_allclose(got, np.real(reference(cov)), rtol=1e-9, atol=1e-11)


def test_sqrt_squares_back_to_the_covariance():
    x = _feature_map(C=6, H=4, W=4, seed=3)
    out = CovariancePooling("sqrt", eps=1e-3)(x)
    for got, cov in zip(out.numpy(), _numpy_covariance(x, 1e-3)):
        np.testing.assert_allclose(got @ got, cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("function", ["sqrt", "log"])
def test_default_backward_passes_gradcheck(function):
    x = _feature_map(B=2, C=3, H=2, W=3, seed=1).requires_grad_(True)
    pool = CovariancePooling(function, eps=0.1)
    assert torch.autograd.gradcheck(lambda t: pool(t), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_method_picks_the_backward():
    """On a well-separated spectrum a long Taylor series reproduces the exact (gradchecked) analytic
    gradient; a 2-term one does not — so ``method`` really reaches the eigendecomposition."""
    x0 = _feature_map(B=1, C=3, H=4, W=4, seed=2)
    weight = torch.arange(9, dtype=torch.float64).reshape(3, 3)

    def grad(method, params=None):
        x = x0.clone().requires_grad_(True)
        (CovariancePooling("sqrt", method=method, params=params, eps=0.5)(x) * weight).sum().backward()
        return x.grad

    lam = np.linalg.eigvalsh(_numpy_covariance(x0, 0.5)[0])
    assert lam.min() / lam.max() > 0.2  # well separated relative to the scale: the series converges
    exact = grad("analytic")
    torch.testing.assert_close(grad("taylor", {"K": 60}), exact, rtol=1e-8, atol=1e-10)
    assert (grad("taylor", {"K": 2}) - exact).abs().max() > 1e-4 * exact.abs().max()


def test_float64_compute_dtype_for_a_float32_map():
    x = _feature_map(dtype=torch.float32, seed=4)
    out = CovariancePooling("log", eps=1e-2, dtype="float64")(x)
    assert out.dtype == torch.float32
    for got, cov in zip(out.numpy(), _numpy_covariance(x, 1e-2)):
        expected = np.real(scipy.linalg.logm(cov))
        # computed in float64 and rounded once: within one float32 ulp of the truth (float32 compute: ~10 ulp off)
        ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
        assert (np.abs(got - expected) <= ulp + 1e-12).all(), np.max(np.abs(got - expected) / ulp)


@pytest.mark.parametrize("kwargs, message", [
    ({"function": "exp"}, "unknown matrix function 'exp'"),
    ({"eps": -1.0}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"eps": True}, "eps must be a finite number"),
    ({"eps": float("inf")}, "eps must be a finite number"),
    ({"dtype": "float16"}, "unknown dtype"),
    ({"method": "no-such-method"}, "no-such-method"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CovariancePooling(**kwargs)


def test_bad_input_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        CovariancePooling()(torch.randn(3, 4, 5))


def test_zca_whitening_is_exported_and_docstring_examples_run():
    from stabkit.train.zca import ZCAWhitening as original

    assert ZCAWhitening is original
    for module in (stabkit.layers, stabkit.layers.pooling):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("function, reference", [("sqrt", scipy.linalg.sqrtm), ("log", scipy.linalg.logm)])
def test_dead_channels_gradient_matches_finite_differences(function, reference):
    """Two constant channels: ε is a double eigenvalue of Σ + εI. g is smooth there, so the default
    (exact) backward must give the derivative: directional derivatives against central differences
    of a numpy/scipy forward."""
    x0 = _feature_map(B=1, C=4, H=3, W=3, seed=0)
    x0[:, 2:] = 0
    G = np.random.default_rng(1).standard_normal((4, 4))
    x = x0.clone().requires_grad_(True)
    (torch.as_tensor(G) * CovariancePooling(function, eps=0.1)(x)).sum().backward()
    loss = lambda t: float((G * np.real(reference(_numpy_covariance(t, 0.1)[0]))).sum())  # noqa: E731
    for seed in range(3):
        v = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        h = 1e-5
        fd = (loss(x0 + h * v) - loss(x0 - h * v)) / (2 * h)
        assert abs(float((x.grad * v).sum()) - fd) <= 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("label, x, match", [
    ("nan", torch.full((1, 2, 2, 2), float("nan"), dtype=torch.float64), "non-finite"),
    ("inf", torch.full((1, 2, 2, 2), float("inf"), dtype=torch.float64), "non-finite"),
    ("3-d", torch.ones(2, 2, 2, dtype=torch.float64), r"\(B, C, H, W\)"),
    ("int", torch.ones(1, 2, 2, 2, dtype=torch.int64), "float"),
], ids=["nan", "inf", "3-d", "int"])
@pytest.mark.parametrize("method", [None, "taylor"], ids=["exact", "taylor"])
def test_bad_input_raises_input_error(label, x, match, method):
    """The message names the layer, whichever backward it uses (with a method it used to name eigh)."""
    from stabkit.errors import InputError

    with pytest.raises(InputError, match=match) as err:
        CovariancePooling(method=method)(x)
    assert str(err.value).startswith("CovariancePooling:")


@pytest.mark.parametrize("x, needle", [
    (torch.randn(2, 3, 4, 4).half(), "cannot compute in torch.float16: pass dtype="),
    (torch.randn(2, 3, 4, 4).bfloat16(), "cannot compute in torch.bfloat16"),
    (torch.randn(2, 0, 4, 4), r"C, H, W ≥ 1, got shape \(2, 0, 4, 4\)"),
    (torch.randn(2, 3, 0, 0), r"got shape \(2, 3, 0, 0\)"),
    ([[1.0]], "got list"),
])
def test_pooling_names_an_input_it_cannot_pool(x, needle):
    """float16 reached eigh ('linalg_eigh_cpu not implemented for Half'), C = 0 a reshape error, H·W = 0
    "non-finite entries" (the mean of no pixels), a list an AttributeError."""
    with pytest.raises(ValueError, match=needle):
        CovariancePooling()(x)
    assert CovariancePooling(dtype="float32")(torch.randn(2, 3, 4, 4).half()).dtype == torch.float16
    assert CovariancePooling()(torch.randn(0, 3, 4, 4, dtype=torch.float64)).shape == (0, 3, 3)  # an empty batch


@pytest.mark.parametrize("method", [None, "analytic"], ids=["dk", "analytic"])
@pytest.mark.parametrize("case", ["fewer pixels than channels", "constant channel", "repeated channel"])
def test_sqrt_of_a_singular_covariance_without_ridge_is_its_square_root(method, case):
    """ε = 0 and a singular Σ: eigh returns eigenvalues of about −1e-17 for its zeros, whose √ made
    every entry of such an item's output NaN. Σ is PSD, so √Σ exists: from the SVD of the centred
    features Xc/√M = P diag(s) Qᵀ, √Σ = P diag(s) Pᵀ (to √(rounding of λ) ≈ 1e-8)."""
    x = _feature_map(B=4, C=8, H=2 if case.startswith("fewer") else 6, W=2 if case.startswith("fewer") else 6)
    if case == "constant channel":
        x[:, 3] = 0.7
    elif case == "repeated channel":
        x[:, 3] = x[:, 2]
    out = CovariancePooling("sqrt", method=method, eps=0.0)(x)
    f = x.flatten(2)
    fc = (f - f.mean(-1, keepdim=True)) / f.shape[-1] ** 0.5
    P, s, _ = torch.linalg.svd(fc, full_matrices=False)
    expected = (P * s[:, None, :]) @ P.transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_an_inf_or_an_overflowing_covariance_is_named_as_such():
    """One Inf in the map was reported as '7 NaN of 32' (the covariance's entries, Inf − Inf in the
    centring), and a finite float32 map of size 1e20, whose covariance overflows, as 'non-finite'."""
    from stabkit.errors import InputError

    x = _feature_map(C=4, H=3, W=3, dtype=torch.float32)
    x[0, 1, 1, 1] = float("inf")
    with pytest.raises(InputError, match=r"input has non-finite entries \(1 Inf of 72\)"):
        CovariancePooling()(x)
    big = _feature_map(C=4, H=3, W=3, dtype=torch.float32) * 1e20
    with pytest.raises(InputError, match="channel covariance overflows torch.float32 .*pass dtype='float64'"):
        CovariancePooling()(big)
    expected = CovariancePooling(eps=0.0)(big.double() / 1e20) * 1e20   # √ is homogeneous: √(c²Σ) = c√Σ
    got = CovariancePooling(dtype="float64", eps=0.0)(big)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("make", [
    lambda: CovariancePooling(function="exp"),
    lambda: CovariancePooling(dtype="float16"),
    lambda: CovariancePooling(function=["sqrt"]),
    lambda: CovariancePooling(dtype=["float64"]),
    lambda: CovariancePooling(params={"K": 3}),
    lambda: ZCAWhitening(12, d=5),
    lambda: ZCAWhitening(8, d=4)(torch.randn(2, 6, 3, 3)),
], ids=["pooling-function", "pooling-dtype", "pooling-function-list", "pooling-dtype-list", "pooling-params-without-method", "zca-d-not-dividing", "zca-channels"])
def test_a_bad_argument_is_an_input_error(make):
    """The project's InputError (a ValueError), like the layers' other checks; these were plain ValueErrors
    (and a list for function or dtype a TypeError, unhashable in the dict lookup)."""
    from stabkit.errors import InputError

    with pytest.raises(InputError):
        make()


@pytest.mark.parametrize("method", [None, "analytic"], ids=["dk", "analytic"])
def test_log_of_a_singular_covariance_is_an_input_error(method):
    """log Σ has no value when Σ + εI has a zero eigenvalue (module docstring): constant channels with
    ε = 0 (Σ = 0 exactly) gave −inf on the diagonal and NaN (0·∞) off it, silently. With a ridge the
    same map is log(ε)·I exactly."""
    from stabkit.errors import InputError

    x = torch.full((2, 3, 2, 2), 0.7, dtype=torch.float64)
    x[1, 2] = -1.5
    with pytest.raises(InputError, match="CovariancePooling: log of a singular channel covariance"):
        CovariancePooling("log", method=method, eps=0.0)(x)
    out = CovariancePooling("log", method=method, eps=1e-3)(x)
    torch.testing.assert_close(out, math.log(1e-3) * torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


@pytest.mark.parametrize("function, reference", [("sqrt", scipy.linalg.sqrtm), ("log", scipy.linalg.logm)])
@pytest.mark.parametrize("method", [None, "taylor"], ids=["dk", "taylor"])
def test_autocast_leaves_the_computation_in_its_dtype(function, reference, method):
    """Under CPU bf16 autocast a float32 map's Σ was a bf16 product: √Σ off by 5e-3 (float32: 5e-7),
    though ``dtype`` is the computation dtype. Against scipy on Σ of the same map in float64."""
    x = _feature_map(B=2, C=6, H=5, W=5, seed=8, dtype=torch.float32)
    pool = CovariancePooling(function, method=method, eps=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool(x)
        out_bf16 = CovariancePooling(function, method=method, eps=1e-2, dtype="float32")(x.bfloat16())
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    for got, cov in zip(out.numpy(), _numpy_covariance(x, 1e-2)):
        np.testing.assert_allclose(got, np.real(reference(cov)), rtol=0, atol=1e-5)
    for got, cov in zip(out_bf16.double().numpy(), _numpy_covariance(x.bfloat16(), 1e-2)):
        expected = np.real(reference(cov))   # of the rounded map: one bf16 rounding of the result
        assert (np.abs(got - expected) <= 2 ** -8 * np.abs(expected) + 1e-5).all()
