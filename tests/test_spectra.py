"""Seeded test-matrix generators against their closed forms."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabkit import spectra
from stabkit.errors import InputError

EPS = np.finfo(np.float64).eps
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECTRAL = [f for f in spectra.FAMILIES if f != "wishart"]


def _documented_basis(family, d, seed):
    """Q rebuilt from the documented seeding recipe (for families that draw nothing else)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, d, spectra.FAMILY_STREAMS[family]]))
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.where(np.diagonal(R) < 0, -1.0, 1.0)


# ------------------------------------------------------------------ all families


@pytest.mark.parametrize("family", list(spectra.FAMILIES))
@pytest.mark.parametrize("d", [2, 7, 33])
def test_shape_dtype_symmetry(family, d):
    s64 = spectra.make(family, d, seed=5)
    s32 = spectra.make(family, d, seed=5, dtype="float32")
    assert s64.matrix.shape == (d, d) and s64.matrix.dtype == np.float64
    assert s32.matrix.shape == (d, d) and s32.matrix.dtype == np.float32
    assert np.array_equal(s64.matrix, s64.matrix.T) and np.array_equal(s32.matrix, s32.matrix.T)
    assert np.array_equal(s32.matrix, s64.matrix.astype(np.float32))  # float32 = rounded float64
    assert s64.family == family and s64.params["d"] == d and s64.params["seed"] == 5
    if family == "wishart":
        assert s64.eigenvalues is None and s64.basis is None
    else:
        assert s64.eigenvalues.dtype == np.float64 and s64.eigenvalues.shape == (d,)
        assert (np.diff(s64.eigenvalues) >= 0).all()
        assert s32.eigenvalues.dtype == np.float64 and s32.basis.dtype == np.float64


def test_defaults_recorded_in_params():
    assert spectra.make("separated", 4).params == {"d": 4, "seed": 0, "cond": 10.0}
    assert spectra.make("cluster", 4).params == {"d": 4, "seed": 0, "k": 2, "delta": 1e-6}
    assert spectra.make("degenerate", 4).params == {"d": 4, "seed": 0, "m": 2}
    assert spectra.make("rank_deficient", 9).params == {"d": 9, "seed": 0, "r": 4, "n": None}
    assert spectra.make("lapack", 4).params == {"d": 4, "seed": 0, "mode": 3, "cond": 1e4}
    assert spectra.make("wishart", 5).params == {"d": 5, "seed": 0, "aspect": 0.5, "n": 10}
    assert spectra.make("powerlaw", 4).params == {"d": 4, "seed": 0, "alpha": 1.0}
    assert spectra.make("wishart", 30, aspect=0.1).params["n"] == 300  # no extra sample from rounding


@settings(FAST)
@given(family=st.sampled_from(SPECTRAL), d=st.integers(2, 40), seed=st.integers(0, 2**32))
def test_matrix_is_the_rounded_construction(family, d, seed):
    s = spectra.make(family, d, seed=seed)
    lam, Q = s.eigenvalues, s.basis
    scale = np.abs(lam).max()
    assert np.abs(Q.T @ Q - np.eye(d)).max() <= 10 * d * EPS
    assert np.abs(s.matrix - (Q * lam) @ Q.T).max() <= 10 * d * EPS * scale
    assert np.abs(np.linalg.eigvalsh(s.matrix) - lam).max() <= 1e-13 * scale
    assert scale == pytest.approx(1.0, abs=1e-6) or family == "rank_deficient"


@pytest.mark.parametrize("family", SPECTRAL)
def test_eigenvalues_match_at_d128(family):
    s = spectra.make(family, 128, seed=2)
    scale = np.abs(s.eigenvalues).max()
    assert np.abs(np.linalg.eigvalsh(s.matrix) - s.eigenvalues).max() <= 1e-13 * scale


@pytest.mark.parametrize("family", list(spectra.FAMILIES))
def test_seeds(family):
    a, b = spectra.make(family, 12, seed=3), spectra.make(family, 12, seed=3)
    assert np.array_equal(a.matrix, b.matrix)
    assert not np.array_equal(a.matrix, spectra.make(family, 12, seed=4).matrix)
    np.random.seed(123)  # global state must not matter
    assert np.array_equal(a.matrix, spectra.make(family, 12, seed=3).matrix)


@pytest.mark.parametrize("family", ["separated", "cluster", "degenerate", "powerlaw"])
def test_basis_follows_the_documented_seed_recipe(family):
    s = spectra.make(family, 9, seed=11)
    assert np.array_equal(s.basis, _documented_basis(family, 9, 11))
    assert (np.diagonal(np.linalg.qr(s.basis)[1]) != 0).all()


def test_basis_is_haar_not_raw_qr():
    """Haar on O(3): each entry has mean 0, variance 1/3, and det = ±1 equally often. Raw
    Householder QR (no sign fix) has Q[0, 0] < 0 always."""
    qs = np.array([spectra.make("separated", 3, seed=s).basis for s in range(400)])
    assert abs(qs[:, 0, 0].mean()) < 0.1 and abs(qs[:, 2, 1].mean()) < 0.1
    assert np.mean(qs[:, 0, 0] ** 2) == pytest.approx(1 / 3, abs=0.06)
    assert abs(np.mean(np.sign(np.linalg.det(qs)))) < 0.2


def test_d1024_costs_one_qr_and_no_eigensolver(monkeypatch):
    """make at d = 1024 is one QR (the Haar basis) and one matrix product: no eigensolver and no
    second factorisation. Counted, not timed (its speed is then LAPACK's; a loaded machine failed
    a timed version)."""
    calls = []
    for name in ("qr", "eigh", "eigvalsh", "eig", "eigvals", "svd", "solve", "inv", "cholesky"):
        real = getattr(np.linalg, name)
        monkeypatch.setattr(np.linalg, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    s = spectra.make("cluster", 1024, seed=1)
    assert s.matrix.shape == (1024, 1024) and calls == ["qr"]


# ------------------------------------------------------------------ family closed forms


@pytest.mark.parametrize("d,cond", [(2, 10.0), (17, 10.0), (40, 1e6)])
def test_separated_closed_form(d, cond):
    lam = spectra.make("separated", d, cond=cond).eigenvalues
    expected = [1 / cond + (i - 1) / (d - 1) * (1 - 1 / cond) for i in range(1, d + 1)]
    np.testing.assert_allclose(lam, expected, rtol=4 * EPS, atol=0)


@settings(FAST)
@given(d=st.integers(2, 60), k=st.integers(2, 8), log_delta=st.floats(-14, -5), seed=st.integers(0, 99))
def test_cluster_gaps_are_delta_relative(d, k, log_delta, seed):
    k = min(k, d)
    delta = 10.0**log_delta
    lam = spectra.make("cluster", d, seed=seed, k=k, delta=delta).eigenvalues
    gaps = np.diff(lam)
    assert (gaps > 0).all()  # k distinct float64 values, even at delta = 1e-14
    small = np.flatnonzero(gaps < 1e-3)
    assert small.size == k - 1 and (np.diff(small) == 1).all()
    c = small[0] if k > 1 else 0
    lam_c = lam[c]
    # each gap is λ_c·delta up to the rounding of the two neighbours (≤ ulp(2λ_c) in all)
    np.testing.assert_allclose(gaps[small], lam_c * delta, rtol=0, atol=4 * EPS * lam_c)
    assert abs(c + (k - 1) / 2 - (d - 1) / 2) <= 1  # mid-spectrum
    others = np.delete(gaps, small)
    if others.size:
        assert others.min() >= 0.5 * 0.9 / (d - k)  # the rest separated


def test_cluster_at_1e14():
    lam = spectra.make("cluster", 8, k=4, delta=1e-14).eigenvalues
    assert np.unique(lam).size == 8
    members = lam[2:6]
    assert np.all(np.abs(np.diff(members) / members[0] - 1e-14) <= 0.05e-14)


@pytest.mark.parametrize("d,m", [(2, 2), (9, 3), (30, 30), (31, 5)])
def test_degenerate_exact_multiplicity(d, m):
    s = spectra.make("degenerate", d, m=m)
    values, counts = np.unique(s.eigenvalues, return_counts=True)
    assert sorted(counts)[-1] == m and (np.sort(counts)[:-1] == 1).all() and values.size == d - m + 1
    repeated = values[counts == m][0]
    assert np.sum(np.abs(np.linalg.eigvalsh(s.matrix) - repeated) <= 1e-13) == m


@pytest.mark.parametrize("d,r", [(2, 1), (10, 3), (33, 33), (64, None)])
def test_rank_deficient_zeros(d, r):
    s = spectra.make("rank_deficient", d, r=r)
    r = d // 2 if r is None else r
    assert np.count_nonzero(s.eigenvalues == 0) == d - r and (s.eigenvalues[d - r:] > 0).all()
    np.testing.assert_array_equal(s.eigenvalues[d - r:], [1.0] if r == 1 else np.linspace(0.1, 1, r))
    ev = np.linalg.eigvalsh(s.matrix)
    assert np.sum(np.abs(ev) <= 1e-14) == d - r


def test_rank_deficient_sample_covariance():
    d, n = 64, 24
    s = spectra.make("rank_deficient", d, seed=1, n=n)
    assert s.params["r"] == n and s.params["n"] == n
    assert np.count_nonzero(s.eigenvalues == 0) == d - n
    scale = s.eigenvalues.max()
    assert np.sum(np.abs(np.linalg.eigvalsh(s.matrix)) <= 1e-14 * scale) == d - n
    # trace(X Xᵀ/n)/d = χ²_{nd}/(nd): mean 1, sd ≈ 0.03
    assert np.trace(s.matrix) / d == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("d", [2, 5, 40])
@pytest.mark.parametrize("cond", [1.0, 10.0, 1e8])
def test_lapack_modes_1_to_3_exact(d, cond):
    """Bit for bit the closed forms (mode 4's rounding: test_lapack_modes_against_the_exact_closed_forms)."""
    n = d
    closed = {
        1: [1.0] + [1 / cond] * (n - 1),
        2: [1.0] * (n - 1) + [1 / cond],
        3: [cond ** (-(i - 1) / (n - 1)) for i in range(1, n + 1)],
    }
    for mode, D in closed.items():
        lam = spectra.make("lapack", d, mode=mode, cond=cond).eigenvalues
        np.testing.assert_array_equal(lam, np.sort(D))


def test_lapack_random_modes():
    cond, d = 1e6, 300
    lam5 = spectra.make("lapack", d, seed=1, mode=5, cond=cond).eigenvalues
    lam6 = spectra.make("lapack", d, seed=1, mode=6, cond=cond).eigenvalues
    assert (lam5 > 1 / cond).all() and (lam5 <= 1).all()
    assert (lam6 > 1 / cond).all() and (lam6 <= 1).all()
    u5 = -np.log(lam5) / math.log(cond)  # uniform(0, 1) if log-uniform
    u6 = (lam6 - 1 / cond) / (1 - 1 / cond)  # uniform(0, 1) if uniform
    grid = np.arange(1, d + 1) / d
    assert np.abs(np.sort(u5) - grid).max() < 0.1  # Kolmogorov–Smirnov distance (95%: 0.078)
    assert np.abs(np.sort(u6) - grid).max() < 0.1
    assert not np.array_equal(lam5, spectra.make("lapack", d, seed=2, mode=5, cond=cond).eigenvalues)


@pytest.mark.parametrize("aspect", [0.5, 0.25])
def test_wishart_marchenko_pastur_support(aspect):
    d = 512
    s = spectra.make("wishart", d, seed=0, aspect=aspect)
    assert s.params["n"] == math.ceil(d / aspect)
    ev = np.linalg.eigvalsh(s.matrix)
    lo, hi = (1 - math.sqrt(aspect)) ** 2, (1 + math.sqrt(aspect)) ** 2
    assert ev[0] == pytest.approx(lo, abs=0.05) and ev[-1] == pytest.approx(hi, abs=0.1)
    assert ev.mean() == pytest.approx(1.0, abs=0.02)  # MP mean
    assert np.mean(ev ** 2) == pytest.approx(1 + aspect, abs=0.05)  # MP second moment


@settings(FAST)
@given(d=st.integers(2, 200), alpha=st.floats(0.05, 4.0))
def test_powerlaw_ratios(d, alpha):
    lam = spectra.make("powerlaw", d, alpha=alpha).eigenvalues
    i = np.arange(1, d + 1, dtype=np.float64)
    np.testing.assert_allclose(lam[::-1] / lam.max(), [k ** -alpha for k in range(1, d + 1)], rtol=1e-14)
    np.testing.assert_allclose(lam[::-1][1:] / lam[::-1][:-1], ((i[1:]) / i[:-1]) ** -alpha, rtol=1e-13)
    assert lam.max() == 1.0


# ------------------------------------------------------------------ bad input

BAD = [
    (("nope", 4), {}, r"unknown spectrum family 'nope' \(allowed: separated, cluster, degenerate, "
                      r"rank_deficient, lapack, wishart, powerlaw\)"),
    (("cluster", 4), {"m": 2}, r"unknown parameter 'm' for spectrum family 'cluster' \(allowed: k, delta\)"),
    (("lapack", 4), {"alpha": 2}, r"unknown parameter 'alpha' .*\(allowed: mode, cond\)"),
    (("separated", 1), {}, r"d=1 is impossible \(need 2 <= d <= 11585"),
    (("separated", 2.5), {}, r"d must be an integer"),
    (("separated", 4, -1), {}, r"seed=-1 is impossible"),
    (("separated", 4, 0, "float16"), {}, r"dtype must be 'float32' or 'float64', got 'float16'"),
    (("separated", 4, 0, "int64"), {}, r"dtype must be 'float32' or 'float64'"),
    # a dtype numpy cannot read, or None, gave a float64 matrix without a word; aliases as the CLI refuses them
    (("separated", 4, 0, "foo"), {}, r"dtype must be 'float32' or 'float64', got 'foo'"),
    (("separated", 4, 0, None), {}, r"dtype must be 'float32' or 'float64', got None"),
    (("separated", 4, 0, object()), {}, r"dtype must be 'float32' or 'float64', got <object"),
    (("separated", 4, 0, "f4"), {}, r"dtype must be 'float32' or 'float64', got 'f4'"),
    (("separated", 4), {"cond": 0.5}, r"cond=0.5 is impossible \(need cond > 1\)"),
    (("lapack", 4), {"cond": 0.5}, r"lapack: cond=0.5 is impossible \(need cond >= 1\)"),
    (("lapack", 4), {"cond": math.inf}, r"cond must be finite"),
    (("lapack", 4), {"mode": 0}, r"mode=0 is impossible \(need 1 <= mode <= 6\)"),
    (("lapack", 4), {"mode": 7}, r"mode=7 is impossible \(need 1 <= mode <= 6\)"),
    (("cluster", 4), {"k": 5}, r"k=5 is impossible \(need 2 <= k <= 4 for d=4\)"),
    (("cluster", 4), {"delta": 0.0}, r"delta=0.0 is impossible \(need delta > 0\)"),
    (("cluster", 4), {"delta": -1e-3}, r"delta=-0.001 is impossible"),
    (("cluster", 10), {"delta": 0.5}, r"delta=0.5 is too large"),
    (("degenerate", 3), {"m": 4}, r"m=4 is impossible \(need 2 <= m <= 3 for d=3\)"),
    (("degenerate", 3), {"m": 1}, r"m=1 is impossible"),
    (("rank_deficient", 3), {"r": 4}, r"r=4 is impossible \(need 1 <= r <= 3 for d=3\)"),
    (("rank_deficient", 3), {"r": 0}, r"r=0 is impossible"),
    (("rank_deficient", 3), {"n": 3}, r"n=3 is impossible \(need 1 <= n <= 2"),
    (("rank_deficient", 3), {"n": 1, "r": 1}, r"not both"),
    (("wishart", 3), {"aspect": 0}, r"aspect=0 is impossible \(need aspect > 0\)"),
    (("powerlaw", 3), {"alpha": -1}, r"alpha=-1 is impossible \(need alpha > 0\)"),
    (("powerlaw", 3), {"alpha": "big"}, r"alpha must be a real number"),
    (("powerlaw", 1000), {"alpha": 500.0}, r"alpha=500.0 is too large for d=1000"),
    (("cluster", 4), {"k": 2.5}, r"k must be an integer"),
    # numpy scalars and fractions are Reals too (they were truncated: 8.5 built d = 8)
    (("cluster", np.float32(8.5)), {}, r"d must be an integer"),
    (("degenerate", 8), {"m": np.float32(2.5)}, r"m must be an integer"),
    (("lapack", 8), {"mode": np.float16(3.9)}, r"mode must be an integer"),
    (("separated", 8, np.float32(1.7)), {}, r"seed must be an integer"),
    (("cluster", 8), {"k": Fraction(5, 2)}, r"k must be an integer"),
    # refused before anything is allocated (2**31 used to get the process killed)
    (("separated", 2**31), {}, r"d=2147483648 is impossible \(need 2 <= d <= 11585: a d×d matrix of at most"),
]


@pytest.mark.parametrize("args,kwargs,message", BAD)
def test_bad_input_raises_inputerror_naming_the_problem(args, kwargs, message):
    """InputError, the project's bad-input type (a ValueError, so ``except ValueError`` still works):
    make raised a plain ValueError, and turned dtype_name's InputError back into one."""
    with pytest.raises(InputError, match=message) as info:
        spectra.make(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_dtype_objects_accepted():
    assert spectra.make("separated", 3, 0, np.float64).matrix.dtype == np.float64
    assert spectra.make("separated", 3, 0, np.float32).matrix.dtype == np.float32
    assert spectra.make("separated", 3, 0, np.dtype("float32")).matrix.dtype == np.float32


def test_label_names_the_family_parameters_that_make_accepts():
    """The label shows d, seed and the family's own parameters as set, not what the family derives
    (wishart's sample count n) nor an unset option (rank_deficient's n)."""
    assert spectra.make("wishart", 6, seed=1).label == "wishart d=6 seed=1 aspect=0.5"
    assert spectra.make("rank_deficient", 6, seed=2).label == "rank_deficient d=6 seed=2 r=3"
    assert spectra.make("cluster", 5, delta=1e-8).label == "cluster d=5 seed=0 k=2 delta=1e-08"


def _rebuilt(s):
    """The matrix that the label's own text builds (as compare reads a spectrum given on the command line)."""
    from stabkit.cli._common import parse_params
    family, d, seed, *rest = s.label.split()
    assert (family, d, seed) == (s.family, f"d={s.params['d']}", f"seed={s.params['seed']}")
    return spectra.make(s.family, s.params["d"], seed=s.params["seed"], **parse_params(rest))


def test_a_sample_covariance_label_names_n_not_the_rank_it_derives():
    s = spectra.make("rank_deficient", 6, seed=1, n=3)
    assert s.label == "rank_deficient d=6 seed=1 n=3"  # make refuses r and n together
    assert np.array_equal(_rebuilt(s).matrix, s.matrix)


@pytest.mark.parametrize("family, params", [("separated", {"cond": 1.0000001}), ("cluster", {"k": 3, "delta": 1.23456789e-7}),
                                            ("lapack", {"mode": 5, "cond": 12345678.9}), ("powerlaw", {"alpha": 1 / 3}),
                                            ("wishart", {"aspect": 0.3}), ("degenerate", {"m": 3})])
def test_a_label_rebuilds_its_matrix_exactly(family, params):
    """No rounding of the values: '%g' would show cond=1.0000001 as cond=1, a value lapack refuses."""
    s = spectra.make(family, 6, seed=1, **params)
    assert np.array_equal(_rebuilt(s).matrix, s.matrix), s.label


@settings(FAST)
@given(family=st.sampled_from(list(spectra.FAMILIES)), d=st.integers(2, 30), seed=st.integers(0, 2**32))
def test_every_family_is_symmetric_reproducible_and_semidefinite_where_it_should_be(family, d, seed):
    """For every family, d and seed: exactly symmetric, the same bits from the same seed, float32 the
    rounded float64; a Wishart sample X Xᵀ/n is positive semi-definite (to d·eps·‖A‖) and the given
    eigenvalues of the other families are ascending."""
    s = spectra.make(family, d, seed=seed)
    assert np.array_equal(s.matrix, s.matrix.T)
    assert np.array_equal(spectra.make(family, d, seed=seed).matrix, s.matrix)
    assert np.array_equal(spectra.make(family, d, seed=seed, dtype="float32").matrix, s.matrix.astype(np.float32))
    if family == "wishart":
        lam = np.linalg.eigvalsh(s.matrix)
        assert lam.min() >= -10 * d * EPS * lam.max()
    else:
        assert (np.diff(s.eigenvalues) >= 0).all()


# ------------------------------------------------------------------ audit fixes (fix-spectra)


@pytest.mark.parametrize("family,d,kwargs,message", [
    ("separated", 4, {"cond": 10**400}, r"separated: cond must be finite, got 1000"),
    ("lapack", 4, {"cond": 10**400}, r"lapack: cond must be finite"),
    ("wishart", 4, {"aspect": 1e-310}, r"wishart: aspect=1e-310 is too small for d=4"),
    ("wishart", 4, {"aspect": Fraction(1, 10**400)}, r"wishart: aspect=Fraction"),  # rounds to 0
])
def test_overflowing_parameters_raise_valueerror_not_overflowerror(family, d, kwargs, message):
    """A Python int beyond float64 (cond=10**400) and an aspect whose d/aspect overflows raised a bare
    OverflowError from float()/math.ceil; now a one-line InputError naming the parameter."""
    with pytest.raises(InputError, match=message):
        spectra.make(family, d, **kwargs)


@pytest.mark.parametrize("family", ["cluster", "rank_deficient", "lapack", "wishart"])
def test_matrix_does_not_depend_on_the_callers_blas_threads(family):
    """At d = 300 OpenBLAS's QR and product round differently on 1 and 2 threads; make runs them on one
    BLAS thread, so the caller's setting (a study cell's one thread, compare's default) does not matter."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        one = spectra.make(family, 300, seed=1).matrix
    with threadpool_limits(limits=2, user_api="blas"):
        two = spectra.make(family, 300, seed=1).matrix
    assert np.array_equal(one, two)


def test_cluster_delta_is_relative_absolute_gap_is_055_delta_at_even_d():
    for d in (4, 8, 16, 32, 64):
        lam = spectra.make("cluster", d, delta=1e-4).eigenvalues
        c = (d - 2) // 2
        assert lam[c] == pytest.approx(0.55, rel=1e-15)
        assert lam[c + 1] - lam[c] == pytest.approx(0.55e-4, rel=1e-9)


def test_cluster_centre_is_055_when_d_minus_k_is_even_and_positive_and_1_at_k_equal_d():
    """The module docstring's λ_c: 0.55 to one ulp for every even d − k > 0 up to d = 64; the
    docstring said "whenever d − k is even", but k = d (d − k = 0) leaves the one-point grid [1]."""
    for d in range(3, 65):
        for k in range(2, d + 1):
            if (d - k) % 2:
                continue
            lam_c = spectra.make("cluster", d, k=k, delta=1e-9).eigenvalues[(d - k) // 2]
            if k == d:
                assert lam_c == 1.0
            else:
                assert abs(lam_c - 0.55) <= np.spacing(0.55), (d, k, lam_c)


def test_lapack_mode5_is_not_rescaled_to_max_one():
    """Documented difference from xLATMS (which scales mode 5 to max |D| = DMAX): max < 1 here."""
    lam = spectra.make("lapack", 8, seed=0, mode=5, cond=1e4).eigenvalues
    assert lam.max() < 1.0 and lam.min() > 1e-4


def _blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def _set_blas_threads_from_a_passing_thread(n):
    """Set numpy's BLAS to n threads from a thread that then ends, so that no live thread holds
    threadpoolctl's OpenBLAS control (a ``with`` in the test's own thread would hold it)."""
    import threading

    from threadpoolctl import ThreadpoolController

    t = threading.Thread(target=lambda: ThreadpoolController().limit(limits=n, user_api="blas"))
    t.start()
    t.join()


def test_two_threads_making_at_once_each_compute_on_one_blas_thread_and_restore_it(monkeypatch):
    """threadpoolctl lets one Python thread at a time set OpenBLAS's process-wide thread count. Two
    makes overlapping in two threads: A set 1 thread, B's request was ignored, A's exit restored 2 and
    B went on computing on 2 threads (other bits at d = 300), and B's exit left the process on 1.
    Forced here: A sets the count first, B computes only after A's make has returned."""
    import threading

    before = _blas_threads()
    _set_blas_threads_from_a_passing_thread(2)
    try:
        start = _blas_threads()
        real = spectra.FAMILIES["separated"]
        both_in, a_in, a_done, seen = threading.Barrier(2), threading.Event(), threading.Event(), {}

        def family(d, rng, **kw):
            name = threading.current_thread().name
            if name == "A":
                a_in.set()
            try:
                both_in.wait(timeout=1)  # A waits here for B (in vain once makes do not overlap)
            except threading.BrokenBarrierError:
                pass
            if name == "B":
                a_done.wait(timeout=10)
            seen[name] = _blas_threads()
            return real(d, rng, **kw)

        monkeypatch.setitem(spectra.FAMILIES, "separated", family)
        a = threading.Thread(name="A", target=spectra.make, args=("separated", 4))
        b = threading.Thread(name="B", target=spectra.make, args=("separated", 4))
        a.start()
        a_in.wait(timeout=10)  # A holds the BLAS setting before B asks for it
        b.start()
        a.join()
        a_done.set()
        b.join()
        assert seen == {"A": {1}, "B": {1}}
        assert _blas_threads() == start
    finally:
        _set_blas_threads_from_a_passing_thread(max(before))


def _edge_cases(d):
    """(family, params) at the edges of every family's parameters, for size d."""
    yield from [("separated", {"cond": 1 + 1e-9}), ("separated", {"cond": 1e300}),
                ("cluster", {"k": 2, "delta": 1e-14}), ("cluster", {"k": d, "delta": 1e-14}),
                ("degenerate", {"m": 2}), ("degenerate", {"m": d}),
                ("rank_deficient", {"r": 1}), ("rank_deficient", {"r": d}), ("rank_deficient", {"n": 1}),
                ("rank_deficient", {"n": d - 1}), ("powerlaw", {"alpha": 1e-9}), ("powerlaw", {"alpha": 5.0})]
    yield from (("lapack", {"mode": mode, "cond": cond}) for mode in range(1, 7) for cond in (1.0, 1e300))


def test_matrix_has_the_recorded_spectrum_to_d_eps_for_every_size_to_64_at_the_edges():
    """eigvalsh of the float64 matrix against the recorded λ, relative to ‖A‖₂: a backward-stable
    eigensolver on the rounded Q diag(λ) Qᵀ is within a small multiple of d·eps (measured: ≤ 2·d·eps
    for d = 2..64 on OpenBLAS); 10·d·eps leaves room for another LAPACK, and a wrong construction
    (a λ off by one ulp of ‖A‖ per entry or a non-orthogonal Q) is far above it."""
    worst = 0.0
    for d in range(2, 65):
        for family, params in _edge_cases(d):
            s = spectra.make(family, d, seed=d, **params)
            norm = np.linalg.norm(s.matrix, 2)
            err = np.abs(np.linalg.eigvalsh(s.matrix) - s.eigenvalues).max() / (norm * d * EPS)
            worst = max(worst, err)
            assert err <= 10, (family, d, params, err)
    assert worst > 0  # the check compared something


def test_haar_basis_entries_follow_the_uniform_sphere_marginal():
    """Under Haar measure every entry q of Q is a coordinate of a uniform unit vector: q² ~ Beta(1/2,
    (d−1)/2), sign symmetric; and tr Q has mean 0 and variance 1 (d >= 2). QR without the sign
    correction fails both (Q[0, 0] < 0 always; mean tr Q = −1.1 at d = 5, −1.8 at d = 10). 3000
    samples per d from a fixed seed; KS p-value floor 1e-4 (the measured ones are 0.08–0.97)."""
    from scipy import stats

    rng = np.random.default_rng(20261206)
    for d in (2, 5, 10):
        qs = np.array([spectra.haar_orthogonal(d, rng) for _ in range(3000)])

        def marginal(t, d=d):
            return 0.5 + 0.5 * np.sign(t) * stats.beta.cdf(t * t, 0.5, (d - 1) / 2)

        for i, j in [(0, 0), (d - 1, d - 1), (0, d - 1), (d - 1, 0)]:
            assert stats.kstest(qs[:, i, j], marginal).pvalue > 1e-4, (d, i, j)
        trace = np.trace(qs, axis1=1, axis2=2)
        assert abs(trace.mean()) < 0.1 and abs(trace.var() - 1) < 0.15, (d, trace.mean(), trace.var())


@pytest.mark.parametrize("family", SPECTRAL)
def test_float32_matrix_records_the_float64_spectrum_and_is_within_float32_d_eps_of_it(family):
    """The recorded λ and Q of a float32 matrix are the float64 ones; its own eigenvalues (computed in
    float64) are within 10·d·eps32·‖A‖₂ of them (measured ≤ 0.17·d·eps32 at d = 2..64)."""
    eps32 = float(np.finfo(np.float32).eps)
    for d in (2, 9, 64):
        s32, s64 = spectra.make(family, d, seed=7, dtype="float32"), spectra.make(family, d, seed=7)
        assert np.array_equal(s32.eigenvalues, s64.eigenvalues) and np.array_equal(s32.basis, s64.basis)
        A = s32.matrix.astype(np.float64)
        assert np.abs(np.linalg.eigvalsh(A) - s32.eigenvalues).max() <= 10 * d * eps32 * np.linalg.norm(A, 2)


def _dlatm1_exact(mode, cond, n):
    """xLATM1's D for modes 1–4 (LAPACK's documented closed forms) exactly, ascending: rationals
    for modes 1, 2 and 4, 60 digits for mode 3's powers."""
    import mpmath

    c = Fraction(cond)
    if mode == 1:
        return sorted([Fraction(1)] + [1 / c] * (n - 1))
    if mode == 2:
        return sorted([Fraction(1)] * (n - 1) + [1 / c])
    if mode == 4:
        return sorted(1 - Fraction(i, n - 1) * (1 - 1 / c) for i in range(n))
    with mpmath.workdps(60):
        return sorted(mpmath.mpf(cond) ** (-mpmath.mpf(i) / (n - 1)) for i in range(n))


@pytest.mark.parametrize("mode", [1, 2, 3, 4])
@pytest.mark.parametrize("cond", [1e4, 1e8, 1e300])
def test_lapack_modes_against_the_exact_closed_forms(mode, cond):
    """Each value against xLATM1's closed form in exact arithmetic, not against the same float formula:
    within (ln cond + 2)·eps relative (mode 3 rounds the exponent −(i−1)/(n−1), an error ln(cond)
    times larger in the power), and the realised condition number max/min is cond to 2 eps."""
    import mpmath

    for d in (2, 7, 64):
        lam = spectra.make("lapack", d, mode=mode, cond=cond).eigenvalues
        exact = _dlatm1_exact(mode, cond, d)
        with mpmath.workdps(60):
            worst = max(abs(Fraction(float(x)) / e - 1) if isinstance(e, Fraction) else abs(mpmath.mpf(float(x)) / e - 1)
                        for x, e in zip(lam, exact))
        assert worst <= (math.log(cond) + 2) * EPS, (d, float(worst) / EPS)
        assert lam[-1] / lam[0] == pytest.approx(cond, rel=2 * EPS)


@pytest.mark.parametrize("alpha", [1e-17, 1e-16])
def test_powerlaw_refuses_an_alpha_too_small_for_distinct_eigenvalues(alpha):
    """i^−alpha rounds to 1 for every i when alpha·ln d is below eps/2: d equal eigenvalues, a
    degenerate matrix under the powerlaw name, which it returned without a word; separated and cluster
    refuse the same situation."""
    from stabkit.errors import InputError

    d = 8
    assert len({float(i) ** -alpha for i in range(1, d + 1)}) < d  # the equal values it would build
    with pytest.raises(InputError, match="too small for 8 distinct"):
        spectra.make("powerlaw", d, alpha=alpha)
    lam = spectra.make("powerlaw", d, alpha=1e-6).eigenvalues  # small but distinct: unchanged
    assert (np.diff(lam) > 0).all() and lam[-1] == 1.0
