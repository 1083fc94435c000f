"""ZCA whitening layer: whitens, uses running statistics in eval, and every method's gradient is right."""

import numpy as np
import pytest
import scipy.linalg
import torch

from stabkit import methods
from stabkit.errors import InputError
from stabkit.train.resnet import ResNet18
from stabkit.train.zca import ZCAWhitening

pytestmark = pytest.mark.usefixtures("one_torch_thread")


METHODS = ["analytic", "pi-forward", "pi", "taylor", "clip"]


def _input(lams, groups=1, B=8, H=8, W=8, seed=0, dtype=torch.float64):
    """X (B, d·groups, H, W) whose per-group sample covariance (1/m) is exactly Q diag(lams) Qᵀ."""
    g = torch.Generator().manual_seed(seed)
    d = len(lams)
    blocks = []
    for _ in range(groups):
        z = torch.randn(d, B * H * W, generator=g, dtype=torch.float64)
        z = z - z.mean(1, keepdim=True)
        c = z @ z.T / z.shape[1]
        lam_c, V = torch.linalg.eigh(c)
        z = (V * lam_c.rsqrt()) @ V.T @ z  # sample covariance exactly I
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        blocks.append(Q @ torch.diag(torch.tensor(lams, dtype=torch.float64).sqrt()) @ z + 3.0)
    x = torch.cat(blocks).reshape(d * groups, B, H, W).transpose(0, 1)
    return x.contiguous().to(dtype)


def _group_cov(y, d):
    C = y.shape[1]
    yg = y.transpose(0, 1).reshape(C // d, d, -1)
    yc = yg - yg.mean(-1, keepdim=True)
    return yc @ yc.transpose(1, 2) / yc.shape[-1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_is_white_per_group(method, dtype):
    x = _input([0.5, 1.0, 2.0, 4.0], groups=2).float()
    layer = ZCAWhitening(8, d=4, method=method, dtype=dtype)
    y = layer(x)
    assert y.dtype == torch.float32
    cov = _group_cov(y.double(), 4)
    # (Σ + εI)^{-1/2} Σ (Σ + εI)^{-1/2} has eigenvalues λ/(λ + ε): within ε/λ_min = 2e-4 of I.
    # SVD-PI whitens with its kept pairs only (NeurIPS 2019 Alg. 1); its energy ratio γ_k includes
    # λ_k, so the smallest pair is dropped and the output covariance is the projector on the other 3.
    kept = torch.tensor([0.0, 1.0, 1.0, 1.0] if method == "pi" else [1.0] * 4, dtype=torch.float64)
    x_cov = _group_cov(x.double(), 4)
    _, V = torch.linalg.eigh(x_cov)
    target = (V * kept) @ V.transpose(1, 2)
    err = (cov - target).abs().max().item()
    assert err < (2e-3 if method == "pi-forward" else 3e-4)  # pi-forward: 19 power iterations, approximate
    if dtype == "float64" and method != "pi-forward":
        lam = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
        got = torch.linalg.eigvalsh(cov)
        torch.testing.assert_close(got, (kept * lam / (lam + 1e-4)).expand(2, 4), rtol=0, atol=2e-6)


def test_eval_uses_running_statistics():
    # one training batch at momentum 0.1 moves the running statistics a tenth of the way from (0, I)
    # to the batch's (mean 3, (Σ + εI)^{-1/2}); eval applies that affine map to another batch z, whose
    # own statistics would whiten it differently
    x = _input([1.0, 2.0, 3.0, 5.0], groups=2)
    layer = ZCAWhitening(8, d=4, dtype="float64").double()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, 8))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, 8))
    layer(x)
    torch.testing.assert_close(layer.running_mean, torch.full((2, 4, 1), 0.3, dtype=torch.float64))
    cov = (_group_cov(x, 4) + 1e-4 * torch.eye(4, dtype=torch.float64)).numpy()
    batch_whitening = np.stack([np.linalg.inv(scipy.linalg.sqrtm(c).real) for c in cov])  # Schur, not eigh
    running_whitening = 0.9 * np.eye(4) + 0.1 * batch_whitening
    z = _input([0.3, 1.0, 4.0, 9.0], groups=2, seed=5) * 2 - 1
    zg = z.transpose(0, 1).reshape(2, 4, -1).numpy()
    expected = torch.from_numpy(running_whitening @ (zg - 0.3)).reshape(8, *z.shape[:1], *z.shape[2:]).transpose(0, 1)
    expected = expected * layer.weight.detach()[None, :, None, None] + layer.bias.detach()[None, :, None, None]
    layer.eval()
    torch.testing.assert_close(layer(z), expected, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        assert (layer.train()(z) - expected).abs().max() > 0.5  # the batch's own statistics: another map


@pytest.mark.parametrize("method", METHODS)
def test_gradient_matches_autograd_reference(method):
    # eigenvalue ratios 0.1: Taylor (K=9) truncation ~1e-10, power iteration converged, gaps ≥ 0.9 < clip's τ
    x = _input([1.0, 10.0, 100.0, 1000.0], groups=2, B=4, H=4, W=4, seed=3).requires_grad_(True)
    R = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(m):
        layer = ZCAWhitening(8, d=4, method=m, dtype="float64", eps=1e-4).double()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        (layer(x) * R).sum().backward()
        out = x.grad.clone(), layer.weight.grad.clone()
        x.grad = None
        return out

    gx, gw = grads(method)
    if method == "pi":  # SVD-PI's function: whitening with its kept pairs (here all but the smallest)
        rx, rw = _truncated_reference_grads(x, R, layer_weight_seed=2, drop=1)
    else:
        rx, rw = grads("torch")  # torch autograd through torch.linalg.eigh, float64
    assert rx.abs().max() > 1e-3
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-7 * rx.abs().max().item())
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-8)


def _truncated_reference_grads(x, R, layer_weight_seed, drop):
    """Autograd through torch.linalg.eigh of a hand-written ZCA whitening that drops the ``drop``
    smallest eigenpairs of each group (the function SVD-PI computes), float64, ε = 1e-4."""
    x = x.detach().clone().requires_grad_(True)
    weight = torch.ones(x.shape[1], dtype=torch.float64).uniform_(
        0.5, 1.5, generator=torch.Generator().manual_seed(layer_weight_seed)).requires_grad_(True)
    C = x.shape[1]
    xg = x.transpose(0, 1).reshape(C // 4, 4, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    cov = xc @ xc.transpose(1, 2) / xc.shape[-1] + 1e-4 * torch.eye(4, dtype=torch.float64)
    lam, U = torch.linalg.eigh((cov + cov.transpose(1, 2)) / 2)
    U, lam = U[..., drop:], lam[..., drop:]
    y = ((U * lam.rsqrt()[:, None, :]) @ U.transpose(1, 2) @ xc).reshape(C, *x.shape[:1], *x.shape[2:]).transpose(0, 1)
    ((y * weight[None, :, None, None]) * R).sum().backward()
    return x.grad, weight.grad


def test_reference_gradient_against_finite_differences():
    x = _input([1.0, 2.0, 4.0, 8.0], B=2, H=3, W=3, seed=5).requires_grad_(True)
    layer = ZCAWhitening(4, d=4, method="analytic", dtype="float64").double()
    R = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: (layer(t) * R).sum(), (x,), eps=1e-6, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must divide"):
        ZCAWhitening(64, d=48)
    with pytest.raises(ValueError, match="dtype"):
        ZCAWhitening(64, d=16, dtype="float16")
    with pytest.raises(ValueError, match="no parameter"):
        ZCAWhitening(64, d=16, method="taylor", params={"tau": 1})
    with pytest.raises(ValueError, match="norm"):
        ResNet18(norm="gn")


@pytest.mark.parametrize("kwargs, match", [
    ({"d": "4"}, "d must be a positive integer"), ({"d": True}, "d must be"), ({"d": 0}, "d must be"),
    ({"num_features": 64.0}, "num_features must be"), ({"eps": float("inf")}, "eps must be a finite number"),
    ({"eps": float("nan")}, "eps"), ({"eps": "1e-4"}, "eps"), ({"momentum": float("nan")}, "momentum must be"),
    ({"momentum": 1.5}, "momentum"), ({"momentum": -0.1}, "momentum")])
def test_a_layer_argument_outside_its_domain_is_named(kwargs, match):
    """d = '4' and eps = 'x' raised a bare TypeError; eps = inf and momentum = NaN were accepted (a zero or NaN
    whitening, found only in training)."""
    with pytest.raises(InputError, match=match):
        ZCAWhitening(**{"num_features": 64, "d": 16, **kwargs})


def test_resnet_shapes_and_layout():
    net = ResNet18(norm="zca", d=16, method="taylor")
    assert isinstance(net.norm1, ZCAWhitening) and net.norm1.groups == 4
    assert net.conv1.stride == (1, 1) and net.conv1.out_channels == 64
    assert [b.conv1.stride[0] for b in net.layers] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert sum(isinstance(m, ZCAWhitening) for m in net.modules()) == 1
    n_params = sum(p.numel() for p in ResNet18(norm="bn").parameters())
    assert n_params == 11_173_962  # the standard CIFAR ResNet-18
    small = ResNet18(norm="zca", d=4, width=0.125)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------ the paper preset's building blocks
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stabkit.train.zca import block_covariance, group_covariance, kept_mask  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(G=st.integers(1, 4), d=st.integers(1, 5), m=st.integers(2, 40), seed=st.integers(0, 2**31 - 1))
def test_block_covariance_equals_grouped_covariance(G, d, m, seed):
    # one C×C product and its diagonal blocks = one product per group, up to float64 rounding
    xg = torch.randn(G, d, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 1
    mean_a, xc_a, cov_a = block_covariance(xg, 1e-4)
    mean_b, xc_b, cov_b = group_covariance(xg, 1e-4)
    torch.testing.assert_close(mean_a, mean_b, rtol=0, atol=1e-12)
    torch.testing.assert_close(xc_a, xc_b, rtol=0, atol=1e-12)
    torch.testing.assert_close(cov_a, cov_b, rtol=1e-12, atol=1e-12)
    # and the blocks are the covariance computed by hand for each group
    for g in range(G):
        xcg = xg[g] - xg[g].mean(1, keepdim=True)
        torch.testing.assert_close(cov_a[g], xcg @ xcg.T / m + 1e-4 * torch.eye(d, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(lam=st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=8), eps=st.sampled_from([1e-4, 1e-2, 0.5]),
       rule=st.sampled_from(["svd-pi", "svd-head"]))
def test_truncation_keeps_the_largest_pairs(lam, eps, rule):
    """The layer's svd-head rule, and SVD-PI's (the method's own, read by the layer) on ascending λ."""
    t = torch.tensor(lam, dtype=torch.float64)
    if rule == "svd-pi":
        t = torch.sort(t).values
        kept = methods.spec(("pi", {"eps": eps})).kept_of(t[None])[0]
    else:
        kept = kept_mask(t[None], rule, eps)[0]
    n = int(kept.sum())
    if 0 < n < len(lam):
        assert t[kept].min() >= t[~kept].max()  # the kept pairs are the largest ones
    if rule == "svd-pi":
        assert n < len(lam)  # γ of the last pair is 1 ≥ 1 − ε: the smallest pair always goes
        assert bool((t[kept] > eps).all())
    else:
        assert n >= 1 and (n == 1 or t[kept].min() <= eps)  # down to the first σ ≤ ε, or just the largest


# ------------------------------------------------------------------ a solver failure is typed
def test_a_solver_failure_is_an_eigensolver_error(monkeypatch):
    from stabkit.errors import EigensolverError

    from stabkit import _xp

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")

    monkeypatch.setattr(_xp, "eigh", broken)  # the solver itself fails, under stabkit.torch
    layer = ZCAWhitening(8, d=4)
    with pytest.raises(EigensolverError, match="ZCA whitening: the eigensolver failed") as info:
        layer(torch.randn(4, 8, 2, 2))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, torch.linalg.LinAlgError)
    assert "non-finite" not in str(info.value)   # a finite Σ: the solver's own reason only


@pytest.mark.parametrize("label", ["nan", "inf", "overflow"])
def test_a_solver_failure_on_a_non_finite_covariance_says_so(label):
    """NaN/Inf in the map (or a float32 covariance overflowing) reached eigh, whose message blamed an
    'ill-conditioned' matrix 'with too many repeated eigenvalues'. Still an EigensolverError (the training
    loop's eigh-failed outcome, by type), now counting Σ's non-finite entries."""
    from stabkit.errors import EigensolverError

    x = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    if label == "overflow":
        x = x * 1e20   # finite, but (1e20)² overflows float32
    else:
        x[0, 5, 1, 1] = float(label)   # one entry: channel 5's row and column of its group's Σ, 4 + 4 − 1
    expected = "32 non-finite entries of 32" if label == "overflow" else "7 non-finite entries of 32"
    with pytest.raises(EigensolverError, match=f"ZCA whitening: the eigensolver failed on Σ .*: Σ has {expected} "
                                               r"\(NaN/Inf in the input map, or its covariance overflows torch.float32\)"):
        ZCAWhitening(8, d=4)(x)


@pytest.mark.parametrize("x, needle", [
    (torch.ones(4, 16, 3, 3, dtype=torch.complex64), "got a torch.complex64 tensor"),
    (torch.ones(4, 16, 3, 3, dtype=torch.int64), "got a torch.int64 tensor"),
    (torch.ones(4, 16), r"of shape \(4, 16\)"),
    ([[1.0]], "got list"),
])
def test_zca_whitening_names_an_input_that_is_no_float_feature_map(x, needle):
    """A complex map was whitened as its real part (torch's cast warning only) and returned complex, an
    integer map returned float32, a 2-D input gave 'not enough values to unpack'."""
    from stabkit.layers import ZCAWhitening

    with pytest.raises(ValueError, match="ZCAWhitening: expected a float feature map .*" + needle):
        ZCAWhitening(16, d=4)(x)


# ------------------------------------------------------------------ whitening as a property (float64)
def _grouped_numpy(x, d):
    """(G, d, m) samples of x (B, C, H, W) per group of d channels, written with numpy."""
    return x.detach().numpy().transpose(1, 0, 2, 3).reshape(x.shape[1] // d, d, -1)


@st.composite
def _feature_maps(draw):
    """(x, d): G ∈ 1..3 groups of d ∈ 1..4 channels, m = B·H·W ∈ 2..36 samples, channel scales in
    [0.3, 3] and offsets in [−5, 5] (Σ ⪰ 0, possibly singular when m ≤ d)."""
    G, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    B, H, W = draw(st.integers(2, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = rng.uniform(0.3, 3.0, (1, G * d, 1, 1))
    offset = rng.uniform(-5.0, 5.0, (1, G * d, 1, 1))
    return torch.from_numpy(rng.standard_normal((B, G * d, H, W)) * scale + offset), d


@settings(max_examples=30, deadline=None)
@given(xd=_feature_maps(), eps=st.floats(1e-3, 1.0), method=st.sampled_from(["analytic", "taylor", "clip", "degenerate"]))
def test_training_output_covariance_is_sigma_over_sigma_plus_eps(xd, eps, method):
    """Y_g = (Σ + εI)^{-1/2}(X_g − μ): per group, zero mean and covariance Σ(Σ + εI)^{-1} — the identity
    within ε/(λ + ε) per eigenpair (exactly I only for ε = 0) — computed here with numpy."""
    x, d = xd
    layer = ZCAWhitening(x.shape[1], d=d, method=method, eps=eps, dtype="float64", affine=False)
    y = layer(x)
    yg = _grouped_numpy(y, d)
    assert np.abs(yg.mean(-1)).max() <= 1e-10
    for xg, got in zip(_grouped_numpy(x, d), yg):
        m = xg.shape[-1]
        xc = xg - xg.mean(-1, keepdims=True)
        sigma = xc @ xc.T / m
        expected = sigma @ np.linalg.inv(sigma + eps * np.eye(d))
        cov = got @ got.T / m
        np.testing.assert_allclose(cov, expected, rtol=0, atol=1e-9)
        assert np.linalg.eigvalsh((cov + cov.T) / 2).max() < 1  # the layer's own output, not numpy's expectation


@settings(max_examples=30, deadline=None)
@given(xd=_feature_maps(), eps=st.floats(1e-3, 1.0), seed=st.integers(0, 2**31 - 1))
def test_training_output_ignores_channel_offsets_and_rotates_with_the_group(xd, eps, seed):
    """ZCA (unlike PCA) whitening commutes with rotations: Q_g applied to each group's channels gives
    Q_g Y_g; a constant added to a channel changes nothing (it is centred away)."""
    x, d = xd
    G = x.shape[1] // d
    layer = ZCAWhitening(x.shape[1], d=d, eps=eps, dtype="float64", affine=False)
    y = layer(x).detach()
    rng = np.random.default_rng(seed)
    shift = torch.from_numpy(rng.uniform(-10.0, 10.0, (1, x.shape[1], 1, 1)))
    torch.testing.assert_close(layer(x + shift), y, rtol=0, atol=1e-9)
    Q = torch.block_diag(*[torch.from_numpy(np.linalg.qr(rng.standard_normal((d, d)))[0]) for _ in range(G)])
    rotated = torch.einsum("ij,bjhw->bihw", Q, x)
    torch.testing.assert_close(layer(rotated), torch.einsum("ij,bjhw->bihw", Q, y), rtol=0, atol=1e-9)


# ------------------------------------------------------------------ half-precision maps, as BatchNorm takes them
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_map_comes_back_in_its_dtype(dtype):
    """A float16/bfloat16 map into a float32 layer came back float32 (γ, β promoted it), unlike
    BatchNorm2d's; in a half-precision net with the norm kept in float32 the next conv then raised
    'Input type (float) and bias type should be the same'. Values: numpy's float64 ZCA of the rounded map."""
    x = _input([0.5, 1.0, 2.0, 4.0], groups=2, B=4, H=3, W=3, seed=7).to(dtype)
    layer = ZCAWhitening(8, d=4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
        layer.bias.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(4))
    y = layer(x)
    assert y.dtype == dtype == torch.nn.BatchNorm2d(8)(x).dtype
    xg = _grouped_numpy(x.double(), 4)
    xc = xg - xg.mean(-1, keepdims=True)
    lam, U = np.linalg.eigh(xc @ xc.transpose(0, 2, 1) / xc.shape[-1] + 1e-4 * np.eye(4))
    yg = (U / np.sqrt(lam)[:, None, :]) @ U.transpose(0, 2, 1) @ xc
    scaled = torch.from_numpy(yg.reshape(8, 4, 3, 3)).transpose(0, 1) * layer.weight.detach().double()[:, None, None]
    expected = scaled + layer.bias.detach().double()[:, None, None]
    # rounded twice to the map's dtype (unit roundoff eps/2): the whitened map, then γ·y + β; float32 work ≪ that
    assert ((y.double() - expected).abs() <= torch.finfo(dtype).eps * (scaled.abs() + expected.abs()) + 1e-5).all()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), ZCAWhitening(8, d=4), torch.nn.Conv2d(8, 2, 3)).to(dtype)
    net[1].float()   # the mixed-precision habit: normalisation layers kept in float32
    assert net(torch.randn(2, 3, 7, 7).to(dtype)).dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 8, 3, 3).bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (0, 8, 3, 3)])
def test_training_on_fewer_than_two_samples_is_an_input_error(shape):
    """One sample per channel (B·H·W = 1): Σ = εI, the output was β alone and the running whitening moved
    to 0.9·I + 0.1·ε^{-1/2}·I = 10.9·I without a word (BatchNorm2d raises); an empty batch reached the
    eigensolver as a NaN Σ ('eigensolver failed'). Eval mode, which uses the running statistics, takes both."""
    layer = ZCAWhitening(8, d=4)
    with pytest.raises(InputError, match=r"ZCAWhitening: training needs more than one sample per channel .*B·H·W = "):
        layer(torch.randn(shape))
    torch.testing.assert_close(layer.running_whitening, torch.eye(4).expand(2, 4, 4), rtol=0, atol=0)
    assert layer.eval()(torch.randn(shape)).shape == shape


def test_eval_mode_works_under_vmap_and_per_sample_gradients():
    """vmap over an eval-mode model (the torch.func per-sample-gradient recipe, which BatchNorm2d's eval mode
    takes) raised 'NYI: querying is_contiguous inside of vmap for memory_format other than
    torch.contiguous_format'. Outputs and per-sample gradients against a plain loop."""
    from torch.func import functional_call, grad, vmap

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ZCAWhitening(8, d=4, dtype="float64")).double()
    net(torch.randn(6, 3, 5, 5, dtype=torch.float64))   # one training step: running statistics other than (0, I)
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    xs = torch.randn(4, 1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(p, x):
        return functional_call(net, (p, buffers), (x,)).square().sum()

    out = vmap(lambda x: functional_call(net, (params, buffers), (x,)))(xs)
    torch.testing.assert_close(out, torch.stack([net(x) for x in xs]), rtol=1e-12, atol=1e-12)
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i, x in enumerate(xs):
        net.zero_grad()
        net(x).square().sum().backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_torch_compile_takes_the_layer_in_one_graph(train):
    """fullgraph=True: the channels_last hand-off's torch.func question must not break the graph.
    Compiled against eager on the same channels_last map: output, layout and running statistics."""
    eager, layer = ZCAWhitening(8, d=4, dtype="float64"), ZCAWhitening(8, d=4, dtype="float64")
    eager.train(train), layer.train(train)
    x = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, eager(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.running_whitening, eager.running_whitening, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make, needle", [
    (lambda: ZCAWhitening(12, d=5), "group size d=5 must divide the number of channels 12"),
    (lambda: ZCAWhitening(8, d=4)(torch.randn(2, 6, 3, 3)), r"expected a map with 8 channels, got 6 \(shape \(2, 6, 3, 3\)\)"),
])
def test_a_channel_count_error_names_the_layer(make, needle):
    """'expected 8 channels, got 6' and the group-size message were the layer's only ones without its name:
    in a net of several layers the user could not tell which one refused."""
    with pytest.raises(InputError, match="^ZCAWhitening: " + needle):
        make()


def test_training_mode_under_vmap_is_refused_by_name():
    """vmap over a training-mode layer failed inside the running-statistics update with 'output with shape
    [2, 4, 1] doesn't match the broadcast shape [3, 2, 4, 1]'; under vmap of grad too."""
    from torch.func import grad, vmap

    layer = ZCAWhitening(8, d=4)
    xs = torch.randn(3, 2, 8, 3, 3)
    for transform in (vmap(layer), vmap(grad(lambda x: layer(x).square().sum()))):
        with pytest.raises(InputError, match="ZCAWhitening: training mode under torch.func.vmap is not supported"):
            transform(xs)
    torch.testing.assert_close(layer.running_whitening, torch.eye(4).expand(2, 4, 4), rtol=0, atol=0)
