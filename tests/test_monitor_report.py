"""stabkit.monitor.report: which rule fires on which log, the first bad step, the files written."""

import math
from pathlib import Path

import pytest

from stabkit.monitor.log import frame
from stabkit.monitor.report import bad_steps, build_report, findings

INF, NAN = math.inf, math.nan


def _row(step, lam_min=1.0, rel=0.1, dtype="float32", backward="analytic", n=8, grad=1.0, grad_in=1.0,
         input_nonfinite=False, error="", site="net.py:10", fn="eigh"):
    nonfinite = input_nonfinite or bool(error) or not math.isfinite(grad) or not math.isfinite(grad_in)
    return {"step": step, "site": site, "fn": fn, "backward": backward, "batch": 2, "n": n, "dtype": dtype,
            "min_gap": rel, "min_rel_gap": rel, "max_K": 1 / rel if rel else INF, "lam_min": lam_min, "bound": NAN,
            "grad_norm": grad, "grad_in_norm": grad_in, "input_nonfinite": input_nonfinite, "nonfinite": nonfinite,
            "error": error}


def _rules(rows):
    return {f.rule: f for f in findings(frame(rows))}


def test_lam_min_le_0_in_float32_points_to_float64_and_names_the_study():
    rules = _rules([_row(0), _row(1), _row(2, lam_min=-1e-7), _row(3, lam_min=0.0)])
    f = rules["lam_min≤0 (float32)"]
    assert f.step == 2 and "2 of 4 float32 calls" in f.what
    assert "float64" in f.action and "83 of the 107" in f.evidence
    assert bad_steps(frame([_row(0), _row(1, lam_min=-1.0)])).tolist() == [False, True]


def test_a_site_is_taken_as_positive_definite_at_half_its_calls_and_the_report_says_so():
    """The text used to say "positive definite at most calls" for ≥ 50 %: it gives the count, and exactly
    half counts (a covariance bad from its midpoint is flagged); calls without a λ_min are not counted."""
    f = _rules([_row(0), _row(1, lam_min=-1e-7), _row(2, lam_min=NAN, error="E: x")])["lam_min≤0 (float32)"]
    assert "λ_min > 0 at 1 of 2 calls (half or more)" in f.what and "most calls" not in f.what
    assert bad_steps(frame([_row(0), _row(1, lam_min=-1e-7)])).tolist() == [False, True]
    below_half = [_row(0), _row(1, lam_min=-1e-7), _row(2, lam_min=-1e-7)]
    assert "lam_min≤0 (float32)" not in _rules(below_half) and not bad_steps(frame(below_half)).any()


def test_an_indefinite_site_is_not_flagged_for_lam_min():
    rows = [_row(s, lam_min=-3.0) for s in range(3)]
    assert _rules(rows) == {}
    assert not bad_steps(frame(rows)).any()


def test_a_call_that_raised_on_a_nan_input_points_upstream():
    rows = [_row(0), _row(1), _row(2, lam_min=NAN, rel=NAN, input_nonfinite=True, grad=NAN, grad_in=NAN,
                                   error="_LinAlgError: failed to converge")]
    rules = _rules(rows)
    assert set(rules) == {"call raised"}
    f = rules["call raised"]
    assert f.step == 2 and "input already held NaN/Inf" in f.what and "backward rule cannot repair" in f.action


def test_a_non_finite_gradient_made_by_the_analytic_rule_recommends_a_bounded_rule():
    rows = [_row(0), _row(1, rel=0.0, grad=2.0, grad_in=INF), _row(2, input_nonfinite=True, grad=NAN, grad_in=NAN)]
    rules = _rules(rows)
    made = rules["non-finite gradient made here"]
    assert made.step == 1 and "max|K̃| = ∞" in made.what and "--swap-backward taylor" in made.action
    assert "3/8" in made.evidence and "8/8" in made.evidence
    nf = rules["non-finite input"]  # the update driven by that gradient is blamed, not something upstream
    assert nf.step == 2 and "Fix the gradient first" in nf.action


@pytest.mark.parametrize("fn, call", [("svd", "stabkit.torch.svd(A"), ("stabkit.torch.eigh[analytic]", "stabkit.torch.eigh(A")])
def test_swap_backward_is_advised_only_where_it_applies(fn, call):
    """--swap-backward reroutes torch.linalg.eigh alone: a non-finite gradient made by an svd or a
    stabkit.torch call is pointed at that call's own method, not at a flag that leaves it unchanged."""
    rows = [_row(0, fn=fn), _row(1, fn=fn, rel=0.0, grad=2.0, grad_in=INF)]
    action = _rules(rows)["non-finite gradient made here"].action
    assert "--swap-backward taylor" not in action and call in action and "torch.linalg.eigh only" in action


def test_a_bounded_rule_gets_no_unfounded_advice():
    rows = [_row(0, backward="taylor"), _row(1, backward="taylor", grad=2.0, grad_in=INF)]
    f = _rules(rows)["non-finite gradient made here"]
    assert "no measured fix" in f.action and f.evidence == "—"


def test_a_non_finite_incoming_gradient_points_after_the_call():
    f = _rules([_row(0), _row(1, grad=INF, grad_in=INF)])["non-finite incoming gradient"]
    assert f.step == 1 and "after this call" in f.action


def test_svd_pi_rules_at_d16():
    legacy = _rules([_row(0, backward="pi-legacy", n=16)])["SVD-PI backward of another function"]
    assert "73.6°" in legacy.evidence and "`pi`" in legacy.action
    truncating = _rules([_row(0, backward="pi:steps=20", n=16)])
    assert "85°" in truncating["SVD-PI computes a truncated decomposition"].evidence
    assert "SVD-PI backward of another function" not in truncating
    assert _rules([_row(0, backward="pi", n=8)]) == {} and _rules([_row(0, backward="pi-forward", n=16)]) == {}


def test_small_gaps_alone_are_reported_as_no_reason_to_act():
    f = _rules([_row(0, rel=1e-3), _row(1, rel=1e-7), _row(2, rel=1e-8)])["small gaps, no failure from them"]
    assert f.step == 1 and "2 of 3 calls" in f.what and "Nothing to change" in f.action and "5.2·10¹⁸" in f.evidence


@pytest.mark.parametrize("fn", ["eigvalsh", "stabkit.torch.eigvalsh", "stabkit.torch.svdvals"])
def test_small_gaps_at_a_values_only_call_need_no_bounded_rule(fn):
    """An eigvalsh/svdvals call's backward U diag(∂L/∂λ) Uᵀ has no 1/(λ_i − λ_j): the advice used to say a bounded
    rule would be the fix if it failed later."""
    f = _rules([_row(0, rel=1e-8, fn=fn), _row(1, rel=1e-9, fn=fn)])["small gaps, no failure from them"]
    assert "eigen- or singular values only" in f.action and "bounded rule" not in f.action
    assert "Weyl" in f.evidence
    mixed = _rules([_row(0, rel=1e-8, fn=fn), _row(1, rel=1e-9, fn="eigh")])["small gaps, no failure from them"]
    assert "bounded rule (taylor, clip)" in mixed.action  # an eigh call at the same site keeps the advice


def test_the_evidence_quotes_the_committed_zca_report():
    """The advice cites the ZCA study: its numbers are those of reports/zca-cifar10 (the landmark link, not the
    first version's leaky Brier 0.176 vs 0.196, and the d = 64 float64 SVD row's early max K̃ median)."""
    report = (Path(__file__).parents[1] / "reports" / "zca-cifar10" / "README.md").read_text()
    gaps = _rules([_row(0, rel=1e-8)])["small gaps, no failure from them"].evidence
    assert "0.176" not in gaps
    assert "Brier: base rate 0.0749, cell 0.0306, cell + diagnostics 0.0324" in report and "0.0324" in gaps
    assert "-0.0018 ± 0.0022" in report and "−0.0018 ± 0.0022" in gaps
    assert "319 runs" in report and "26 failed at a step ≥ L" in report and "(L = 24 steps)" in report
    assert "| analytic | SVD | 64 | float64 | 8 | 100 | [67, 100] | 0 | 0.708 | — | — | 5.17e+18 |" in report


def test_report_files_per_log_and_site(tmp_path):
    frame([_row(0), _row(1, lam_min=-1e-6), _row(0, site="net.py:20", fn="svd")]).to_csv(tmp_path / "eig-rank0.csv", index=False)
    frame([_row(0), _row(1)]).to_csv(tmp_path / "eig-rank1.csv", index=False)
    md = build_report(tmp_path, tmp_path / "out").read_text()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["site-01.png", "site-02.png", "site-03.png"]
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 3
    assert table[0].startswith("| 1 | eig-rank0 | `net.py:10` | eigh |") and table[0].endswith("| 1 |")  # first bad step 1
    assert table[1].startswith("| 2 | eig-rank0 | `net.py:20` | svd |") and table[1].endswith("| – |")
    assert md.count("nothing to change") == 2  # the svd site and rank 1
    assert "5 logged calls in 2 log(s)" in md and "First bad step over all sites: 1." in md


def test_a_gradient_norm_that_was_not_measured_is_said_so_not_left_out(tmp_path):
    """NaN grad_norm (no gradient reached the outputs) was dropped by max(): the table showed the largest of
    the others as if every call had one, or a bare "–"."""
    frame([_row(0, grad=2.0), _row(1, grad=NAN, grad_in=NAN), _row(0, site="net.py:20", grad=NAN, grad_in=NAN)]
          ).to_csv(tmp_path / "eig-rank0.csv", index=False)
    md = build_report(tmp_path).read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert "| 2 (1 of 2 calls measured) |" in table[0] and "| not measured |" in table[1]
    assert "*not measured*" in md and "no gradient reached the outputs" in md


def test_bounded_and_caveats_come_from_the_method_not_from_its_name(monkeypatch):
    """A method registered with ``bounded`` gets no bounded-rule advice; one with a Caveat gets its
    finding at n ≥ min_n, the text formatted with the site's backward and size."""
    from stabkit import methods
    from stabkit.methods import Caveat, Method

    plain = methods.get(methods.DEFAULT)
    caveat = Caveat("a rule", "backward {backward} on {n}×{n}", "do this", "because", min_n=4)
    monkeypatch.setitem(methods.REGISTRY, "new-rule", Method("new-rule", plain.backward, bounded=True, caveat=caveat))
    rows = [_row(0, backward="new-rule:x=1", n=4), _row(1, backward="new-rule:x=1", n=4, grad=2.0, grad_in=INF)]
    rules = _rules(rows)
    assert "--swap-backward" not in rules["non-finite gradient made here"].action
    found = rules["a rule"]
    assert (found.step, found.what, found.action, found.evidence) == (0, "backward new-rule:x=1 on 4×4", "do this", "because")
    assert "a rule" not in _rules([_row(0, backward="new-rule", n=3)])


def test_a_csv_that_is_not_a_monitor_log_is_named_with_its_missing_columns(tmp_path):
    (tmp_path / "eig-rank0.csv").write_text("a,b\n1,2\nx")
    with pytest.raises(ValueError, match=r"eig-rank0.csv is not a stabkit monitor log \(missing columns step, site, fn"):
        build_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_an_empty_log_is_skipped_with_a_warning_and_only_empty_logs_are_an_error(tmp_path):
    from stabkit.monitor.report import EmptyLogWarning

    (tmp_path / "eig-rank1.csv").write_text("")
    with pytest.raises(ValueError, match="hold no calls yet"):
        build_report(tmp_path)
    frame([_row(0), _row(1)]).to_csv(tmp_path / "eig-rank0.csv", index=False)
    with pytest.warns(EmptyLogWarning, match="eig-rank1.csv"):
        md = build_report(tmp_path).read_text()
    assert "2 logged calls in 1 log(s) (eig-rank0)" in md


def test_an_existing_file_as_the_output_folder_is_a_value_error(tmp_path):
    frame([_row(0)]).to_csv(tmp_path / "eig-rank0.csv", index=False)
    (tmp_path / "afile").write_text("keep me")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ValueError, match=f"cannot write the report into {out}"):
            build_report(tmp_path, out)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_stabkit_svd_site_is_not_flagged_for_a_zero_singular_value():
    """σ² ≥ 0 always: a zero singular value is no loss of definiteness (as for torch.linalg.svd)."""
    rows = [_row(s, lam_min=1.0, fn=fn, backward="clip:tau=5") for s in range(3)
            for fn in ("stabkit.torch.svd[clip]", "stabkit.torch.svdvals[clip]")]
    rows.append(_row(3, lam_min=0.0, fn="stabkit.torch.svd[clip]", backward="clip:tau=5"))
    assert _rules(rows) == {}
    assert not bad_steps(frame(rows)).any()


def test_a_daleckii_krein_site_is_never_advised_to_swap_its_backward():
    """Its backward is the exact derivative of g(A), which --swap-backward does not touch: a
    non-finite gradient points at g's domain (ε, float64), small gaps need nothing."""
    from stabkit.layers.matrix_functions import DK_BACKWARD

    kw = {"backward": DK_BACKWARD, "fn": "stabkit.layers.matrix_functions.eig_dk"}
    rules = _rules([_row(0, **kw), _row(1, rel=0.0, lam_min=0.0, grad=2.0, grad_in=INF, **kw)])
    made = rules["non-finite gradient made here"]
    assert "small gaps, no failure from them" not in rules  # "nothing to change" would contradict it
    assert made.step == 1 and "--swap-backward does not change it" in made.action and "ε" in made.action
    assert "Thm. 3.11" in made.evidence and "taylor" not in made.action
    gaps = _rules([_row(0, rel=1e-3, **kw), _row(1, rel=1e-8, **kw)])["small gaps, no failure from them"]
    assert "does not divide by gaps" in gaps.action and "Thm. 3.11" in gaps.evidence


@pytest.mark.parametrize("fn", ["eigh", "stabkit.layers.matrix_functions.eig_dk"])
def test_a_non_finite_output_from_a_finite_input_is_a_finding_not_nothing_to_change(tmp_path, fn):
    """A row flagged non-finite with a finite input, no error and finite gradients (the solver's λ, or a
    Daleckii–Krein layer's g(A) = log A at λ ≤ 0): the table counted it and named its step as the first bad
    one, while the section said 'No error, non-finite value or λ_min ≤ 0 at this site … nothing to change'."""
    from stabkit.layers.matrix_functions import DK_BACKWARD

    kw = {"fn": fn, "backward": DK_BACKWARD if "dk" in fn else "analytic"}
    rows = [_row(0, lam_min=-1.0, **kw), {**_row(1, lam_min=-1.0, **kw), "nonfinite": True}]
    assert set(_rules(rows)) == {"non-finite output"}
    assert _rules(rows)["non-finite output"].step == 1 and "1 call(s)" in _rules(rows)["non-finite output"].what
    frame(rows).to_csv(tmp_path / "eig-rank0.csv", index=False)
    md = build_report(tmp_path).read_text()
    table = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert table[0].endswith("| 1 | 0 | 1 |")  # non-finite 1, raised 0, first bad step 1
    assert "nothing to change" not in md and "**non-finite output** (from step 1)" in md


def test_lam_min_le_0_at_a_complex_positive_site_is_a_finding():
    """A complex Hermitian covariance (dtype complex128) losing definiteness: bad_steps flagged the step and
    the table named it as the first bad one, but the λ rule looked at float32 and float64 rows only, so
    the section said 'No error, non-finite value or λ_min ≤ 0 at this site … nothing to change'."""
    rows = [_row(0, dtype="complex128"), _row(1, dtype="complex128"), _row(2, lam_min=-1e-9, dtype="complex128")]
    assert bad_steps(frame(rows)).tolist() == [False, False, True]
    f = _rules(rows)["lam_min≤0 (complex128)"]
    assert f.step == 2 and "1 of 3 complex128 calls" in f.what and "λ_min > 0 at 2 of 3 calls" in f.what


def test_sites_and_logs_are_listed_by_their_numbers_not_as_text(tmp_path):
    """Sites were sorted as text, so train.py:10 and train.py:100 came before train.py:9 (and log
    eig-rank10 before eig-rank2): a reader looking down the table by line or rank found them out of order."""
    frame([_row(0, site=f"train.py:{line}") for line in (100, 9, 10)]).to_csv(tmp_path / "eig-rank0.csv", index=False)
    for rank in (10, 2):
        frame([_row(0)]).to_csv(tmp_path / f"eig-rank{rank}.csv", index=False)
    md = build_report(tmp_path).read_text()
    table = [line.split(" | ")[1:3] for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert table == [["eig-rank0", "`train.py:9`"], ["eig-rank0", "`train.py:10`"], ["eig-rank0", "`train.py:100`"],
                     ["eig-rank2", "`net.py:10`"], ["eig-rank10", "`net.py:10`"]]
    assert "in 3 log(s) (eig-rank0, eig-rank2, eig-rank10)" in md
    assert md.index("## 1. `train.py:9`") < md.index("## 2. `train.py:10`") < md.index("## 3. `train.py:100`")


def test_logs_that_share_a_name_but_not_a_format_stay_two_runs(tmp_path):
    """a.csv and a.parquet were both read as log "a", one run: here a covariance whose λ_min turns ≤ 0
    at step 2 (a.csv) and an indefinite site (a.parquet) merged into one site positive at 2 of 6 calls,
    so its bad step was lost. Two files are two logs, each named by its file where the stems collide."""
    frame([_row(0), _row(1), _row(2, lam_min=-1e-6)]).to_csv(tmp_path / "a.csv", index=False)
    frame([_row(s, lam_min=-1.0) for s in range(3)]).to_parquet(tmp_path / "a.parquet")
    frame([_row(0)]).to_csv(tmp_path / "b.csv", index=False)
    md = build_report(tmp_path).read_text()
    table = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(row[1], row[7], row[-1]) for row in table] == [("a.csv", "3", "2 |"), ("a.parquet", "3", "– |"), ("b", "1", "– |")]
    assert "7 logged calls in 3 log(s) (a.csv, a.parquet, b)" in md and "First bad step over all sites: 2." in md
