"""gap_probability: the Wilson intervals it reports (the shared ``_stats.wilson``), the Laguerre model, the
MP/Wigner prediction, a tiny run."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from stabkit.studies import _stats
from stabkit.studies import gap_probability as gp


def test_wilson_zero_successes_closed_form():
    n, z = 400, _stats.Z95
    lo, hi = _stats.wilson(0, n)
    assert lo == 0.0
    assert hi == pytest.approx(z ** 2 / (n + z ** 2), rel=1e-12)


def test_wilson_covers_known_p_in_bernoulli_simulation():
    rng = np.random.default_rng(1)
    p, n, reps = 0.03, 2000, 400
    k = rng.binomial(n, p, reps)
    lo, hi = _stats.wilson(k, n)
    coverage = np.mean((lo <= p) & (p <= hi))
    assert 0.92 <= coverage <= 0.98  # nominal 95%


def test_laguerre_model_matches_dense_wishart():
    d, n, m = 5, 12, 6000
    tri = gp.laguerre_eigvals(d, n, m, np.random.default_rng(2))
    dense = gp.dense_wishart_eigvals(d, n, m, np.random.default_rng(3))
    # E tr C = d and E tr C² = d (1 + (d + 1)/n) for C = XᵀX/n
    for lam in (tri, dense):
        assert lam.sum(1).mean() == pytest.approx(d, rel=0.01)
        assert (lam ** 2).sum(1).mean() == pytest.approx(d * (1 + (d + 1) / n), rel=0.02)
    for i in (0, d - 1):
        assert stats.ks_2samp(tri[:, i], dense[:, i]).pvalue > 1e-3
    gaps_t, gaps_d = np.diff(tri, axis=1).min(1), np.diff(dense, axis=1).min(1)
    assert stats.ks_2samp(gaps_t, gaps_d).pvalue > 1e-3


def test_mp_density_normalised_and_cubic_integral():
    gamma = 0.2
    a, b = gp.mp_edges(gamma)
    mass, _ = integrate.quad(lambda x: gp.mp_density(x, gamma), a, b, limit=200)
    mean, _ = integrate.quad(lambda x: x * gp.mp_density(x, gamma), a, b, limit=200)
    cubic, _ = integrate.quad(lambda x: gp.mp_density(x, gamma) ** 3, a, b, limit=400)
    assert mass == pytest.approx(1, abs=1e-8)
    assert mean == pytest.approx(1, abs=1e-8)
    assert gp.mp_cubic_integral(gamma) == pytest.approx(cubic, rel=1e-6)


def test_prediction_inside_measured_interval_gaussian_d16():
    cell = gp.cells({"sources": ["gaussian"], "dims": [16], "taus": [1e-3], "n_matrices": 4000, "chunk_size": 4000,
                     "n_samples": 4096})[0]  # the small-gap regime: P ≈ 0.06
    rows = pd.DataFrame(gp.run_cell(cell))
    r = rows[(rows["event"] == "abs")].iloc[0]
    lo, hi = _stats.wilson(r["count"], r["n"])
    assert r["count"] > 50
    assert lo <= r["pred_mp"] <= hi
    assert r["pred_unfold"] == pytest.approx(r["count"] / r["n"], rel=0.15)  # cruder: unfolded with chunk means


def test_k_event_equals_absolute_event_at_inverse_threshold():
    cell = gp.cells({"sources": ["gaussian"], "dims": [32], "taus": [1e-3], "n_matrices": 800, "chunk_size": 800,
                     "k_threshold": 1e3})[0]
    rows = pd.DataFrame(gp.run_cell(cell))
    assert rows.loc[rows["event"] == "K", "count"].item() == rows.loc[rows["event"] == "abs", "count"].item() > 0


def test_validate_rejects_unknown_key_and_source():
    with pytest.raises(ValueError, match="unknown grid key"):
        gp.validate({"dimz": [4]})
    with pytest.raises(ValueError, match="sources"):
        gp.validate({"sources": ["mnist"]})
    with pytest.raises(ValueError, match="cifar_path: no such file or folder: /nonexistent"):  # every cell failed
        gp.validate({"sources": ["gaussian", "cifar10"], "cifar_path": "/nonexistent"})
    gp.validate({"sources": ["gaussian"], "cifar_path": "/nonexistent"})  # not read without cifar10


def test_tiny_grid_runs_and_reports(tmp_path):
    grid = gp.validate({"sources": ["gaussian"], "dims": [4, 8], "n_matrices": 300, "chunk_size": 200,
                        "reduced": {"gaussian:8": 250}})
    cells = gp.cells(grid)
    assert [c["cell_id"] for c in cells] == ["gaussian-d8-c0", "gaussian-d8-c1", "gaussian-d4-c0", "gaussian-d4-c1"]
    rows = pd.DataFrame([r for c in cells for r in gp.run_cell(c)])
    agg = gp.aggregate(rows)
    assert set(agg.loc[agg["d"] == 8, "n"]) == {250} and set(agg.loc[agg["d"] == 4, "n"]) == {300}
    md = gp.report(rows, grid, tmp_path)
    assert "Wilson" in md and "gap_probability.png" in md
    assert (tmp_path / "gap_probability.png").stat().st_size > 0 and (tmp_path / "k_exceed.png").is_file()
    assert math.isfinite(agg["pred_mp"].dropna().max())


# ---------------------------------------------------------------- CIFAR source: the authors' conventions

import re

import torch

import importlib

gp_report = importlib.import_module("stabkit.studies.gap_probability.report")  # the module (the package exports a function of that name)


@pytest.fixture
def synthetic_pool(monkeypatch):
    """A 40-image uint8 stand-in for the CIFAR-10 pool (no dataset needed); the caches are cleared around it."""
    images = np.random.default_rng(7).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    gp._cifar_moments.cache_clear()
    monkeypatch.setattr(gp, "_cifar_images", lambda path, pool: images[:pool])
    yield images
    gp._cifar_moments.cache_clear()


def _torch_feature_cov(images, idx, w, relu):
    """Independent route: torch conv2d (NCHW, padding 1) on the authors' normalisation, centred covariance."""
    x = torch.tensor(images[idx], dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(gp.CIFAR_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(gp.CIFAR_STD, dtype=torch.float64)[:, None, None]
    weight = torch.tensor(w.T.reshape(w.shape[1], 3, 3, 3))  # (C_out, C_in, kh, kw)
    f = torch.nn.functional.conv2d(x, weight, padding=1)
    if relu:
        f = torch.relu(f)
    f = f.permute(1, 0, 2, 3).reshape(w.shape[1], -1)
    f = f - f.mean(1, keepdim=True)
    return (f @ f.T / f.shape[1]).numpy()


def test_defaults_follow_the_authors_code():
    g = gp.validate({})
    assert g["cifar_relu"] is False and g["cifar_trace_norm"] is False
    assert g["cifar_batch"] == 128 and g["n_samples"] == 128 * 32 * 32 and g["zca_eps"] == 1e-2
    assert "Dang" in gp.__doc__ and "Chen, Ma" not in gp.__doc__
    with pytest.raises(ValueError, match="cifar_channels"):
        gp.validate({"dims": [4, 1024]})


@pytest.mark.parametrize("relu", [False, True])
def test_feature_covariance_matches_torch_conv2d(synthetic_pool, relu):
    w = gp.conv_weights(12, seed=3)
    idx = np.array([1, 5, 22])
    got = gp.feature_covariance(w, idx, pool=40, relu=relu)
    want = _torch_feature_cov(synthetic_pool, idx, w, relu)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_channels_are_nested_across_d_from_one_conv(synthetic_pool):
    w = gp.conv_weights(64, seed=0)
    assert np.std(w) == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)  # Kaiming normal, fan_out, ReLU gain
    idx = np.array([0, 3, 9, 17])
    full = gp.feature_covariance(w, idx, pool=40)
    for d in (4, 16, 32):
        np.testing.assert_array_equal(gp.conv_weights(64, seed=0)[:, :d], w[:, :d])
        np.testing.assert_allclose(gp.feature_covariance(w[:, :d], idx, pool=40), full[:d, :d], rtol=1e-12, atol=1e-15)
    # the study's matrices: one seed → the d = 8 eigenvalues are those of the leading 8×8 block of the d = 32 covariance
    kw = dict(batch=4, pool=40, path="", eps=1e-2, conv_seed=0, channels=64)
    lam8 = gp.cifar_eigvals(8, 3, np.random.default_rng(5), **kw)
    rng = np.random.default_rng(5)
    for k in range(3):
        idx = np.sort(rng.choice(40, size=4, replace=False))
        block = gp.feature_covariance(w, idx, pool=40, eps=1e-2)[:8, :8]
        np.testing.assert_allclose(lam8[k], np.linalg.eigvalsh(block), rtol=1e-12)


@pytest.mark.parametrize("d", [16, 27, 32, 64])
def test_pre_relu_eigenvalues_at_eps_count_is_d_minus_27(synthetic_pool, d):
    eps = 1e-2
    lam = gp.cifar_eigvals(d, 4, np.random.default_rng(1), batch=4, pool=40, path="", eps=eps, conv_seed=0, channels=64)
    assert (gp.count_at(lam, eps) == max(d - 27, 0)).all()
    gaps = np.diff(lam, axis=1).min(1)
    if d > 27:
        assert (gaps < 1e-12).all()  # below every τ of the study: P(min gap < τ) = 1 by construction
    else:
        assert (gaps > 1e-12).all()
    relu = gp.cifar_eigvals(d, 2, np.random.default_rng(1), batch=4, pool=40, path="", eps=eps, conv_seed=0, channels=64,
                            relu=True)
    assert (gp.count_at(relu, eps) == 0).all()  # ReLU is not linear: no rank bound


def test_pre_relu_rank_count_on_cifar10():
    """On the real CIFAR-10 archive (data.default_path(), present in CI as for tests/test_data.py)."""
    gp._cifar_moments.cache_clear()
    lam = gp.cifar_eigvals(32, 3, np.random.default_rng(0), batch=4, pool=64, path="", eps=1e-2, conv_seed=0, channels=512)
    assert (gp.count_at(lam, 1e-2) == 5).all()
    assert (np.abs(lam[:, 5:] - 1e-2) > 1e-9).all()  # the other 27 are genuinely above ε
    gp._cifar_moments.cache_clear()


# ---------------------------------------------------------------- report: numbers and Markdown


def test_interval_rounded_outward():
    assert _stats.round_down(0.0037123) == "0.0037" and _stats.round_up(0.0037123) == "0.0038"
    # near 1 the digits count from 1 − x: 1 − 0.999512 = 0.000488 keeps 2 significant digits
    assert _stats.round_down(0.999512) == "0.99951" and _stats.round_up(0.999512) == "0.99952"
    assert _stats.round_down(0.0) == "0" and _stats.round_up(1.0) == "1"
    # the old ".2g" printed k = 9970 of 10000 as "0.997 [1, 1]": an interval above its own p̂
    lo, hi = _stats.wilson(9970, 10000)
    text = gp_report.interval_text(0.997, lo, hi)
    assert text.startswith("0.997 [")
    plo, phi = (float(x) for x in re.match(r".*\[(.*), (.*)\]", text).groups())
    assert plo <= lo < 0.997 < hi <= phi and plo > 0.99
    rng = np.random.default_rng(0)
    n = rng.integers(1, 100000, 3000)
    k = rng.binomial(n, rng.uniform(0, 1, 3000) ** 4)
    los, his = _stats.wilson(k, n)
    for l, h in zip(los, his):
        assert float(_stats.round_down(l)) <= l and float(_stats.round_up(h)) >= h


def test_informative_points_and_chance_range():
    grid = gp.validate({})
    s = pd.DataFrame({"source": ["gaussian", "gaussian", "gaussian", "cifar10", "gaussian"], "d": [4, 8, 16, 64, 32],
                      "count": [0, 0, 1000, 1000, 1000], "n": [1000] * 5,
                      "pred_mp": [0.002, 0.004, 0.9995, 1.0, 0.99]})
    s = gp_report.mark_rank_deficient(s, grid)
    assert s["rank_deficient"].tolist() == [False, False, False, True, False]  # cifar10 pre-ReLU, d = 64 > 27
    # p̂ = 0 & pred < 3/N: out; p̂ = 0 & pred ≥ 3/N: in; both ≈ 1: out; rank-deficient: out; p̂ = 1 & pred = 0.99: in
    assert gp_report.informative(s, "pred_mp").tolist() == [False, True, False, False, True]
    mean, lo, hi = gp_report.chance_range(40)
    pmf = [math.comb(40, j) * 0.95 ** j * 0.05 ** (40 - j) for j in range(41)]
    cdf = np.cumsum(pmf)
    assert mean == pytest.approx(38.0)
    assert lo == int(np.argmax(cdf >= 0.025)) and hi == int(np.argmax(cdf >= 0.975))


def _columns(line):
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


def test_markdown_escapes_pipes_and_tables_have_consistent_columns(tmp_path):
    from stabkit._markdown import markdown_table

    t = markdown_table(pd.DataFrame({"max |K̃|": ["|K̃| > 1", "x"], "b": [1, 2]}))
    assert {_columns(line) for line in t.splitlines()} == {2}
    grid = gp.validate({"sources": ["gaussian"], "dims": [4, 8], "n_matrices": 300, "chunk_size": 150})
    rows = pd.DataFrame([r for c in gp.cells(grid) for r in gp.run_cell(c)])
    md = gp.report(rows, grid, tmp_path)
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(_columns(line))
        elif current:
            tables.append(current)
            current = []
    assert len(tables) >= 5
    for cols in tables:
        assert len(set(cols)) == 1, cols
    assert "π²/12" not in md and "median over the 2 chunks of the chunk medians" in md
    assert "Dang" in md and "Deviations" in md


@pytest.mark.parametrize("dims, relu", [([8, 32], False), ([8, 16], False), ([8, 32], True)],
                         ids=["d32-pre-relu", "d16-pre-relu", "d32-relu"])
def test_rank_deficiency_is_reported_only_where_a_point_has_it(synthetic_pool, tmp_path, dims, relu):
    """The rank section, the findings' scope and the white squares appear only when some pre-ReLU CIFAR
    point has d > 27 (with dims ≤ 27 the report used to print "larger d are rank-deficient")."""
    grid = gp.validate({"sources": ["cifar10"], "dims": dims, "n_matrices": 4, "chunk_size": 4, "cifar_batch": 4,
                        "cifar_pool": 40, "cifar_channels": 32, "cifar_relu": relu})
    rows = pd.DataFrame([r for c in gp.cells(grid) for r in gp.run_cell(c)])
    md = gp.report(rows, grid, tmp_path)
    expected = dims[-1] > 27 and not relu
    assert ("### Rank of the pre-ReLU CIFAR-10 features" in md) == expected
    assert ("larger d are rank-deficient" in md) == expected
    assert ("White-filled squares" in md) == expected


def test_gaussian_ratio_line_counts_only_informative_points():
    """The Gaussian measured/predicted line used every point with ≥ 20 events, p̂ = 1 points included that
    the report's own rule calls uninformative; it now uses the informative ones and counts the rest."""
    n = 1000
    count = [100, 200, 500, n, n, 10]  # three informative, two p̂ = 1 with prediction > 1 − 3/N, one < 20 events
    pred = [0.125, 0.2, 0.5, 0.9999, 0.9995, 0.01]
    agg = pd.DataFrame({"source": "gaussian", "d": [4, 8, 16, 32, 64, 128], "event": "abs", "tau": 0.01,
                        "count": count, "n": n, "pred_mp": pred, "pred_unfold": np.nan})
    agg["p"] = agg["count"] / agg["n"]
    agg["lo"], agg["hi"] = _stats.wilson(agg["count"], agg["n"])
    agg = gp_report.mark_rank_deficient(agg, gp.validate({}))
    assert gp_report.informative(agg, "pred_mp").tolist() == [True, True, True, False, False, True]
    line = [x for x in gp_report._prediction_section(agg) if x.startswith("- Gaussian, absolute gap")]
    assert len(line) == 1
    line = line[0]
    # ratios of the informative points: 0.8, 1.0, 1.0; worst at d = 4
    assert "the 3 informative points with ≥ 20 events (2 more with ≥ 20 events are uninformative" in line
    assert "ranges 0.80–1.00" in line and "d = 4," in line
    lo, hi = _stats.wilson(100, n)
    # rounded outward: the printed interval contains the computed one
    assert f"{math.floor(100 * lo / 0.125) / 100:.2f}–{math.ceil(100 * hi / 0.125) / 100:.2f}, n = 1000 matrices" in line


def test_pooled_means_weight_chunks_by_their_matrices():
    """11 Gaussian matrices in chunks of 10 and 1: the reported mean λ_max / λ_min / eigenvalue and
    the mean predictions are those of the 11 matrices, recomputed here from the same seeded draws.
    Before: an unweighted mean of the two chunk means (λ_max 1.22 where the 11 matrices give 1.40)."""
    grid = gp.validate({"sources": ["gaussian"], "dims": [2], "taus": [0.05], "n_matrices": 11, "chunk_size": 10,
                        "n_samples": 3})
    cells = gp.cells(grid)
    assert [c["size"] for c in cells] == [10, 1]
    rows = pd.DataFrame([r for c in cells for r in gp.run_cell(c)])
    lam = np.concatenate([gp.laguerre_eigvals(2, 3, c["size"], np.random.default_rng(np.random.SeedSequence([0, 2, c["chunk"], 0])))
                          for c in cells])
    gaps = np.diff(lam, axis=1)
    for r in gp.aggregate(rows).itertuples():
        assert r.n == 11
        assert r.lam_max == pytest.approx(lam[:, -1].mean(), rel=1e-12)
        assert r.lam_min == pytest.approx(lam[:, 0].mean(), rel=1e-12)
        assert r.lam_mean == pytest.approx(lam.mean(), rel=1e-12)
        if r.event == "abs":  # the empirical unfolding: per chunk from that chunk's mean gap, then the pooled mean
            per_chunk = [1 - math.exp(-gp.unfolded_expected_small_gaps(0.05, gaps[sl].mean(0))) for sl in (slice(0, 10), slice(10, 11))]
            assert r.pred_unfold == pytest.approx((10 * per_chunk[0] + per_chunk[1]) / 11, rel=1e-12)


def test_finding_gives_each_endpoint_its_own_n_when_a_point_is_reduced(tmp_path):
    """d = 4 pools 300 matrices, d = 8 (``reduced``) 100: the finding names both sizes. Before: "(N = 100
    each)", the reduced size claimed for both points."""
    grid = gp.validate({"sources": ["gaussian"], "dims": [4, 8], "taus": [0.05], "n_matrices": 300, "chunk_size": 300,
                        "reduced": {"gaussian:8": 100}, "n_samples": 64})
    rows = pd.DataFrame([r for c in gp.cells(grid) for r in gp.run_cell(c)])
    assert rows[rows["event"] == "abs"].groupby("d")["n"].sum().to_dict() == {4: 300, 8: 100}
    finding = [line for line in gp.report(rows, grid, tmp_path).splitlines() if line.startswith("- gaussian")][0]
    assert "at d = 4 and" in finding and "(N = 300 and 100)" in finding and "each" not in finding


def test_cifar_data_that_does_not_load_is_refused_before_the_first_cell(tmp_path):
    """A batch file cut short passed the check (the path exists) and failed every cifar10 cell alike;
    now one line naming the file, exit 2, nothing written. Without cifar10 sources it is not read."""
    from typer.testing import CliRunner

    from stabkit.cli.main import app
    from tests.conftest import write_tiny_batches

    folder = write_tiny_batches(tmp_path)
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:500])
    study = tmp_path / "gp.toml"

    def check(sources, out):
        study.write_text(f'[study]\nname = "gp"\nkind = "gap_probability"\n[grid]\nsources = {sources}\n'
                         f'dims = [4]\ncifar_path = "{folder}"\n')
        return CliRunner().invoke(app, ["run", str(study), "--out", str(out), "--max-cells", "0", "--no-progress"])

    assert check('["gaussian"]', tmp_path / "gaussian").exit_code == 0
    result = check('["gaussian", "cifar10"]', tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.startswith("error: gap_probability: cifar_path: "), result.output
    assert "data_batch_2" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_only_the_train_split_the_cells_read_is_checked_and_decoded_before_the_first_cell(tmp_path, monkeypatch):
    """The gap study samples only CIFAR-10's train split: a damaged test split does not stop it (a
    training study, which reads both, refuses it), and the check does not decode the test split."""
    from typer.testing import CliRunner

    from stabkit import data
    from stabkit.cli.main import app
    from tests.conftest import write_tiny_batches

    folder = write_tiny_batches(tmp_path)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:500])
    with pytest.raises(ValueError, match="test_batch"):
        data.load_cifar10(folder, "test", per_class=None)
    loaded = []
    real = data.load_cifar10
    monkeypatch.setattr(data, "load_cifar10", lambda path, split="train", **kw: loaded.append(split) or real(path, split, **kw))
    study = tmp_path / "gp.toml"
    study.write_text(f'[study]\nname = "gp"\nkind = "gap_probability"\n[grid]\nsources = ["cifar10"]\n'
                     f'dims = [4]\ncifar_path = "{folder}"\n')
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "out"), "--max-cells", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert loaded == ["train"]
