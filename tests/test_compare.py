"""``stabkit.compare``: every method is scored against the function its forward computes."""

import math

import numpy as np
import pytest

from stabkit import compare as cmp
from stabkit import methods
from stabkit.losses import make_loss, truncate
from stabkit.reference import ground_truth

from .conftest import build


def _dk_truncated(lam, Q, G, f, df, kept):
    """Daleckii–Krein gradient of Σ_{i kept} f(λ_i) q_iᵀ G q_i, written out here independently:
    f̃ = f·1[kept], D_ij = (f̃_i − f̃_j)/(λ_i − λ_j), D_ii = f̃'(λ_i)."""
    ft = np.where(kept, f(lam), 0.0)
    dft = np.where(kept, df(lam), 0.0)
    diff = lam[:, None] - lam[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        D = (ft[:, None] - ft[None, :]) / diff
    D[np.diag_indices_from(D)] = dft
    K = Q.T @ ((G + G.T) / 2) @ Q
    return Q @ (D * K) @ Q.T


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_truncated_truth_is_daleckii_krein_of_f_times_kept(engine):
    lam = np.array([2e-3, 0.05, 0.7, 1.3, 2.0, 3.5])
    A = build(lam, seed=4)
    lam_np, Q = np.linalg.eigh(A)
    loss = make_loss("zca", 6, seed=1)
    kept = np.array([False, False, True, True, True, True])
    full = ground_truth(A, loss, engine=engine)
    truth = cmp.truncated_truth(A, loss, kept, full)
    expected = _dk_truncated(lam_np, Q, loss.weight, lambda x: x ** -0.5, lambda x: -0.5 * x ** -1.5, kept)
    assert truth.certified and truth.engine == engine
    np.testing.assert_allclose(truth.grad, expected, atol=1e-12 * np.abs(expected).max())
    assert np.linalg.norm(truth.grad - full.grad) > 0.1 * np.linalg.norm(full.grad)  # a different function


def test_truncated_weighted_loss_is_w_times_kept():
    loss = make_loss("eigvec", 4, seed=0)
    kept = np.array([False, True, True, True])
    tl = truncate(loss, [1.0, 2.0, 3.0, 4.0], kept)
    np.testing.assert_array_equal(tl.w, loss.w * kept)
    assert truncate(loss, [1.0, 2.0, 3.0, 4.0], np.ones(4, bool)) is loss


def test_truncated_function_is_undefined_where_a_kept_and_a_dropped_pair_coincide():
    A = build([0.5, 1.0, 1.0, 2.0], seed=1)
    loss = make_loss("zca", 4)
    full = ground_truth(A, loss)
    with pytest.raises(ValueError, match="kept and the other dropped"):
        cmp.truncated_truth(A, loss, np.array([False, False, True, True]), full)


def _paper_kept(lam, eps):
    """SVD-PI's rule written out: from the largest down, keep while λ_k > ε and the energy ratio
    γ_k = Σ_{i ≥ k (descending: λ_i ≥ λ_k)} λ_i / Σλ < 1 − ε."""
    order = np.argsort(lam)[::-1]
    kept = np.zeros(lam.size, bool)
    total = lam.sum()
    for n, k in enumerate(order):
        gamma = lam[order[: n + 1]].sum() / total
        if not (lam[k] > eps and gamma < 1 - eps):
            break
        kept[k] = True
    return kept


def test_compare_scores_pi_against_its_own_function_and_reports_both_angles():
    lam = np.array([3e-5, 0.2, 0.5, 1.0, 2.0])  # 3e-5 ≤ ε; 0.2 also dropped: γ(0.2) ≥ 1 − ε
    A = build(lam, seed=2)
    res = cmp.compare(A, "zca", ["pi:steps=400", "pi", "analytic"])
    rows = {r["method"]: r for r in res.rows}
    kept = _paper_kept(np.linalg.eigvalsh(A), 1e-4)
    assert kept.sum() == 3  # 2, 1, 0.5 kept; 0.2 brings γ to ≥ 1 − ε
    assert rows["pi"]["kept"] == rows["pi:steps=400"]["kept"] == int(kept.sum())
    # 400 steps: the power-iteration series has converged, pi's gradient is its function's exactly
    assert rows["pi:steps=400"]["angle_deg"] < 1e-7
    assert rows["pi:steps=400"]["angle_full_deg"] > 10
    assert rows["pi"]["angle_deg"] < 1.0  # 19 steps, ratios ≤ 0.5
    assert rows["analytic"]["kept"] == 5 and rows["analytic"]["angle_full_deg"] == rows["analytic"]["angle_deg"]
    for r in res.rows:
        assert set(cmp.ROW_KEYS) <= set(r)


def test_gradient_accuracy_rows_carry_both_angles_and_score_pi_against_its_function():
    from stabkit.studies import gradient_accuracy as ga

    cell = {"family": "lapack", "family_params": {"mode": 3}, "d": 8, "dtype": "float64", "loss": "zca", "seed": 0,
            "methods": ["pi", "analytic"]}
    rows = {r["method"]: r for r in ga.run_cell(cell)}
    # mode 3: λ_min = 1/cond = 1e-4 = ε, so pi drops pairs; scored against its own function
    assert rows["pi"]["kept"] < 8 and rows["pi"]["truth_certified"]
    assert rows["pi"]["angle_deg"] < 1.0 < rows["pi"]["angle_full_deg"]
    assert rows["analytic"]["kept"] == 8 and rows["analytic"]["angle_full_deg"] == rows["analytic"]["angle_deg"]
    assert set(ga.COLUMNS) <= set(rows["pi"]) | {"cell_id"}


def test_gradient_accuracy_report_lists_both_angles_of_a_truncating_method(tmp_path):
    import pandas as pd

    from stabkit.studies import gradient_accuracy as ga

    base = {"family": "separated", "family_params": "", "d": 4, "dtype": "float64", "loss": "zca", "seed": 0,
            "rel_err": 0.1, "norm_ratio": 1.0, "finite": True, "seconds": 0.0, "truth_digits": 30.0,
            "truth_certified": True, "min_abs_gap": 1.0, "min_rel_gap": 0.1, "max_abs_K": 1.0,
            "numerical_rank": 4, "condition": 10.0, "error": None}
    rows = [{**base, "cell_id": f"c{i}", "seed": i, "method": m, "angle_deg": a, "angle_full_deg": f, "kept": k}
            for i in range(3)
            for m, a, f, k in (("pi", 1.0 + i, 80.0 + i, 3), ("analytic", 0.0, 0.0, 4))]
    body = ga.report(pd.DataFrame(rows), {"methods": ["pi", "analytic"], "families": [{"family": "separated"}]}, tmp_path)
    section = body[body.index("## Own function vs the exact loss"):].split("\n## ")[0]
    assert "| separated | 2° / 81° |" in section  # medians of 1, 2, 3 and 80, 81, 82
    assert "analytic" not in section  # it keeps every pair


def _loss_through_forward(spec, loss, A) -> float:
    """L = Σ_i kept_i f(λ̂_i) û_iᵀ G û_i at the (λ̂, Û) the method's own forward returns."""
    lam, U, state = spec.forward(A)
    kept = np.asarray(spec.kept(state, lam), dtype=float)
    G = (loss.weight + loss.weight.T) / 2
    return float((kept * loss.f(lam) * np.einsum("ij,ik,kj->j", U, G, U)).sum())


@pytest.mark.parametrize("text", ["pi-forward", "pi-forward:steps=5,seed=3", "pi-forward:stop=true"])
def test_an_iterating_forward_is_scored_against_its_own_function(text):
    """pi-forward's forward is power iteration from random starts, not the eigendecomposition: its
    truth is the derivative of L at its own (λ̂, Û), checked here by central differences of that loss
    value (h = 1e-6 in float64: ~1e-8 relative), independent of autograd and of its backward."""
    spec = methods.spec(text)
    A = build([0.3, 0.5, 1.0, 1.7, 2.0], seed=4)
    loss = make_loss("zca", 5, seed=0)
    truth = cmp.iterated_truth(A, loss, spec)
    fd = np.zeros_like(A)
    h = 1e-6
    for i in range(5):
        for j in range(i, 5):
            E = np.zeros_like(A)
            E[i, j] = E[j, i] = 1.0 if i == j else 0.5
            fd[i, j] = fd[j, i] = (_loss_through_forward(spec, loss, A + h * E) - _loss_through_forward(spec, loss, A - h * E)) / (2 * h)
    assert np.abs(truth.grad - fd).max() <= 1e-6 * np.abs(fd).max()
    assert truth.digits > 25 and truth.engine == "arb"
    row = {r["method"]: r for r in cmp.compare(A, "zca", [spec, "analytic"]).rows}[str(spec)]
    exact = ground_truth(A, loss).grad
    assert row["angle_deg"] < 1e-6  # its backward is its forward's derivative
    # its forward is not the eigendecomposition: against the exact loss it is far off
    assert row["angle_full_deg"] > 0.5 and np.abs(truth.grad - exact).max() > 1e-3 * np.abs(exact).max()


@pytest.mark.parametrize("A, loss_name, steps, kept", [
    # one step of stop=true keeps 3 pairs of this positive definite matrix and drops three, two with λ̂ < 0
    (build([4.8e-06, 9.1e-06, 2.2e-04, 7.5e-04, 1.26e-03, 2.55e-02], seed=0), "zca", 1, 3),
    # the first stage deflates diag(2, 0) to exactly 0: the second would break down, and stop=true drops it
    (np.diag([2.0, 0.0]), "eigvec", 19, 1),
])
def test_a_stopping_forward_is_scored_whatever_its_stopped_stages_do(A, loss_name, steps, kept):
    """pi-forward:stop=true drops the stages after it stops; they never reach the loss, so neither a
    stopped pair outside the loss's domain nor a stopped stage that breaks down may leave its row
    unscored: the gradient is finite and its own function's truth exists."""
    (row,) = cmp.compare(A, loss_name, [f"pi-forward:stop=true,steps={steps}"]).rows
    assert "error" not in row, row.get("error")
    assert row["kept"] == kept and row["finite"]
    assert row["angle_deg"] < 1e-6 and row["truth_digits"] >= 25


def test_a_method_is_timed_without_the_truth_of_its_own_function(monkeypatch):
    """``seconds`` is the method's evaluation only: the high-precision truth of an iterating forward
    (here made to take 1000 s of compare's clock, which each other reading advances by 1 ms) is not
    charged to it."""
    import types

    clock = [0.0]

    def perf_counter():
        clock[0] += 1e-3
        return clock[0]

    real = cmp.reference.iterated_truth

    def slow(*args, **kwargs):
        clock[0] += 1000.0
        return real(*args, **kwargs)

    monkeypatch.setattr(cmp, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(cmp.reference, "iterated_truth", slow)
    A = build([0.3, 0.5, 1.0, 1.7], seed=2)
    (row,) = cmp.compare(A, "zca", ["pi-forward"]).rows
    assert clock[0] > 1000 and 0 < row["seconds"] < 1 and np.isfinite(row["angle_deg"])


def test_compare_warms_each_method_up_before_timing_it_and_takes_specs_as_is(monkeypatch):
    """The timed call of every method comes after an untimed call on a small matrix (once per
    process and dtype), so the native row no longer carries torch's first-call cost; text and Specs
    give the same rows, and a Spec is evaluated as it is (no parse or bind inside compare)."""
    calls = []
    real = methods.Spec.evaluate

    def recording(self, A, loss):
        calls.append((str(self), A.shape[-1]))
        return real(self, A, loss)

    monkeypatch.setattr(methods.Spec, "evaluate", recording)
    monkeypatch.setattr(cmp, "_WARM", set())
    native = next(name for name in methods.NAMES if methods.get(name).native)
    A = build([1.0, 2.0, 3.0, 5.0, 8.0])
    result = cmp.compare(A, "zca", [native, "taylor:K=3"])
    assert [row["method"] for row in result.rows] == [native, "taylor:K=3"]
    assert calls == [(native, 3), ("taylor:K=3", 3), (native, 5), ("taylor:K=3", 5)]
    assert all(np.isfinite(row["seconds"]) for row in result.rows)
    calls.clear()
    specs = [methods.spec(native), methods.spec("taylor:K=3")]
    from stabkit.methods import _spec

    counted = []
    for name in ("parse", "bind"):
        original = getattr(_spec, name)
        monkeypatch.setattr(_spec, name, lambda *a, _f=original, _n=name, **k: counted.append(_n) or _f(*a, **k))
    again = cmp.compare(A, "zca", specs, truth=result.truth)
    assert counted == [] and calls == [(native, 5), ("taylor:K=3", 5)]  # warm already: no warm-up call
    assert [row["angle_deg"] for row in again.rows] == [row["angle_deg"] for row in result.rows]
    calls.clear()
    cmp.compare(A, "zca", ["taylor:K=3"], dtype="float32")
    assert calls == [("taylor:K=3", 3), ("taylor:K=3", 5)]


def test_rankings_leave_out_rows_scored_against_another_function(tmp_path):
    """A method exact for its own function (pi-forward: power iteration) or for a truncated one (pi,
    dropping pairs) is not the best gradient of the loss: verdict and summary rank the loss's rows."""
    import pandas as pd

    from stabkit.studies import gradient_accuracy as ga

    base = {"family": "separated", "family_params": "", "d": 4, "dtype": "float64", "loss": "zca",
            "rel_err": 0.1, "norm_ratio": 1.0, "finite": True, "seconds": 0.0, "truth_digits": 30.0,
            "truth_certified": True, "min_abs_gap": 1.0, "min_rel_gap": 0.1, "max_abs_K": 1.0,
            "numerical_rank": 4, "condition": 10.0, "error": None}
    rows = [{**base, "cell_id": f"c{i}", "seed": i, "method": m, "angle_deg": a, "angle_full_deg": f, "kept": k}
            for i in range(3)
            for m, a, f, k in (("analytic", 1.0, 1.0, 4), ("pi-forward", 1e-12, 60.0, 4), ("pi", 0.5, 70.0, 3))]
    df = pd.DataFrame(rows)
    verdict = ga.verdicts(df).iloc[0]
    assert verdict["best"] == "analytic" and verdict["ties"] == []
    assert ga.summary(df).startswith("3 scored cells; lowest median angle: analytic (1°)")
    body = ga.report(df, {"methods": ["analytic", "pi-forward", "pi"], "families": [{"family": "separated"}]}, tmp_path)
    section = body[body.index("## Own function vs the exact loss"):].split("\n## ")[0]
    assert "| separated | 0.5° / 70° | 1e-12° / 60° |" in section


def test_nan_rates_count_finite_runs_whose_own_truth_is_short():
    """A finite gradient whose own-function truth has < 12 digits cannot be scored, but it is still a
    run that did not fail: the NaN/Inf rate counts it (1 failure in 4 runs, not 1 in 1)."""
    import pandas as pd

    from stabkit.studies import gradient_accuracy as ga
    from stabkit.studies.gradient_accuracy._scoring import attempted, scored

    base = {"family": "separated", "family_params": "", "d": 4, "dtype": "float64", "loss": "zca",
            "rel_err": 0.1, "norm_ratio": 1.0, "seconds": 0.0, "min_abs_gap": 1.0, "min_rel_gap": 0.1,
            "max_abs_K": 1.0, "numerical_rank": 4, "condition": 10.0, "error": None, "kept": 4}
    rows = []
    for i in range(4):
        cell = {**base, "cell_id": f"c{i}", "seed": i}
        rows.append({**cell, "method": "analytic", "angle_deg": 1.0, "angle_full_deg": 1.0, "finite": True,
                     "truth_digits": 30.0, "truth_certified": True})
        failed = i == 0
        rows.append({**cell, "method": "pi-forward", "angle_deg": math.nan if failed else 1e-12,
                     "angle_full_deg": math.nan if failed else 60.0, "finite": not failed,
                     "truth_digits": 30.0 if failed else 5.0, "truth_certified": failed})
    df = pd.DataFrame(rows)
    ran = attempted(df)
    assert ran.groupby("method")["nonfinite"].mean().to_dict() == {"analytic": 0.0, "pi-forward": 0.25}
    assert len(scored(df).query("method == 'pi-forward'")) == 1  # only the failure has an angle
    assert ga.summary(df).endswith("highest NaN/Inf rate: pi-forward (25%)")


@pytest.mark.parametrize("alias", ["double", "f8", "single", "float", np.float16, "float16", None, "torch.float32"])
def test_compare_takes_the_dtypes_the_command_line_takes(alias):
    """The library refuses numpy's aliases as `stabkit compare --dtype` does (it ran "double" as float64
    and recorded nothing); a numpy float type or dtype is taken and recorded by its name."""
    A = build([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="unsupported dtype"):
        cmp.compare(A, "zca", ["analytic"], dtype=alias)
    for given, name in [(np.float32, "float32"), (np.dtype("float64"), "float64"), ("float32", "float32")]:
        result = cmp.compare(A, "zca", ["analytic"], dtype=given)
        assert result.dtype == name and result.rows[0]["finite"]


def test_one_spec_is_one_method_and_a_truth_of_another_matrix_is_refused():
    """compare(A, "zca", "taylor") said "unknown method 't'" (it iterated the text); a truth of a 2×2
    matrix for a 3×3 A was taken and every row failed on a shape mismatch."""
    A = build([1.0, 2.0, 4.0])
    assert [r["method"] for r in cmp.compare(A, "zca", "taylor:K=3").rows] == ["taylor:K=3"]
    assert [r["method"] for r in cmp.compare(A, "zca", methods.spec("clip")).rows] == ["clip"]
    other = ground_truth(build([1.0, 3.0]), make_loss("zca", 2))
    for truth, needle in ((other, r"of shape \(2, 2\)"), ("x", "got 'x'")):
        with pytest.raises(ValueError, match="truth must be the Truth of this 3×3 matrix .*" + needle):
            cmp.compare(A, "zca", ["analytic"], truth=truth)


def test_entries_too_large_for_the_dtype_are_named_without_a_warning():
    """1e300 in float32 was a RuntimeWarning, then "non-finite entries (0 NaN, 3 Inf)" of a file with no Inf."""
    import re
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape("matrix is too large for float32: max|A| = 3e+300")):
            cmp.compare(np.diag([1e300, 2e300, 3e300]), "zca", ["analytic"], dtype="float32")


def test_a_matrix_too_small_for_the_dtype_is_named():
    """diag(1e-50, 2e-50, 3e-50) in float32 rounded to zeros and was refused as "zca loss needs a positive
    definite matrix: smallest eigenvalue is 0", of a matrix whose smallest is 1e-50. Named as too small;
    float64 still takes it, and a float64 subnormal matrix keeps its own message."""
    import re

    A = np.diag([1e-50, 2e-50, 3e-50])
    with pytest.raises(ValueError, match=re.escape("matrix is too small for float32: max|A| = 3e-50 is below")):
        cmp.compare(A, "zca", ["analytic"], dtype="float32")
    assert cmp.compare(A, "zca", ["analytic"], dtype="float64").rows[0]["rel_err"] < 1e-12
    with pytest.raises(ValueError, match="positive definite"):
        cmp.compare(np.full((2, 2), 1e-320), "zca", ["analytic"], dtype="float32")


def test_a_loss_weight_too_large_for_the_dtype_is_named():
    """A weight G beyond float32's range was taken: the truth (float64 and above) had 26 digits and every
    method's row was NaN, "finite: NO", as if the methods had failed. Refused as the matrix is; the
    same G in float64 runs."""
    import re

    A, G = build([1.0, 2.0, 3.0]), np.eye(3) * 1e39
    with pytest.raises(ValueError, match=re.escape("loss weight is too large for float32: max|G| = 1e+39")):
        cmp.compare(A, "zca", ["analytic"], dtype="float32", weight=G)
    row = cmp.compare(A, "zca", ["analytic"], dtype="float64", weight=G).rows[0]
    assert row["finite"] and row["rel_err"] < 1e-12
