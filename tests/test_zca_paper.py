"""The ``paper`` preset's ZCA layer against a hand-written reference of the authors' public layers.

The reference below is written from the formulas of the authors' code (Power-Iteration-SVD:
ZCANormOrg / ZCANormSVDunstable / ZCANormSVDPI / ZCANormPIunstable; Robust-Differentiable-SVD:
ZCANormPIv2 / ZCANormPIv2Clip), independently of stabkit's layer and method registry: one C×C
covariance and its diagonal blocks, torch.linalg.svd, per-vector loops, the authors' custom
backward rules as autograd Functions. Forward output and input gradient are compared in float64
on tiny shapes.
"""

import math

import pytest
import torch

from stabkit import methods

from stabkit.train.preset import PAPER_STD, PRESETS, ZCAConfig, get_preset
from stabkit.train.resnet import ResNet18
from stabkit.train.zca import ZCAWhitening, kept_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D64 = torch.float64


# ----------------------------------------------------------------------------- the reference
def ref_blocks(x, G, eps):
    """Centred X (C, m) split into G groups, and the diagonal blocks of X Xᵀ/m + εI."""
    N, C, H, W = x.shape
    X = x.transpose(0, 1).reshape(C, -1)
    X = X - X.mean(1, keepdim=True)
    full = X @ X.T / (N * H * W) + eps * torch.eye(C, dtype=x.dtype)
    d = C // G
    return [full[i * d:(i + 1) * d, i * d:(i + 1) * d] for i in range(G)], [X[i * d:(i + 1) * d] for i in range(G)]


def ref_output(x, W_list, X_list, weight, bias):
    N, C, H, W = x.shape
    y = torch.cat([Wi @ Xi for Wi, Xi in zip(W_list, X_list)])
    y = y * weight[:, None] + bias[:, None]
    return y.reshape(C, N, H, W).transpose(0, 1)


def svd_vecs(M):
    """(V, σ) of M = U diag(σ) Vᵀ, σ descending (the authors' ``ut, s, u = th.svd(M)``: right vectors)."""
    _, s, Vh = torch.linalg.svd(M)
    return Vh.T, s


def geometric(s, K=9):
    """Authors' geometric_approximation: entry (i, j) ≈ 1/(σ_i − σ_j), same sign at ties."""
    n = len(s)
    out = torch.zeros(n, n, dtype=s.dtype)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            hi, lo, sign = (s[i], s[j], 1.0) if s[i] >= s[j] else (s[j], s[i], -1.0)
            out[i, j] = sign / hi * sum((lo / hi) ** k for k in range(K + 1))
    return out


def clipped(s, floor=0.01):
    """Authors' clip: 1/max(σ_i − σ_j, 0.01) for σ_i > σ_j, antisymmetric, 0 at ties."""
    n = len(s)
    out = torch.zeros(n, n, dtype=s.dtype)
    for i in range(n):
        for j in range(n):
            if s[i] > s[j]:
                out[i, j] = 1 / max(float(s[i] - s[j]), floor)
                out[j, i] = -out[i, j]
    return out


def kernel_svd(kernel, clamp):
    class KernelSVD(torch.autograd.Function):
        @staticmethod
        def forward(ctx, M):
            V, s = svd_vecs(M)
            s = s.clamp(min=clamp)
            ctx.save_for_backward(V, s)
            return V, s

        @staticmethod
        def backward(ctx, gV, gs):
            V, s = ctx.saved_tensors
            Kt = kernel(s).T
            return V @ (Kt * (V.T @ gV) + torch.diag(gs)) @ V.T

    return KernelSVD.apply


class PowerOnce(torch.autograd.Function):
    """Authors' power_iteration_once: returns v; backward Σ_{i=0..K} (M/‖Mv‖)^i (I − vvᵀ)/‖Mv‖ g vᵀ."""

    @staticmethod
    def forward(ctx, M, v):
        ctx.save_for_backward(M, v)
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        M, v = ctx.saved_tensors
        norm = torch.linalg.norm(M @ v)
        term = (torch.eye(len(v), dtype=M.dtype) - v @ v.T) / norm
        total = term.clone()
        for _ in range(19):
            term = (M / norm) @ term
            total = total + term
        return total @ g @ v.T, None


def ref_whitening(method, M, eps, truncation="none"):
    d = M.shape[0]
    if method == "analytic":  # ZCANormOrg: autograd through the SVD
        V, s = svd_vecs(M)
        if truncation == "svd-head":  # ZCANormSVDunstable's loop
            count = 1
            for j in range(d):
                if s[j] <= eps:
                    count = j + 1
                    break
            V, s = V[:, :count], s[:count]
        return V @ torch.diag(s.rsqrt()) @ V.T
    if method in ("taylor", "clip"):
        fn = kernel_svd(geometric, 1e-10) if method == "taylor" else kernel_svd(clipped, 1e-5)
        V, s = fn(M)
        return V @ torch.diag(s.rsqrt()) @ V.T
    if method == "pi":  # ZCANormSVDPI
        with torch.no_grad():
            V, s = svd_vecs(M)
            ratio = torch.cumsum(s, 0) / s.sum()
            count = 0
            for j in range(d):
                if ratio[j] >= 1 - eps or s[j] <= eps:
                    break
                count = j + 1
        out = torch.zeros_like(M)
        for j in range(count):
            v = PowerOnce.apply(M, V[:, j:j + 1])
            lam = (M @ v).T @ v / (v.T @ v)
            if lam < 0 or (lam - s[j]).abs() / s[j] > 0.1:
                break
            out = out + v @ lam.rsqrt() @ v.T
            M = M - M @ v @ v.T
        return out
    if method == "pi-forward":  # ZCANormPIunstable, converged: its stopping rule on exact pairs
        lam, U = torch.linalg.eigh(M)
        lam, U = lam.flip(0), U.flip(1)
        out, prev = torch.zeros_like(M), None
        for j in range(d):
            if prev is not None and (prev < lam[j] or lam[j] < eps):
                break
            prev = lam[j]
            out = out + lam[j].rsqrt() * U[:, j:j + 1] @ U[:, j:j + 1].T
        return out
    raise AssertionError(method)


def reference(x, layer, method, truncation="none"):
    G, eps = layer.groups, layer.eps
    blocks, X_list = ref_blocks(x, G, eps)
    W_list = [ref_whitening(method, M, eps, truncation) for M in blocks]
    return ref_output(x, W_list, X_list, layer.weight, layer.bias)


# ----------------------------------------------------------------------------- inputs
def spectrum_input(lams_per_group, B=2, H=4, W=4, seed=0):
    """x (B, C, H, W) float64 whose group blocks of X Xᵀ/m have eigenvalues ``lams_per_group[g]``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for lams in lams_per_group:
        d = len(lams)
        z = torch.randn(d, B * H * W, generator=g, dtype=D64)
        z = z - z.mean(1, keepdim=True)
        lam_c, V = torch.linalg.eigh(z @ z.T / z.shape[1])
        z = (V * lam_c.rsqrt()) @ V.T @ z
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=D64))
        rows.append(Q @ torch.diag(torch.tensor(lams, dtype=D64).sqrt()) @ z + 1.5)
    C = sum(len(lams) for lams in lams_per_group)
    return torch.cat(rows).reshape(C, B, H, W).transpose(0, 1).contiguous()


def compare(method, x, preset="paper", truncation="none", rtol=1e-9, atol=1e-11):
    config = get_preset(preset).layer(methods.spec(method))
    layer = ZCAWhitening(x.shape[1], d=4, config=config, dtype="float64").double()
    R = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=D64)
    x1 = x.clone().requires_grad_(True)
    y = layer(x1)
    (y * R).sum().backward()
    x2 = x.clone().requires_grad_(True)
    y_ref = reference(x2, layer, method, truncation)
    (y_ref * R).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=rtol * 100, atol=atol * 100)
    return y, x1.grad


# Two groups of d = 4; the second has a tiny eigenvalue so that SVD-PI's energy rule drops pairs.
LAMS = [[0.9, 0.35, 0.12, 0.04], [1.2, 0.5, 0.2, 3e-5]]


@pytest.mark.parametrize("method", ["analytic", "taylor", "clip"])
def test_paper_layer_matches_the_authors_svd_kernel_layers(method):
    compare(method, spectrum_input(LAMS))


def test_paper_svd_head_preset_matches_the_truncated_svd_baseline():
    # with ε = 1e-4 no σ of Σ + εI is ≤ ε: the later SVD baseline whitens with the largest pair only
    y, _ = compare("analytic", spectrum_input(LAMS), preset="paper-svd-head", truncation="svd-head")
    assert torch.linalg.matrix_rank(_group_cov(y.detach(), 4)[0]) == 1


def test_paper_svd_pi_layer_matches_the_authors_truncated_forward_and_backward():
    # tight enough to tell the 20-term backward (num_iter = 19) from 19 or 21 terms (2e-9 relative apart)
    y, _ = compare("pi", spectrum_input(LAMS), rtol=1e-12, atol=1e-13)
    # energy rule with γ_j including σ_j (σ = λ + 1e-4): group 1 γ = .638, .886, .972, 1 → keeps 3 pairs;
    # group 2 γ = .632, .895, .99993 ≥ 1 − 1e-4 → keeps 2
    cov = _group_cov(y.detach(), 4)
    assert [int(torch.linalg.matrix_rank(c, atol=1e-6)) for c in cov] == [3, 2]


def test_paper_pi_layer_matches_converged_power_iteration_with_its_stopping_rule():
    # well-separated spectra (ratio 1/4): 19 iterations converge to ~4^-19 ≈ 4e-12 per vector, so
    # the converged reference (exact pairs, the same stopping rule) is the authors' PI to that accuracy
    lams = [[1.0, 0.25, 0.0625, 0.015625], [2.0, 0.5, 0.125, 0.03125]]
    compare("pi-forward", spectrum_input(lams), rtol=1e-5, atol=1e-6)


def _group_cov(y, d):
    C = y.shape[1]
    yg = y.transpose(0, 1).reshape(C // d, d, -1)
    yc = yg - yg.mean(-1, keepdim=True)
    return yc @ yc.transpose(1, 2) / yc.shape[-1]


# ----------------------------------------------------------------------------- truncation rules
def test_kept_mask_rules_on_constructed_spectra():
    eps = 1e-2
    lam = torch.tensor([[0.005, 0.3, 0.5, 4.0]], dtype=D64)  # ascending, as eigh
    # SVD-PI's rule is its method's, with the layer's ε: descending 4, .5, .3, .005; γ = .829, .933, .999, 1
    # → γ ≥ 1 − ε at j = 2: keep 4, .5
    svd_pi_row = PRESETS["paper"].layer(methods.spec("pi"), eps=eps)
    assert svd_pi_row.truncation == "none" and svd_pi_row.spec.kept_of(lam).tolist() == [[False, False, True, True]]
    # svd-head: first σ ≤ ε is .005 (j = 3): keep all four; none ≤ ε → only the largest
    assert kept_mask(lam, "svd-head", eps).tolist() == [[True, True, True, True]]
    assert kept_mask(lam + 0.1, "svd-head", eps).tolist() == [[False, False, False, True]]
    # the PI row's stop rule is its method's (stop=true) with the layer's ε: index order, found from the
    # last; order of finding 4, .5, .3, .005
    lam_pi = torch.tensor([[0.005, 0.3, 0.5, 4.0], [0.2, 0.6, 0.5, 4.0], [0.3, 0.2, 0.5, -1.0]], dtype=D64)
    pi_row = PRESETS["paper"].layer(methods.spec("pi-forward"), eps=eps)
    assert pi_row.truncation == "none" and str(pi_row.spec) == "pi-authors:stop=true,eps=0.01"
    assert pi_row.spec.kept_of(lam_pi).tolist() == [
        [False, True, True, True],      # .005 < ε stops
        [False, False, True, True],     # .6 > .5 (increase) stops
        [False, False, False, True],    # the first is kept whatever its value; .5 > −1 stops
    ]
    assert kept_mask(lam, "none", eps) is None


# ----------------------------------------------------------------------------- preset rows pinned
def test_paper_preset_rows():
    paper = PRESETS["paper"]
    rows = {m: paper.layer(methods.spec(m)) for m in ("analytic", "pi-forward", "pi", "taylor", "clip")}
    assert {m: c.eps for m, c in rows.items()} == {"analytic": 1e-4, "pi-forward": 1e-4, "pi": 1e-4, "taylor": 1e-2, "clip": 1e-2}
    assert {m: c.lam_floor for m, c in rows.items()} == {"analytic": None, "pi-forward": None, "pi": None, "taylor": 1e-10, "clip": 1e-5}
    assert {m: c.solver for m, c in rows.items()} == {"analytic": "svd", "pi-forward": "eigh", "pi": "svd", "taylor": "svd", "clip": "svd"}
    assert {m: c.truncation for m, c in rows.items()} == {"analytic": "none", "pi-forward": "none", "pi": "none",
                                                         "taylor": "none", "clip": "none"}
    assert str(rows["taylor"].spec) == "taylor-song:K=9" and str(rows["pi"].spec) == "pi:steps=20"
    assert rows["pi-forward"].spec == methods.spec("pi-authors:stop=true")  # the released PI layer's backward
    assert rows["pi-forward"].fresh_starts and all(c.covariance == "full" and not c.symmetrize for c in rows.values())
    assert all(c.weight_init == "uniform" and c.source for c in rows.values())
    assert paper.input_std == PAPER_STD == (0.2023, 0.1994, 0.2010)
    assert (paper.epochs, paper.milestones, paper.milestone_unit, paper.gamma) == (350.0, (100, 200, 300), "epoch", 0.1)
    assert (paper.conv_init, paper.stop_on, paper.tf32, paper.drop_last) == ("kaiming-fan-out", "nan-loss", False, False)
    assert str(PRESETS["paper"].layer(methods.spec("pi"), eps=1e-3).spec) == "pi:steps=20,eps=0.001"  # one ε for layer and truncation
    assert str(PRESETS["paper"].layer(methods.spec("taylor"), eps=1e-3).spec) == "taylor-song:K=9"
    assert PRESETS["paper-svd-head"].layer(methods.spec("analytic")).truncation == "svd-head"
    assert PRESETS["paper-svd-head"].layer(methods.spec("taylor")) == rows["taylor"]
    # the rows are keyed by the paper's own names, in the paper's order
    assert [name for name, _ in paper.rows] == ["SVD", "PI", "SVD-PI", "SVD-Taylor", "SVD-Clip"]
    assert paper.row_methods() == ["analytic", "pi-forward", "pi", "taylor", "clip"]


def test_stabkit_preset_is_the_old_layer():
    s = PRESETS["stabkit"]
    assert s.layer(methods.spec("taylor")) == ZCAConfig(spec=methods.spec("taylor"), eps=1e-4)
    assert s.layer(methods.spec("taylor:K=19"), eps=1e-3) == ZCAConfig(spec=methods.spec("taylor:K=19"), eps=1e-3)
    assert s.drop_last and (s.input_std, s.milestones, s.milestone_unit, s.stop_on, s.tf32, s.conv_init) == (
        (0.2470, 0.2435, 0.2616), (0.5, 0.75), "fraction", "any", None, "torch-default")
    x = spectrum_input(LAMS)
    old = ZCAWhitening(8, d=4, method="taylor", eps=1e-4, dtype="float64")
    new = ZCAWhitening(8, d=4, config=s.layer(methods.spec("taylor")), dtype="float64")
    assert torch.equal(old(x), new(x))


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown preset 'papers'"):
        get_preset("papers")
    with pytest.raises(ValueError, match="no row for method 'lorentzian'"):
        PRESETS["paper"].layer(methods.spec("lorentzian"))
    with pytest.raises(ValueError, match="fixes the backward of 'taylor'"):
        PRESETS["paper"].layer(methods.spec("taylor:K=19"))
    with pytest.raises(ValueError, match="unknown ZCA truncation"):
        ZCAConfig(truncation="energy")
    with pytest.raises(TypeError, match="must be a methods.Spec"):
        ZCAConfig(spec="taylor")
    for eps in (float("inf"), float("nan"), -1e-4, "1e-4"):  # inf was accepted: Σ + ∞·I whitens to zero
        with pytest.raises(ValueError, match="eps must be a finite number ≥ 0"):
            ZCAConfig(eps=eps)


def test_paper_init_kaiming_fan_out_and_uniform_gamma():
    torch.manual_seed(0)
    net = ResNet18(d=16, zca=PRESETS["paper"].layer(methods.spec("taylor")), conv_init="kaiming-fan-out")
    w = net.layers[-1].conv2.weight  # 512 × 512 × 3 × 3: fan_out = 4608
    assert abs(w.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.01
    gamma = net.norm1.weight.detach()
    assert 0 <= gamma.min() and gamma.max() < 1 and gamma.std() > 0.1
    default = ResNet18(d=16)
    assert abs(default.layers[-1].conv2.weight.std().item() / math.sqrt(2 / (512 * 9)) - 1) > 0.3  # torch's own init
    assert torch.equal(default.norm1.weight.detach(), torch.ones(64))


def test_paper_clip_row_runs_the_authors_clip_zero_at_ties():
    layer = ZCAWhitening(8, d=4, config=PRESETS["paper"].layer(methods.spec("clip")), dtype="float64")
    assert str(layer.spec) == "clip-authors" and layer.spec is layer.config.spec
    # the authors' clip helper, written out: F_ij = sign(λ_j − λ_i)/max(|λ_j − λ_i|, 1/τ), 0 at exact ties
    lam = torch.tensor([0.5, 1.3, 1.3, 1.3 + 1e-4, 2.0], dtype=torch.float64)
    F = methods.get("clip-authors").kernel(lam, tau=100.0)
    for i in range(5):
        for j in range(5):
            gap = float(lam[j] - lam[i])
            want = 0.0 if gap == 0 else math.copysign(1 / max(abs(gap), 0.01), gap)
            assert float(F[i, j]) == pytest.approx(want, rel=1e-12)


def test_pi_baseline_draws_fresh_start_vectors_every_forward():
    # close eigenvalues (ratio 0.95): 19 iterations do not converge, so the start vectors show
    x = spectrum_input([[1.0, 0.95, 0.9, 0.85], [1.0, 0.95, 0.9, 0.85]])
    layer = ZCAWhitening(8, d=4, config=PRESETS["paper"].layer(methods.spec("pi-forward")), dtype="float64").double()
    y1, y2 = layer(x), layer(x)
    assert layer.forward_calls == 2 and (y1 - y2).abs().max() > 1e-6
    fixed = ZCAWhitening(8, d=4, method="pi-forward", dtype="float64").double()  # stabkit: one seeded start
    assert torch.equal(fixed(x), fixed(x))


def test_a_reloaded_pi_baseline_continues_its_start_vectors():
    """The forward count that seeds the fresh start vectors travels in the state_dict: a layer loaded
    from it draws the starts the saved layer would have drawn next (a resumed run is the same run),
    and the count alone tells them apart (a fresh layer repeats the first forward's)."""
    x = spectrum_input([[1.0, 0.95, 0.9, 0.85], [1.0, 0.95, 0.9, 0.85]])

    def layer():
        torch.manual_seed(0)  # the paper's γ ~ U[0, 1): the same in every layer made here
        return ZCAWhitening(8, d=4, config=PRESETS["paper"].layer(methods.spec("pi-forward")), dtype="float64").double()

    saved = layer()
    first = saved(x)
    saved(x)
    loaded = layer()
    loaded.load_state_dict(saved.state_dict())
    assert loaded.forward_calls == 2
    assert torch.equal(loaded(x), saved(x))
    assert not torch.equal(layer()(x), loaded(x)) and torch.equal(layer()(x), first)
