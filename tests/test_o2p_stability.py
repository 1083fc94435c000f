"""The o2p_stability study kind: its mpmath truths against finite differences, grid validation,
and one real cell."""

import mpmath as mp
import numpy as np
import pytest

from stabkit.studies import o2p_stability as study
from tests._helpers import mp_grad, mp_inner, mp_matfun, mp_sym, rel, to_mp


def test_o2p_truth_matches_finite_differences():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((4, 4)) * [1.0, 0.5, 0.2, 1e-3]
    G = rng.standard_normal((4, 4))
    eps = 1e-3
    fd = mp_grad(lambda M: mp_inner(to_mp(G), mp_matfun(M.T * M + eps * mp.eye(4), mp.log)), F)
    assert rel(study.o2p_truth(F, G, eps), fd) < 1e-12


def test_pc_truth_matches_finite_differences():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = (Q * [0.1, 0.5, 0.6, 1.0]) @ Q.T
    A = (A + A.T) / 2
    B, w = rng.standard_normal((4, 4)), rng.standard_normal(4)

    def loss(M):
        E, V = mp.eigsy(mp_sym(M))
        y = V[:, max(range(4), key=lambda i: E[i])]
        return (y.T * to_mp(B) * y)[0] + mp.fsum(w[i] * y[i] for i in range(4)) ** 2

    truth, gap = study.pc_truth(A, B, w)
    assert abs(gap - 0.4) < 1e-12
    assert rel(truth, mp_grad(loss, A)) < 1e-10


def test_validate_and_cells():
    with pytest.raises(ValueError, match="unknown grid key 'bogus'"):
        study.validate({"bogus": 1})
    with pytest.raises(ValueError, match="eps"):
        study.validate({"eps": [0.0]})
    with pytest.raises(ValueError, match="'nope' is neither a declarative layer"):
        study.validate({"pc_methods": ["less", "nope"]})
    assert study.validate({"pc_methods": ["ied", "taylor:K=19"]})["pc_methods"] == ["ied", "taylor:K=19"]
    grid = study.validate({"d": [4], "seeds": [0], "eps": [1e-3]})
    ids = [c["cell_id"] for c in study.cells(grid)]
    assert len(ids) == len(set(ids)) == 8


def test_one_cell_rows():
    grid = study.validate({"families": ["degenerate"], "d": [6], "seeds": [0], "eps": [1e-3],
                           "pc_methods": ["ied", "analytic"]})
    rows = study.run_cell(study.cells(grid)[0])
    assert len(rows) == 2 * (3 + 2)
    by = {(r["part"], r["dtype"], r["method"]): r for r in rows}
    assert by[("o2p", "float64", "svd-dk")]["angle_deg"] < 1e-9
    assert by[("pc", "float64", "ied")]["angle_deg"] < 1e-8
    assert all(r["finite"] for r in rows if r["method"] in ("svd-dk", "ied"))
    assert by[("pc", "float64", "ied")]["a_norm"] == pytest.approx(1.0)  # ‖A‖₂: largest λ = 1 by construction


def _pc_frame(angles, top_gap=0.1, a_norm=1.0, epss=(1e-3, 1e-8), nonfinite=()):
    """Principal-vector rows on constructed data: ``angles[(method, dtype)]`` for every matrix (variant
    'degenerate', d = 8, seeds 0..3), each repeated in every ε cell as the study does; ``nonfinite``:
    (method, dtype, seed) whose gradient is NaN."""
    import pandas as pd
    rows = []
    for eps in epss:
        for seed in range(4):
            for (method, dtype), angle in angles.items():
                bad = (method, dtype, seed) in nonfinite
                rows.append({"variant": "degenerate", "d": 8, "seed": seed, "eps": eps, "dtype": dtype,
                             "method": method, "angle_deg": np.nan if bad else angle, "finite": not bad,
                             "top_gap": top_gap, "a_norm": a_norm, "exact_ties": int(bad)})
    return pd.DataFrame(rows)


def _pc_text(pc, order=("pi", "taylor", "torch")):
    import importlib
    rep = importlib.import_module("stabkit.studies.o2p_stability.report")
    return "\n".join(rep._pc_reading(pc, study.DECLARATIVE, list(order)))


def test_truncation_is_claimed_only_where_float64_is_as_bad_as_float32():
    """pi: 20° in both dtypes (truncation); taylor: 1e-3° in float32, 1e-11° in float64 (rounding): the
    reading attributed both to truncation; now only pi, and taylor's numbers are stated without it."""
    text = _pc_text(_pc_frame({("pi", "float32"): 20.0, ("pi", "float64"): 20.0,
                               ("taylor", "float32"): 1e-3, ("taylor", "float64"): 1e-11}))
    pi = [x for x in text.splitlines() if x.startswith("- pi's worst angle")]
    taylor = [x for x in text.splitlines() if x.startswith("- taylor's worst angle")]
    assert len(pi) == len(taylor) == 1
    assert "truncation" not in taylor[0] and "truncation error" in pi[0]
    assert "20° in float32 and 20° in float64 (over 4 matrices each)" in pi[0] and "truncation error" in pi[0]
    assert taylor[0] == "- taylor's worst angle is 0.001° in float32 and 1e-11° in float64 (over 4 matrices each)."


def test_truncation_needs_both_dtypes_on_the_same_matrices():
    """A method without float64 rows crashed the reading (NaN count); on fewer float64 matrices the
    worst angles are over different sets, so no attribution is made."""
    pc = _pc_frame({("pi", "float32"): 20.0, ("pi", "float64"): 20.0, ("taylor", "float32"): 1.0,
                    ("taylor", "float64"): 1.0})
    none64 = _pc_text(pc[~((pc["method"] == "pi") & (pc["dtype"] == "float64"))])
    assert not [x for x in none64.splitlines() if x.startswith("- pi's worst angle")]
    fewer = _pc_text(pc[~((pc["method"] == "pi") & (pc["dtype"] == "float64") & (pc["seed"] < 2))])
    pi = [x for x in fewer.splitlines() if x.startswith("- pi's worst angle")]
    assert pi == ["- pi's worst angle is 20° in float32 and 20° in float64 (over 4 and 2 matrices)."]


def test_top_gap_verdict_follows_the_condition_number():
    """A top gap of 1e-12 (‖A‖₂ = 1) used to be called well conditioned; the verdict now compares
    ‖A‖₂/(λ₁ − λ₂) with 1/√eps of each dtype."""
    angles = {("pi", "float32"): 1.0, ("pi", "float64"): 1.0}
    bad = _pc_text(_pc_frame(angles, top_gap=1e-12))
    assert "well conditioned in every" not in bad and "well conditioned in all" not in bad
    good = _pc_text(_pc_frame(angles, top_gap=0.1))
    assert "ranges over [0.1, 0.1] (n = 4 matrices) and ‖A‖₂/(λ₁ − λ₂) over [10, 10]" in good
    assert "that gradient is well conditioned in all 4 matrices" in good
    assert "it is not in 4 of 4 matrices in float32, 4 of 4 matrices in float64" in bad
    # between the bounds: 1/gap = 1e5 > 1/√eps(float32) ≈ 2.9e3 but < 1/√eps(float64) ≈ 6.7e7
    mid = _pc_text(_pc_frame(angles, top_gap=1e-5))
    assert "it is not in 4 of 4 matrices in float32, 0 of 4 matrices in float64" in mid
    # ‖A‖₂ unknown: the range only
    unknown = _pc_text(_pc_frame(angles, top_gap=0.1, a_norm=np.nan))
    assert "‖A‖₂ is not known for every matrix, so its condition is not stated" in unknown
    assert "well conditioned" not in unknown


def test_nonfinite_principal_vectors_are_counted_per_matrix_not_per_eps_cell():
    """The principal-vector part does not depend on ε but every ε cell recomputes it: one NaN matrix was
    reported as '2 cells' (of 2 × 4); it is 1 of 4 matrices."""
    pc = _pc_frame({("torch", "float64"): 1e-12, ("less", "float64"): 1e-12}, nonfinite={("torch", "float64", 2)})
    text = _pc_text(pc, order=("torch",))
    assert "in 2 cells" not in text
    assert ("- torch (float64) returns NaN/Inf for the principal vector in 1 of 4 matrices (degenerate: 1 of 4); "
            "in 1 of them") in text
    assert "torch inf° (finite in 3 of 4 matrices)" in text
    assert "each of the 2 ε cells recomputes it" in text
