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
