"""stabkit.monitor.watch: intercepts eigen calls in an unmodified model, logs the right numbers, restores."""

import math
import sys
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import stabkit.torch as sktorch
from stabkit import methods, monitor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ORIGINALS = (torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd, sktorch.eigh)


def _sym(lams, seed=0):
    Q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (Q * torch.tensor(lams, dtype=torch.float64)) @ Q.T


class Tiny(nn.Module):
    """A model that knows nothing about stabkit: it calls torch.linalg.eigh itself."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64))

    def forward(self, A):
        lam, U = torch.linalg.eigh(A)
        return (lam * self.w).sum() + U[:, 0].abs().sum()


def test_logs_one_row_per_call_with_the_right_gap():
    model = Tiny()
    A = _sym([1.0, 2.0, 2.5, 5.0]).requires_grad_(True)
    with monitor.watch() as mon:
        model(A).backward()
        model(A)
        mon.step()
        model(_sym([-3.0, 1e-3, 2e-3, 4.0], seed=1))
    df = mon.records
    assert len(df) == 3 and df["step"].tolist() == [0, 0, 1]
    assert df["fn"].tolist() == ["eigh"] * 3
    assert all(s.startswith("tests/test_monitor.py:") or "test_monitor.py:" in s for s in df["site"])
    assert df["site"].nunique() == 1  # same line in Tiny.forward
    first = df.iloc[0]
    assert first["min_gap"] == pytest.approx(0.5, rel=1e-9)
    assert first["min_rel_gap"] == pytest.approx(0.1, rel=1e-9)
    assert first["max_K"] == pytest.approx(2.0, rel=1e-9)
    assert first["lam_min"] == pytest.approx(1.0, rel=1e-9)
    assert first["n"] == 4 and first["dtype"] == "float64" and not first["nonfinite"]
    assert df.iloc[2]["min_gap"] == pytest.approx(1e-3, rel=1e-6)
    assert df.iloc[2]["max_K"] == pytest.approx(1e3, rel=1e-6)
    assert df.iloc[2]["lam_min"] == pytest.approx(-3.0, rel=1e-9)
    # grad reaching the outputs: ∂/∂λ = w, ∂/∂U = sign(U[:,0]) in column 0 → norm √(|w|² + 4)
    w = model.w.detach()
    assert first["grad_norm"] == pytest.approx(math.sqrt(float((w ** 2).sum()) + 4.0), rel=1e-9)
    assert math.isnan(df.iloc[1]["grad_norm"])  # no backward through the second call


def test_functions_are_restored_even_after_an_error():
    with pytest.raises(RuntimeError, match="boom"):
        with monitor.watch():
            assert torch.linalg.eigh is not ORIGINALS[0]
            raise RuntimeError("boom")
    assert (torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd, sktorch.eigh) == ORIGINALS


def test_eigvalsh_svd_batches_and_nonfinite_gradient():
    with monitor.watch() as mon:
        torch.linalg.eigvalsh(torch.stack([_sym([1.0, 4.0, 9.0]), _sym([1.0, 1.5, 9.0])]))
        S = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)).requires_grad_(True)
        U, s, Vh = torch.linalg.svd(S)
        (s.sum() * float("inf")).backward()
    df = mon.records
    assert df["fn"].tolist() == ["eigvalsh", "svd"]
    assert df.iloc[0]["batch"] == 2 and df.iloc[0]["min_gap"] == pytest.approx(0.5)
    assert df.iloc[1]["min_gap"] == pytest.approx(3.0)  # σ² = 9, 4, 1
    assert df["nonfinite"].tolist() == [False, True]


def test_stabkit_eigh_is_logged_once_and_bound_column():
    A = _sym([1.0, 1.001, 3.0]).requires_grad_(True)
    with monitor.watch(bound="clip:tau=50") as mon:
        lam, U = sktorch.eigh(A, "taylor")
        U.sum().backward()
    df = mon.records
    assert len(df) == 1 and df.iloc[0]["fn"] == "stabkit.torch.eigh[taylor]"  # the inner torch.linalg.eigh is not logged again
    assert df.iloc[0]["max_K"] == pytest.approx(1000.0, rel=1e-6)
    assert df.iloc[0]["bound"] == pytest.approx(50.0)  # clip caps |F| at τ
    assert df.iloc[0]["grad_norm"] == pytest.approx(3.0)  # ∂/∂U = ones(3, 3)


@pytest.mark.parametrize("name", methods.NAMES)
def test_every_method_is_one_row_forward_and_backward(name):
    """A backward that rebuilds its state (pi-legacy re-runs its exact start) does not log a second,
    internal eigh call (it used to add an ``eigh`` row)."""
    A = _sym([1.0, 2.0, 4.0]).requires_grad_(True)
    with monitor.watch() as mon:
        lam, U = sktorch.eigh(A, method=name)
        ((U.sum(0) ** 2).sum() + lam.sum()).backward()
    assert list(mon.records["fn"]) == [f"stabkit.torch.eigh[{name}]"]



@pytest.mark.parametrize("name", methods.NAMES)
def test_every_methods_statistics_are_those_of_its_spectrum_sorted(name):
    """An indefinite A (spectrum −2, 1, 3): the row's gap, relative gap and λ_min are those of the λ the
    call returned, sorted here in float64. Methods that return λ in ascending |λ| (documented in
    stabkit.torch.eigh) were measured as if ascending: λ_min 1 instead of −2, min gap 3 instead of 2."""
    A = _sym([-2.0, 1.0, 3.0], seed=2)
    with monitor.watch() as mon:
        lam, _ = sktorch.eigh(A, method=name)
        values = sktorch.eigvalsh(A, method=name)
    with monitor.watch(swap_backward=name) as swapped:  # torch.linalg.eigh routed through the method
        swapped_lam, _ = torch.linalg.eigh(A)
    rows = mon.records.to_dict("records") + swapped.records.to_dict("records")
    assert len(rows) == 3
    for row, returned in zip(rows, (lam, values, swapped_lam)):
        s = sorted(float(v) for v in returned)
        gap = min(b - a for a, b in zip(s, s[1:]))
        assert row["lam_min"] == pytest.approx(s[0], rel=1e-12)
        assert row["min_gap"] == pytest.approx(gap, rel=1e-12)
        assert row["min_rel_gap"] == pytest.approx(gap / max(abs(v) for v in s), rel=1e-12)
        assert row["max_K"] == pytest.approx(1 / gap, rel=1e-12)

def test_swap_backward_changes_the_gradient_only():
    A0 = _sym([1.0, 1.0 + 1e-4, 3.0], seed=2)

    def grad(swap):
        A = A0.clone().requires_grad_(True)
        with monitor.watch(swap_backward=swap):
            lam, U = torch.linalg.eigh(A)
            out = (U[:, 0] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum() ** 2
        out.backward()
        return lam.detach(), A.grad

    lam_a, g_analytic = grad(None)
    lam_c, g_clip = grad("clip:tau=10")
    torch.testing.assert_close(lam_a, lam_c)
    A = A0.clone().requires_grad_(True)
    lam, U = sktorch.eigh(A, "clip", tau=10)
    ((U[:, 0] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum() ** 2).backward()
    torch.testing.assert_close(g_clip, A.grad)
    assert g_analytic.abs().max() > 100 * g_clip.abs().max()


def test_log_files_and_summary(tmp_path):
    for name in ("eig.parquet", "eig.csv"):
        with monitor.watch(log_path=tmp_path / name) as mon:
            torch.linalg.eigh(_sym([1.0, 2.0]))
            mon.step()
            torch.linalg.eigh(_sym([1.0, 1.0 + 1e-7]))
        df = pd.read_parquet(tmp_path / name) if name.endswith("parquet") else pd.read_csv(tmp_path / name)
        assert len(df) == 2 and df["step"].tolist() == [0, 1]
    summary = monitor.summarize(df, gap_threshold=1e-5)
    assert summary["calls"] == 2 and summary["gap_events"] == 1
    assert summary["max_K"] == pytest.approx(1e7, rel=1e-3)
    assert monitor.summarize(df, until_step=1)["gap_events"] == 0


def test_summary_takes_each_diagnostic_s_worst_call():
    # three calls whose extremes fall on different calls: the smallest gaps and λ_min, the largest
    # max|K̃|, bound and gradient norm, the count of calls below the gap threshold and non-finite
    df = pd.DataFrame({"step": [0, 1, 2],
                       "min_gap": [0.5, 2e-6, 0.1], "min_rel_gap": [0.1, 1e-6, 2e-5],
                       "max_K": [2.0, 5e5, 10.0], "lam_min": [0.3, 0.2, -0.01],
                       "bound": [7.0, 3.0, 1.0], "grad_norm": [1.0, 4.0, math.nan], "nonfinite": [False, False, True]})
    assert monitor.summarize(df, gap_threshold=1e-5) == {
        "calls": 3, "min_gap": 2e-6, "min_rel_gap": 1e-6, "max_K": 5e5, "lam_min": -0.01, "max_bound": 7.0,
        "max_grad_norm": 4.0, "gap_events": 1, "nonfinite_events": 1}
    first = monitor.summarize(df, until_step=1)  # steps < 1: the first call alone
    assert (first["min_gap"], first["lam_min"], first["max_grad_norm"], first["gap_events"]) == (0.5, 0.3, 1.0, 0)


def test_tensorboard_scalars_per_call_site_and_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with monitor.watch(tensorboard_dir=tmp_path / "tb") as mon:
        for lams in ([1.0, 2.0, 2.5], [1.0, 1.0 + 1e-3, 3.0]):  # min gap 0.5, then 1e-3; one call site
            torch.linalg.eigh(_sym(lams))
            mon.step()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    (tag,) = [t for t in events.Tags()["scalars"] if t.endswith("/max_K")]
    assert "test_monitor.py:" in tag  # the call site, file:line
    values = {e.step: e.value for e in events.Scalars(tag)}
    assert values[0] == pytest.approx(2.0, rel=1e-6) and values[1] == pytest.approx(1e3, rel=1e-6)


def test_tensorboard_missing_is_a_warning_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    with pytest.warns(UserWarning, match="tensorboard logging skipped"):
        with monitor.watch(log_path=tmp_path / "eig.csv", tensorboard_dir=tmp_path / "tb"):
            torch.linalg.eigh(_sym([1.0, 2.0]))
    assert len(pd.read_csv(tmp_path / "eig.csv")) == 1  # the other outputs are still written


def _taylor_max(lams, K, eps):
    """max over pairs of (1/hi) Σ_{k≤K} (lo/hi)^k on λ + ε — written out independently of stabkit."""
    best = 0.0
    for i, a in enumerate(lams):
        for b in lams[i + 1:]:
            lo, hi = sorted((a + eps, b + eps))
            best = max(best, sum((lo / hi) ** k for k in range(K + 1)) / hi)
    return best


@pytest.mark.parametrize("spec, expected", [
    ("analytic", 1 / 0.5),                              # 1 / min gap
    ("clip:tau=1", 1.0),                                # capped at τ
    ("pi", 3 * (1 - (2 / 3) ** 19) / 1.5),             # SVD-PI's F_ik = Σ_{s<19} (λ_i/λ_k)^s / λ_k at (1, 1.5)
    ("taylor:K=2", _taylor_max([1.0, 1.5, 2.0], 2, 0.0)),  # pair (1, 1.5): (1 + 2/3 + 4/9)/1.5
])
def test_bound_column_per_method(spec, expected):
    with monitor.watch(bound=spec) as mon:
        torch.linalg.eigh(_sym([1.0, 1.5, 2.0]))
    assert mon.records.iloc[0]["bound"] == pytest.approx(expected, rel=1e-9)


def test_public_names_and_a_method_without_a_coefficient_matrix_logs_no_bound():
    from stabkit.monitor import COLUMNS, Monitor, summarize, watch  # noqa: F401 — the public API

    assert "bound" in COLUMNS
    native = next(name for name in methods.NAMES if methods.get(name).native)
    with monitor.watch(bound=native) as mon:
        torch.linalg.eigh(_sym([1.0, 1.5, 2.0]))
    assert math.isnan(mon.records.iloc[0]["bound"])


def test_specs_are_taken_as_is_and_stabkit_eigh_calls_are_labelled_by_their_spec(monkeypatch):
    """watch(swap_backward=Spec, bound=Spec) and stabkit.torch.eigh(A, method=Spec) under the monitor:
    no parse or bind per call; the backward column is the Spec's text, the function its method's name."""
    from stabkit.methods import _spec

    swap, spec = methods.spec("clip:tau=10"), methods.spec("taylor:K=3")
    calls = []
    for name in ("parse", "bind"):
        original = getattr(_spec, name)
        monkeypatch.setattr(_spec, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    with monitor.watch(swap_backward=swap, bound=swap) as mon:
        torch.linalg.eigh(_sym([1.0, 1.5, 2.0]))
        sktorch.eigh(_sym([1.0, 2.0, 4.0]), method=spec)
        sktorch.eigh_kept(_sym([1.0, 2.0, 4.0]), spec, check=False)
    assert calls == []
    df = mon.records
    assert df["fn"].tolist() == ["eigh", "stabkit.torch.eigh[taylor]", "stabkit.torch.eigh[taylor]"]
    assert df["backward"].tolist() == ["clip:tau=10", "taylor:K=3", "taylor:K=3"]
    assert df["bound"].tolist() == [pytest.approx(2.0), pytest.approx(1.0), pytest.approx(1.0)]  # 1/min gap, below τ
    with monitor.watch() as mon:  # text and keywords: the same labels as before Specs existed
        sktorch.eigh(_sym([1.0, 2.0, 4.0]), "taylor", K=3)
        sktorch.eigh(_sym([1.0, 2.0, 4.0]), method="taylor:K=3")
    assert mon.records["fn"].tolist() == ["stabkit.torch.eigh[taylor]", "stabkit.torch.eigh[taylor:K=3]"]
    assert mon.records["backward"].tolist() == ["taylor:K=3", "taylor:K=3"]


def test_stabkit_eigvalsh_svd_svdvals_are_labelled_by_their_own_spec():
    """Each stabkit.torch function is logged once, with the rule its backward uses and the gradient
    reaching its outputs (not as the torch.linalg call it makes inside)."""
    X = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_(True)
    A = X.detach().T @ X.detach()
    with monitor.watch() as mon:
        lam = sktorch.eigvalsh(A.requires_grad_(True), method="taylor")
        U, S, Vh = sktorch.svd(X, full_matrices=False, method="clip", tau=5)
        s = sktorch.svdvals(X, method="taylor")
        (lam.sum() + S.sum() + U.sum() + s.sum()).backward()
    df = mon.records
    assert df["fn"].tolist() == ["stabkit.torch.eigvalsh[taylor]", "stabkit.torch.svd[clip]", "stabkit.torch.svdvals[taylor]"]
    assert df["backward"].tolist() == ["taylor", "clip:tau=5", "taylor"]
    # ∂L/∂λ = 1 (3 values); ∂L/∂S = 1 and ∂L/∂U = 1 (5×3), nothing on Vh; ∂L/∂σ = 1
    assert df["grad_norm"].tolist() == [pytest.approx(math.sqrt(3)), pytest.approx(math.sqrt(18)), pytest.approx(math.sqrt(3))]
    lam_np = sorted(float(v) for v in torch.linalg.eigvalsh(A.detach()))  # outside watch: the original
    gap = min(b - a for a, b in zip(lam_np, lam_np[1:]))
    assert df["min_gap"].tolist() == [pytest.approx(gap, rel=1e-9)] * 3  # σ² of X are the eigenvalues of XᵀX


@pytest.mark.parametrize("call", [lambda X: torch.linalg.eigh(X), lambda X: torch.linalg.eigh(input=X),
                                  lambda X: sktorch.eigh(A=X)], ids=["positional", "input=", "A="])
def test_a_failing_call_is_recorded_whatever_keyword_carries_its_input(call):
    X = torch.full((2, 3, 3), float("nan"))
    with pytest.raises((torch.linalg.LinAlgError, ValueError)):
        with monitor.watch() as mon:
            call(X)
    row = mon.records.iloc[0]
    assert (row["batch"], row["n"], row["dtype"], row["input_nonfinite"]) == (2, 3, "float32", True)
    assert row["error"].split(":")[0] in ("_LinAlgError", "InputError")


@pytest.mark.parametrize("which", ["torch", "stabkit"])
def test_torch_compile_fullgraph_works_inside_watch_and_the_compiled_region_is_not_monitored(which):
    """Dynamo cannot trace the monitor's bookkeeping: while it traces, the wrappers call the original."""
    A0 = _sym([1.0, 2.0, 4.0])

    def f(A):  # the functions are looked up at call time: the wrappers inside watch
        lam, U = torch.linalg.eigh(A) if which == "torch" else sktorch.eigh(A, method="taylor")
        return (U ** 3).sum() + (lam ** 2).sum()

    torch._dynamo.reset()
    try:
        with monitor.watch() as mon:
            A = A0.clone().requires_grad_(True)
            y = torch.compile(f, fullgraph=True, backend="eager")(A)
            y.backward()
    finally:
        torch._dynamo.reset()
    B = A0.clone().requires_grad_(True)
    f(B).backward()  # eager, outside the monitor
    torch.testing.assert_close(y.detach(), f(A0))
    torch.testing.assert_close(A.grad, B.grad)
    assert mon.records.empty


@pytest.mark.parametrize("folder", ["my_autograd_tests", "torch"])
def test_a_user_file_in_a_folder_named_like_torch_is_its_call_site(tmp_path, folder):
    """Frames are looked through by where torch and stabkit are installed, not by words in the path."""
    path = tmp_path / folder / "model.py"
    path.parent.mkdir()
    path.write_text("import torch\n\n\ndef run(A):\n    return torch.linalg.eigh(A)\n")
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    with monitor.watch() as mon:
        namespace["run"](_sym([1.0, 2.0]))
    assert mon.records["site"].tolist() == [f"{path}:5"]


def _hvp(decompose, A0, seed=0):
    """v ↦ ∂/∂A ⟨∇L(A), V⟩ for L = ⟨B, f(A)²⟩ (nonlinear: its cotangent depends on A)."""
    gen = torch.Generator().manual_seed(seed)
    A = A0.clone().requires_grad_(True)
    out = decompose(A)
    B, V = torch.randn(out.shape, generator=gen, dtype=out.dtype), torch.randn(A.shape, generator=gen, dtype=A.dtype)
    (g,) = torch.autograd.grad((B * out * out).sum(), A, create_graph=True)
    return torch.autograd.grad((g * V).sum(), A)[0]


def test_a_swapped_hessian_vector_product_equals_the_method_applied_directly_and_logs_one_row():
    """The double backward rebuilds the decomposition from A: inside watch(swap_backward=…) that
    rebuild is neither logged as a call nor swapped (with taylor:K=1 it used to move the HVP by ≈0.1)."""
    A0 = _sym([1.0, 2.0, 2.5, 5.0])
    X0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with monitor.watch(swap_backward="taylor:K=1") as mon:
        h_eigh = _hvp(lambda A: torch.linalg.eigh(A)[1], A0)
        h_svd = _hvp(lambda X: sktorch.svd(X, full_matrices=False, method="taylor:K=1")[0], X0)
    torch.testing.assert_close(h_eigh, _hvp(lambda A: sktorch.eigh(A, method="taylor:K=1")[1], A0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_svd, _hvp(lambda X: sktorch.svd(X, full_matrices=False, method="taylor:K=1")[0], X0),
                               rtol=1e-12, atol=1e-12)
    assert mon.records["fn"].tolist() == ["eigh", "stabkit.torch.svd[taylor:K=1]"]
    assert mon.records["backward"].tolist() == ["taylor:K=1", "taylor:K=1"]


def test_a_daleckii_krein_layer_is_logged_as_itself_and_never_swapped():
    """CovariancePooling's default and SVD-DK decompose inside their own autograd Function with the
    exact Fréchet derivative of g as backward: inside watch(swap_backward=…) each is one row with the
    DK label (not a swapped torch eigh/svd), its gradients — first and second — are the unwatched ones,
    and its λ are those of g's argument (FᵀF + εI for SVD-DK)."""
    from stabkit.layers import CovariancePooling, o2p
    from stabkit.layers.matrix_functions import DK_BACKWARD

    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Q = _sym([1.0, 2.0, 3.0, 4.0, 5.0], seed=3)
    Q = torch.linalg.eigh(Q)[1]
    P = torch.linalg.eigh(_sym([1.0, 2.0, 3.0], seed=4))[1]
    F0 = Q[:, :3] @ torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)) @ P.T  # σ = 2, 1, 0.5
    pool = CovariancePooling(function="log", eps=1e-3)

    def grads():
        x = x0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((pool(x) ** 2).sum(), x)
        return gx, _hvp(lambda F: o2p(F, eps=0.1, route="svd-dk"), F0)

    outside = grads()
    with monitor.watch(swap_backward="taylor:K=1") as mon:
        inside = grads()
    torch.testing.assert_close(inside[0], outside[0], rtol=0, atol=0)
    torch.testing.assert_close(inside[1], outside[1], rtol=0, atol=0)
    df = mon.records
    assert df["fn"].tolist() == ["stabkit.layers.matrix_functions.eig_dk", "stabkit.layers.matrix_functions.svd_dk"]
    assert df["backward"].tolist() == [DK_BACKWARD] * 2
    svd_row = df.iloc[1]
    for row, marker in ((df.iloc[0], "(pool(x) ** 2)"), (svd_row, 'route="svd-dk"), F0)')):
        line = next(i for i, text in enumerate(open(__file__), 1) if marker in text)
        assert row["site"].endswith(f"test_monitor.py:{line}")  # the caller of the layer, not its module
    assert svd_row["lam_min"] == pytest.approx(0.25 + 0.1, rel=1e-12)  # μ = σ² + ε = 0.35, 1.1, 4.1
    assert svd_row["min_gap"] == pytest.approx(0.75, rel=1e-12)
    assert df.iloc[0]["batch"] == 2 and df.iloc[0]["n"] == 3
    assert df.iloc[0]["grad_norm"] > 0 and math.isfinite(df.iloc[0]["grad_in_norm"])


@pytest.mark.parametrize("call", [lambda: torch.linalg.eigh(torch.zeros(0, 3, 3)), lambda: torch.linalg.eigh(torch.zeros(2, 0, 0)),
                                  lambda: torch.linalg.eigvalsh(torch.zeros(0, 0)), lambda: torch.linalg.svd(torch.zeros(0, 2, 3))],
                         ids=["empty-batch", "0x0", "eigvalsh-0x0", "svd-empty-batch"])
def test_an_empty_input_is_logged_without_a_warning(call, monkeypatch):
    """torch decomposes an empty batch and 0×0 matrices: the call is one row with nothing measured,
    never a 'could not be logged' warning (under -W error it raised into the user's call)."""
    from stabkit.monitor import hooks

    monkeypatch.setattr(hooks, "_warned_internal", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with monitor.watch() as mon:
            call()
    row = mon.records.iloc[0]
    assert len(mon.records) == 1 and row["error"] == "" and not row["nonfinite"]
    assert math.isnan(row["min_gap"]) and math.isnan(row["lam_min"]) and math.isnan(row["max_K"])


def test_calls_inside_torch_func_transforms_are_logged_and_readable(tmp_path):
    """Inside vmap (and jacrev, which vmaps its backward) the call sees batched wrappers: the row is
    taken over every matrix decomposed and gradient norms over every cotangent, never a wrapper that
    cannot be read once the transform is over (that turned the log off for the rest of the run)."""
    A = torch.stack([_sym([1.0, 2.0, 4.0]), _sym([1.0, 1.5, 9.0], seed=1)])
    with monitor.watch(log_path=tmp_path / "eig.csv") as mon:
        lam = torch.func.vmap(torch.linalg.eigvalsh)(A)
        mon.step()
        jac = torch.func.jacrev(torch.linalg.eigvalsh)(A[0])
        mon.step()
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(A))
    assert mon.log_error is None
    df = monitor.read_log(tmp_path / "eig.csv")
    assert df["batch"].tolist() == [2, 1] and df["min_gap"].tolist() == [pytest.approx(0.5), pytest.approx(1.0)]
    assert df["lam_min"].tolist() == [pytest.approx(1.0), pytest.approx(1.0)]
    assert df.iloc[1]["grad_norm"] == pytest.approx(math.sqrt(3.0))  # the cotangents: the rows of I₃
    assert jac.shape == (3, 3, 3)


def test_gradient_norms_of_a_call_under_vmap_with_autograd_outside_it():
    """vmap's batched wrapper never requires grad, so no hook attached and both norms stayed NaN
    through ``vmap(f)(X).sum().backward()``: they are the norms over the batch, as a loop's."""
    X = torch.stack([_sym([1.0, 2.0, 4.0]), _sym([0.5, 3.0, 3.5], seed=1)]).requires_grad_(True)

    def f(a):
        lam, U = torch.linalg.eigh(a)
        return (U ** 3).sum() + (lam * torch.tensor([1.0, -2.0, 0.5], dtype=a.dtype)).sum()

    with monitor.watch() as batched:
        torch.func.vmap(f)(X * 2).sum().backward()
    with monitor.watch() as looped:
        sum(f(x) for x in X * 2).backward()
    (row,), rows = batched.records.to_dict("records"), looped.records
    assert row["batch"] == 2 and not row["nonfinite"]
    for col in ("grad_norm", "grad_in_norm"):
        assert row[col] == pytest.approx(math.sqrt((rows[col] ** 2).sum()), rel=1e-12)


def test_a_call_on_meta_tensors_is_logged_without_values_and_the_log_goes_on(tmp_path):
    """A meta tensor (deferred initialisation) has shapes, no values: its row measures nothing, where
    its unreadable scalars used to turn the log off at the next flush and raise at the block's exit."""
    with monitor.watch(log_path=tmp_path / "eig.csv") as mon:
        A = torch.randn(3, 3, device="meta", requires_grad=True)
        lam, U = torch.linalg.eigh(A @ A.mT)
        (lam.sum() + U.sum()).backward()
        mon.step()
        torch.linalg.eigh(_sym([1.0, 3.0]))
        mon.step()
    assert mon.log_error is None
    df = monitor.read_log(tmp_path / "eig.csv")
    assert df["n"].tolist() == [3, 2] and math.isnan(df.iloc[0]["min_gap"]) and df.iloc[1]["min_gap"] == pytest.approx(2.0)
    assert math.isnan(df.iloc[0]["grad_norm"]) and not df["nonfinite"].any()


def test_a_call_under_no_grad_gets_no_input_gradient_from_other_uses_of_its_input():
    """An evaluation call (torch.no_grad) on a matrix that requires grad has no backward: the
    non-finite ∂L/∂A made by another call's backward on a tie must not be logged as its own."""
    X = torch.eye(2, dtype=torch.float64, requires_grad=True)
    A = X * 1.0  # non-leaf, eigenvalues tied at 1
    with monitor.watch() as mon:
        with torch.no_grad():
            torch.linalg.eigvalsh(A)
        _, U = torch.linalg.eigh(A)
        U.sum().backward()
    assert not torch.isfinite(X.grad).all()  # the analytic rule divides by the zero gap
    rows = mon.records
    assert math.isnan(rows.loc[0, "grad_norm"]) and math.isnan(rows.loc[0, "grad_in_norm"])
    assert not rows.loc[0, "nonfinite"]
    assert rows.loc[1, "grad_norm"] == pytest.approx(2.0)  # ‖ones(2, 2)‖ reaching U
    assert rows.loc[1, "grad_in_norm"] == math.inf and rows.loc[1, "nonfinite"]


def test_float32_spectra_are_measured_without_overflow_or_underflow():
    """max|K̃| = 1/gap of a float32 spectrum is its own number (not ∞ where 1/gap > 3.4e38), and an
    svd's σ² neither overflows (a false non-finite event) nor underflows (a false tie)."""
    with monitor.watch() as mon:
        torch.linalg.eigvalsh(torch.diag(torch.tensor([0.0, 1e-39, 1.0])))
        torch.linalg.svd(torch.diag(torch.tensor([1e-23, 2e-23, 1.0])))
        torch.linalg.svd(torch.diag(torch.tensor([1.0, 1e20, 2e20])))
    rows = mon.records
    for i, sigma_or_lam in enumerate(([0.0, 1e-39, 1.0], [1e-23, 2e-23, 1.0], [1.0, 1e20, 2e20])):
        v = [float(torch.tensor(x, dtype=torch.float32)) for x in sigma_or_lam]  # the float32 values, exactly
        lam = sorted(v) if i == 0 else sorted(x * x for x in v)
        gaps = [b - a for a, b in zip(lam, lam[1:])]
        assert rows.loc[i, "min_gap"] == pytest.approx(min(gaps), rel=1e-12)
        assert rows.loc[i, "max_K"] == pytest.approx(1 / min(gaps), rel=1e-12)
        assert rows.loc[i, "min_rel_gap"] == pytest.approx(min(gaps) / lam[-1], rel=1e-12)
        assert rows.loc[i, "lam_min"] == pytest.approx(lam[0], rel=1e-12)
        assert not rows.loc[i, "nonfinite"]


def _scripted_spectrum(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigh(a)[0] + torch.linalg.eigvalsh(a) + torch.linalg.svd(a)[1].flip(-1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_jit_script_of_code_calling_torch_linalg_works_inside_watch():
    """torch.jit.script resolves torch.linalg.eigh/eigvalsh/svd as aten ops; inside watch it used to find
    the Python wrapper and fail (TypeError), so a model scripted under `stabkit watch` could not run."""
    A = _sym([1.0, 2.0, 4.0])
    for _ in range(2):  # the second watch reuses the wrappers
        with monitor.watch() as mon:
            scripted = torch.jit.script(_scripted_spectrum)
            got = scripted(A)
        assert torch.allclose(got, torch.tensor([3.0, 6.0, 12.0], dtype=torch.float64), atol=1e-12)
        assert len(mon.records) == 0  # scripted code is compiled code: not monitored
    assert torch.linalg.eigh is ORIGINALS[0] and torch.linalg.svd is ORIGINALS[2]


def test_watching_a_monitor_inside_its_own_watch_records_each_call_once_and_keeps_watching():
    """``watching(mon)`` nested in the ``watch`` that made ``mon``: each call used to be logged twice,
    and the inner exit removed mon altogether (the outer block's later calls unlogged, torch's
    functions restored inside it); each optimizer step counted twice."""
    p = nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.1)
    with monitor.watch() as mon:
        with monitor.watching(mon):
            torch.linalg.eigvalsh(_sym([1.0, 3.0]))
            opt.step()
        assert torch.linalg.eigvalsh is not ORIGINALS[1]  # still watched
        torch.linalg.eigvalsh(_sym([1.0, 6.0]))
        opt.step()
        assert mon.current_step == 2
    assert torch.linalg.eigvalsh is ORIGINALS[1]
    rows = mon.records
    assert rows["min_gap"].tolist() == [pytest.approx(2.0), pytest.approx(5.0)]
    assert rows["step"].tolist() == [0, 1]


def test_a_non_finite_output_with_finite_eigenvalues_is_a_non_finite_event():
    """nonfinite covers the call's output: a Daleckii–Krein layer's g(A) = log(A) of a matrix with λ ≤ 0
    is NaN/−∞ while its λ and its input are finite, and was logged as finite (nonfinite False). The
    expectation is torch.isfinite of each call's own output, per run of a SplitMonitor too."""
    from stabkit.layers import matrix_functions as mf  # its attribute, looked up inside watch

    def diag(*values):
        return torch.diag(torch.tensor(values, dtype=torch.float64))

    inputs = [diag(1.0, 2.0, 3.0), diag(-1.0, 2.0, 3.0), diag(0.0, 2.0, 3.0)]
    with monitor.watch() as mon:
        outputs = [mf.eig_dk(A, "log")[0] for A in inputs]
    expected = [not bool(torch.isfinite(C).all()) for C in outputs]
    assert expected == [False, True, True]
    assert mon.records["nonfinite"].tolist() == expected
    assert mon.records["input_nonfinite"].tolist() == [False] * 3
    runs = [monitor.Monitor(), monitor.Monitor()]
    with monitor.watching(monitor.SplitMonitor(runs)):
        C = mf.eig_dk(torch.stack([inputs[0], inputs[1]]), "log")[0]
    assert [mon.records["nonfinite"].item() for mon in runs] == [not bool(torch.isfinite(c).all()) for c in C] == [False, True]


def test_a_nan_in_the_triangle_the_call_does_not_read_is_no_input_event():
    """torch.linalg.eigh/eigvalsh read the UPLO triangle only (and the Daleckii–Krein layer's eig_dk the
    lower one): a NaN above the diagonal of diag(1, 2, 3, 4) leaves λ = 1, 2, 3, 4 and every output
    finite, yet was counted as a non-finite input and event. The expectation is torch's own outputs on
    the matrix: finite and equal to the clean matrix's where the NaN is not read."""
    from stabkit.layers import matrix_functions as mf

    clean = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    upper, lower = clean.clone(), clean.clone()
    upper[0, 3] = lower[3, 0] = float("nan")
    with monitor.watch() as mon:
        lam, U = torch.linalg.eigh(upper)
        values = torch.linalg.eigvalsh(upper, UPLO="L")
        lam_u = torch.linalg.eigvalsh(lower, "U")
        C, _ = mf.eig_dk(upper, "sqrt")
        try:
            torch.linalg.eigh(lower)  # the NaN is read: LAPACK refuses it (a GPU solver may return NaN)
        except torch.linalg.LinAlgError:
            pass
    for out in (lam, U, values, lam_u, C):
        assert bool(torch.isfinite(out).all())
    assert lam.tolist() == values.tolist() == lam_u.tolist() == [1.0, 2.0, 3.0, 4.0]
    rows = mon.records
    assert rows["input_nonfinite"].tolist() == [False, False, False, False, True]
    assert rows["nonfinite"].tolist() == [False, False, False, False, True]
    assert rows["lam_min"].tolist()[:4] == [1.0] * 4
    runs = [monitor.Monitor(), monitor.Monitor()]  # the stacked runs' statistics, one read per run
    with monitor.watching(monitor.SplitMonitor(runs)):
        torch.linalg.eigh(torch.stack([upper, clean]))
    assert [mon.records["input_nonfinite"].item() for mon in runs] == [False, False]
