"""GPU-window planning (stabkit.train.session), `stabkit run --max-cells`, and the plain-vs-fast
comparison's Fisher test (stabkit.train.fastcheck) on constructed inputs with known answers."""

import json
import math

import pytest

from stabkit.studies import runner
from stabkit.train import fastcheck, session, table_iv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_planned_steps_of_the_protocols():
    # the paper's DataLoader keeps the last partial batch: ⌈50 000 / 128⌉ = 391 steps per epoch
    assert session.planned_steps({"preset": "paper", "epochs": 100}) == 39_100
    assert session.planned_steps({"preset": "paper", "epochs": 350}) == 136_850
    # stabkit drops it: ⌊50 000 / 128⌋ = 390; the short protocol caps at max_steps
    assert session.planned_steps({"epochs": 1}) == 390
    assert session.planned_steps({"epochs": 350, "max_steps": 120, "limit_images": 15360}) == 120


@pytest.mark.parametrize("preset, options", [("paper", {"drop_last": True}), ("stabkit", {"drop_last": False}), ("paper", {}),
                                              ("stabkit", {}), ("paper", {"max_steps": 3})])
def test_planned_steps_are_the_steps_the_study_s_runs_train(synthetic, preset, options):
    """48 images in batches of 32 for 2 epochs: a survival grid whose ``train_options`` sets
    ``drop_last`` against its preset's default (paper keeps the partial batch, stabkit drops it)
    trains 2 × 1 or 2 × 2 steps; the plan counts the steps its runs (built by the study, trained
    here) take, and the test passes at the steps per epoch they use."""
    from stabkit.studies import zca_cifar10_survival as surv
    from stabkit.train.loop import train_run

    grid = {"preset": preset, "cells": [["taylor", 4]], "seeds": 1, "epochs": 2.0, "limit_images": 48, "limit_test": 16,
            "batch_size": 32, "lr": 1e-9, "width": 0.125, "device": "cpu", "train_options": options}
    r = train_run(surv._config(surv.cells(grid)[0]), data=synthetic)
    assert r["steps_done"] == r["steps_total"] and r["steps_per_epoch"] in (1, 2)
    assert session.planned_steps(grid) == r["steps_total"]
    assert session.grid_steps_per_epoch(grid) == r["steps_per_epoch"]
    # the final test pass and one at each epoch's end (the last counted twice: the plan's margin)
    evals = r["steps_total"] // r["steps_per_epoch"] + 1
    assert session.eval_steps(grid, r["steps_total"]) == pytest.approx(evals * 16 / 32 / 3)


def test_the_plan_reads_a_study_file_over_its_kind_s_defaults(synthetic, tmp_path):
    """A survival study file that leaves out ``preset`` and ``epochs`` trains with its kind's defaults
    (preset paper, 100 epochs): on 48 images in batches of 32 for 2 epochs its run (built by the study,
    trained here) keeps the partial batch, 4 steps, and the plan counts those; without ``epochs`` it
    plans 100 epochs of ⌈50 000 / 128⌉ = 391 steps (it planned 2 steps, then 390: the stabkit preset's
    rule and 1 epoch)."""
    from stabkit.studies import zca_cifar10_survival as surv
    from stabkit.train.loop import train_run

    study = tmp_path / "survival.toml"
    study.write_text('[study]\nname = "s"\nkind = "zca_cifar10_survival"\n[grid]\ncells = [["taylor", 4]]\nseeds = 1\n'
                     'epochs = 2.0\nlimit_images = 48\nlimit_test = 16\nbatch_size = 32\nlr = 1e-9\nwidth = 0.125\ndevice = "cpu"\n')
    grid = session.StudyFiles(study).study["grid"]
    r = train_run(surv._config(surv.cells(grid)[0]), data=synthetic)
    assert r["steps_total"] == 4
    assert session.estimate(study, 2, reports=tmp_path)[1].startswith("4 steps per run")
    study.write_text('[study]\nname = "s"\nkind = "zca_cifar10_survival"\n[grid]\ncells = [["taylor", 4]]\n')
    assert session.estimate(study, 2, reports=tmp_path)[1].startswith(f"{100 * 391} steps per run")


def test_test_images_rule():
    """limit_test, else a subset run's limit_images, else all; never more than there are."""
    rule = session.test_images
    assert rule({"limit_test": 2000, "limit_images": 15360}) == 2000
    assert rule({"limit_test": 0, "limit_images": 15360}) == 10_000
    assert rule({"limit_test": 0, "limit_images": 1000}) == 1000  # the survival grid's "0" with a subset
    assert rule({"limit_test": None, "limit_images": None}) == rule({}) == 10_000
    assert rule({"limit_test": 500}, available=64) == 64
    assert rule({"limit_images": 256}, available=64) == 64


def test_plan_counts_whole_waves_only():
    assert session.plan(540, 6, 250) == 12       # two waves of six
    assert session.plan(540, 6, 541) == 0        # not even one: start nothing
    assert session.plan(540, 1, 100) == 5
    with pytest.raises(ValueError, match="jobs"):
        session.plan(540, 0, 100)


def test_bench_estimate():
    bench = {"rows": [{"path": "today", "runs": 1, "processes": 1, "steps_per_s": 50.0},
                      {"path": "fast", "runs": 1, "processes": 1, "steps_per_s": 150.0},
                      {"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 600.0}]}
    # six fast runs at once: 100 steps/s each; 39 100 steps + 1000 step-equivalents of evaluation
    assert session.bench_run_s(bench, 6, 39_100, 1000, fast=True, overhead_s=60) == pytest.approx((401 + 60) * 1.2)
    # plain path, only one process measured: the total rate is assumed not to grow with processes
    assert session.bench_run_s(bench, 6, 39_100, 0, fast=False, overhead_s=0) == pytest.approx(39_100 / (50 / 6) * 1.2)
    assert session.bench_run_s({"rows": []}, 6, 100, 0, fast=True) is None
    # six runs stacked in one process: the stacked row of 6 runs (not the 6-process row), 40 steps/s each;
    # twelve stacked: only 6 measured, so the total is assumed not to grow
    stacked = {"rows": [*bench["rows"], {"path": "fast, stacked", "runs": 6, "processes": 1, "steps_per_s": 240.0}]}
    assert session.bench_run_s(stacked, 6, 4_000, 0, fast=True, overhead_s=0, stacked=True) == pytest.approx(100 * 1.2)
    assert session.bench_run_s(stacked, 12, 4_000, 0, fast=True, overhead_s=0, stacked=True) == pytest.approx(200 * 1.2)
    assert session.bench_run_s(bench, 6, 100, 0, fast=True, stacked=True) is None
    # 100 evaluations of 10 000 test images (plus the final one), a forward = a third of a step of 128
    assert session.eval_steps({"preset": "paper", "epochs": 100}, 39_100) == pytest.approx(101 * 10_000 / 128 / 3)


def test_max_cells_chunks_and_the_plan_from_finished_runs(tiny_batches, tmp_path, capsys):
    study = tmp_path / "chunked.toml"
    study.write_text(f'''[study]
name = "chunked"
kind = "zca_cifar10"
[grid]
methods = ["taylor", "clip"]
dims = [4]
dtypes = ["float32"]
seeds = 2
bn_baseline = false
epochs = 1.0
max_steps = 2
limit_images = 64
limit_test = 16
batch_size = 32
width = 0.125
data = "{tiny_batches}"
device = "cpu"
''')
    out = tmp_path / "reports"
    table = runner.run_study(study, jobs=1, out_root=out, progress=False, max_cells=3)
    cells_dir = out / "chunked" / "cells"
    assert len(list(cells_dir.glob("*.json"))) == 3 and len(table) == 3
    assert json.loads((out / "chunked" / "run.json").read_text())["cells_computed"] == 3
    rows = [json.loads(p.read_text())["rows"][0] for p in cells_dir.glob("*.json")]
    assert all(json.loads(r["epoch_log"])[-1]["step"] == 2 for r in rows)  # stored as JSON text
    # the plan reads the finished full-horizon runs: the longest wall time × 1.1
    run_s, how = session.estimate(study, 2, reports=out)
    assert run_s == pytest.approx(max(r["wall_s"] for r in rows) * 1.1) and "finished" in how
    assert session.main([str(study), "--seconds", str(10.5 * run_s), "--jobs", "2", "--reports", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "20"  # 10 whole waves of 2 runs
    # the next chunk computes only what is left
    runner.run_study(study, jobs=1, out_root=out, progress=False, max_cells=5)
    meta = json.loads((out / "chunked" / "run.json").read_text())
    assert (meta["cells_reused"], meta["cells_computed"]) == (3, 1)
    with pytest.raises(ValueError, match="max-cells"):
        runner.run_study(study, jobs=1, out_root=out, progress=False, max_cells=-1)


def _fisher_two_sided(a, b, c, d):
    """Fisher's exact test from the hypergeometric law, written out: the sum of the probabilities of
    all tables with the same margins that are no more likely than the observed one."""
    n1, n2, k = a + b, c + d, a + c
    p = lambda x: math.comb(n1, x) * math.comb(n2, k - x) / math.comb(n1 + n2, k)  # noqa: E731
    observed = p(a)
    return sum(p(x) for x in range(max(0, k - n2), min(k, n1) + 1) if p(x) <= observed * (1 + 1e-12))


def test_fastcheck_compare_on_constructed_outcomes():
    rows = []
    # cell A: plain fails 7/8, fast fails 1/8 (a real difference); cell B: both 2/8, same seeds
    for seed in range(8):
        rows.append({"preset": "stabkit", "method": "analytic", "d": 64, "seed": seed, "fast": False,
                     "paper_outcome": "nan-loss" if seed < 7 else "ok", "outcome": "nonfinite-loss" if seed < 7 else "ok",
                     "eig_dtypes": "float32"})
        rows.append({"preset": "stabkit", "method": "analytic", "d": 64, "seed": seed, "fast": True,
                     "paper_outcome": "nan-loss" if seed < 1 else "ok", "outcome": "nonfinite-loss" if seed < 1 else "ok",
                     "eig_dtypes": "float32"})
        for fast in (False, True):
            rows.append({"preset": "paper", "method": "taylor", "d": 16, "seed": seed, "fast": fast,
                         "paper_outcome": "nan-loss" if seed in (3, 5) else "ok",
                         "outcome": "diverged" if seed == 0 else ("nonfinite-loss" if seed in (3, 5) else "ok"), "eig_dtypes": "float32"})
    result = fastcheck.compare(rows)
    a = result["cells"]["stabkit analytic d=64"]["nan_loss"]
    assert (a["plain_failed"], a["fast_failed"], a["same_seed_agree"]) == (7, 1, 2)
    assert a["fisher_p"] == pytest.approx(_fisher_two_sided(7, 1, 1, 7)) and a["fisher_p"] < 0.05
    b = result["cells"]["paper taylor d=16"]
    assert (b["nan_loss"]["plain_failed"], b["nan_loss"]["fast_failed"], b["nan_loss"]["fisher_p"]) == (2, 2, 1.0)
    assert (b["any"]["plain_failed"], b["any"]["same_seed_agree"]) == (3, 8)
    pooled = result["pooled"]
    assert pooled["n"] == 16 and (pooled["nan_loss"]["plain_failed"], pooled["nan_loss"]["fast_failed"]) == (9, 3)
    assert pooled["nan_loss"]["fisher_p"] == pytest.approx(_fisher_two_sided(9, 7, 3, 13))
    assert result["eig_dtypes"] == ["float32"]
    assert "| pooled | 16 | 9 | 3 |" in fastcheck.markdown(result)
    # the paired test: in cell A only plain failed at 6 seeds, only fast at none: 2 · ½⁶
    assert a["mcnemar_p"] == pytest.approx(2 * 0.5 ** 6) and b["nan_loss"]["mcnemar_p"] == 1.0
    assert pooled["nan_loss"]["mcnemar_p"] == pytest.approx(2 * 0.5 ** 6)
    # a seed cut by the time box (cell A's seed 8 on the plain path only) changes nothing and is counted as left out
    cut = fastcheck.compare(rows + [{**rows[0], "seed": 8}])
    assert cut["whole_seeds"] == list(range(8)) and cut["runs_left_out"] == 1
    assert cut["cells"] == result["cells"] and cut["pooled"] == result["pooled"]


def test_fastcheck_mcnemar_against_the_binomial_sum():
    for only_plain, only_fast in [(0, 0), (3, 0), (1, 4), (5, 5), (2, 9)]:
        n, k = only_plain + only_fast, min(only_plain, only_fast)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        expected = min(1.0, 2 * tail) if n else 1.0
        assert fastcheck.mcnemar_exact_p(only_plain, only_fast) == pytest.approx(expected)


def test_fastcheck_configs_pair_the_paths():
    cfgs = fastcheck.configs(cells=[("paper", "SVD", 16)], seeds=2, device="cpu")  # cells name Table IV rows
    assert [(c["seed"], c["fast"]) for c in cfgs] == [(0, False), (0, True), (1, False), (1, True)]
    assert all(c["method"] == "analytic" for c in cfgs)
    assert [(p, table_iv.method(row).name, d) for p, row, d in fastcheck.CELLS] == [
        ("stabkit", "analytic", 64), ("stabkit", "pi-forward", 8), ("stabkit", "clip", 16),
        ("stabkit", "analytic", 32), ("stabkit", "taylor", 8), ("paper", "analytic", 16)]
    assert all(c["max_steps"] == 120 and c["limit_images"] == 15360 and c["dtype"] == "float32" for c in cfgs)


def test_fastcheck_pools_further_seeds_with_an_earlier_window_and_refuses_a_run_twice(tmp_path, monkeypatch, capsys):
    """A GPU window holds a few seeds: the next one runs other seeds (--seed-start) and pools them with
    the earlier fastcheck.json (--add). Runs are faked (plain never fails; fast fails at odd seeds)."""
    def fake_run(config):
        failed = config["fast"] and config["seed"] % 2 == 1
        return {"preset": config["preset"], "method": config["method"], "d": config["d"], "seed": config["seed"],
                "fast": config["fast"], "outcome": "nonfinite-loss" if failed else "ok",
                "paper_outcome": "nan-loss" if failed else "ok", "eig_dtypes": "float32"}

    monkeypatch.setattr(fastcheck, "_run", fake_run)
    first, second = tmp_path / "w1", tmp_path / "w2"
    assert fastcheck.main(["--out", str(first), "--jobs", "1", "--seeds", "2", "--device", "cpu"]) == 0
    assert fastcheck.main(["--out", str(second), "--jobs", "1", "--seeds", "3", "--seed-start", "2", "--device", "cpu",
                           "--add", str(first / "fastcheck.json")]) == 0
    pooled = json.loads((second / "fastcheck.json").read_text())
    cells = len(fastcheck.CELLS)
    assert len(pooled["runs"]) == 2 * 5 * cells  # two paths × seeds 0…4 × cells
    assert sorted({r["seed"] for r in pooled["runs"]}) == [0, 1, 2, 3, 4]
    c = pooled["cells"]["paper analytic d=16"]["nan_loss"]
    assert pooled["cells"]["paper analytic d=16"]["n"] == 5 and (c["plain_failed"], c["fast_failed"]) == (0, 2)  # seeds 1, 3
    assert c["fisher_p"] == pytest.approx(_fisher_two_sided(0, 5, 2, 3))
    assert pooled["pooled"]["n"] == 5 * cells and pooled["pooled"]["nan_loss"]["fast_failed"] == 2 * cells
    with pytest.raises(SystemExit) as exc:  # seeds 1…2 again: seed 1 is in the first window's file
        fastcheck.main(["--out", str(tmp_path / "w3"), "--jobs", "1", "--seeds", "2", "--seed-start", "1", "--device", "cpu",
                        "--add", str(first / "fastcheck.json")])
    assert exc.value.code == 2 and "twice" in capsys.readouterr().err
    assert not (tmp_path / "w3").exists()  # refused before any run
    (tmp_path / "bad.json").write_text('{"runs": [{"seed": 1}]}')
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as exc:
            fastcheck.main(["--out", str(tmp_path / "w4"), "--jobs", "1", "--seeds", "1", "--add", str(bad)])
        assert exc.value.code == 2 and f"--add {bad}: not a readable fastcheck.json" in capsys.readouterr().err


def test_fastcheck_keeps_the_finished_runs_when_interrupted_and_counts_whole_seeds_only(tmp_path, monkeypatch, capsys):
    """Runs go seed by seed; the JSON is rewritten after each one. A SIGINT during the second seed's
    runs keeps the first seed whole and the second's finished runs, which the comparison leaves out."""
    cells, order = len(fastcheck.CELLS), []

    def fake_run(config):
        if len(order) == 2 * cells + 3:
            raise KeyboardInterrupt
        order.append((config["seed"], config["preset"], config["method"], config["d"], config["fast"]))
        failed = config["fast"] and config["method"] == "analytic"
        return {"preset": config["preset"], "method": config["method"], "d": config["d"], "seed": config["seed"],
                "fast": config["fast"], "outcome": "nonfinite-loss" if failed else "ok",
                "paper_outcome": "nan-loss" if failed else "ok", "eig_dtypes": "float32"}

    monkeypatch.setattr(fastcheck, "_run", fake_run)
    assert fastcheck.main(["--out", str(tmp_path), "--jobs", "1", "--seeds", "3", "--device", "cpu"]) == 130
    assert [o[0] for o in order] == [0] * (2 * cells) + [1] * 3  # a whole seed before the next
    saved = json.loads((tmp_path / "fastcheck.json").read_text())
    assert len(saved["runs"]) == 2 * cells + 3 and saved["whole_seeds"] == [0] and saved["runs_left_out"] == 3
    assert saved["pooled"]["n"] == cells
    c = saved["cells"]["paper analytic d=16"]
    assert c["n"] == 1 and (c["nan_loss"]["plain_failed"], c["nan_loss"]["fast_failed"]) == (0, 1)
    assert "runs of cut seeds left out: 3" in (tmp_path / "fastcheck.md").read_text()
    assert f"interrupted after {2 * cells + 3} of {3 * 2 * cells} runs" in capsys.readouterr().err


def test_fit_epochs_from_the_bench(tmp_path):
    study = tmp_path / "surv.toml"
    study.write_text('[study]\nname = "surv"\nkind = "zca_cifar10_survival"\n[grid]\npreset = "paper"\nepochs = 100.0\nfast = true\neval_every = 0\n')
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 600.0}]}))
    # one run: ((391 E + 10 000/128/3) / 100 + 60) × 1.2 s ≤ 540 s  ⇔  391 E ≤ 39 000 − 26.04  ⇔  E ≤ 99.67
    assert (39_000 - 10_000 / 128 / 3) / 391 == pytest.approx(99.68, abs=0.01)
    assert session.fit_epochs(study, 540, 6, bench, reports=tmp_path) == 99
    assert session.fit_epochs(study, 10_000, 6, bench, reports=tmp_path) == 100  # never beyond the study's horizon
    assert session.fit_epochs(study, 50, 6, bench, reports=tmp_path) == 0
    run_s, how = session.estimate(study, 6, bench, reports=tmp_path)
    assert run_s == pytest.approx(((39_100 + 10_000 / 128 / 3) / 100 + 60) * 1.2) and "bench" in how
    assert session.plan(540, 6, run_s) == 0  # the full horizon does not fit: the script falls back to 99 epochs


def test_finished_runs_plan_only_runs_stacked_the_same_way(tmp_path):
    """A run trained alone and runs trained 3 at a time take different wall times: the plan for
    ``--stack 3`` reads only the latter (records without ``stacked_runs`` ran alone)."""
    rows = [{"steps_total": 100, "steps_done": 100, "wall_s": 50.0},
            {"steps_total": 100, "steps_done": 100, "wall_s": 90.0, "stacked_runs": 3},
            {"steps_total": 100, "steps_done": 40, "wall_s": 200.0, "stacked_runs": 3}]  # stopped early
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.json").write_text(json.dumps({"rows": [row]}))
    records = session.cell_records(tmp_path)
    assert session.longest_finished_run_s(records, 100) == pytest.approx(50 * 1.1)
    assert session.longest_finished_run_s(records, 100, stack=3) == pytest.approx(90 * 1.1)
    assert session.longest_finished_run_s(records, 100, stack=6) is None


def test_fastcheck_stacked_units_keep_whole_seed_blocks():
    """--stacked 2: blocks of 2 seeds; per cell the plain runs one by one, then the fast runs as one unit."""
    todo = fastcheck.configs(cells=[("paper", "SVD", 16), ("stabkit", "SVD-Taylor", 8)], seeds=3, device="cpu")
    got = [[(c["method"], c["seed"], c["fast"]) for c in u] for u in fastcheck.units(todo, 2)]
    assert got == [[("analytic", 0, False)], [("analytic", 1, False)], [("analytic", 0, True), ("analytic", 1, True)],
                   [("taylor", 0, False)], [("taylor", 1, False)], [("taylor", 0, True), ("taylor", 1, True)],
                   [("analytic", 2, False)], [("analytic", 2, True)], [("taylor", 2, False)], [("taylor", 2, True)]]
    assert fastcheck.units(todo, 1) == [[c] for c in todo]
    assert sorted(map(str, (c for u in fastcheck.units(todo, 2) for c in u))) == sorted(map(str, todo))


def test_fastcheck_stacked_runs_the_fast_path_stacked(tmp_path, monkeypatch, capsys, synthetic):
    """A real (tiny) fastcheck with --stacked 2: the fast runs come from the stacked loop, recorded as such."""
    from stabkit.train import loop

    monkeypatch.setattr(fastcheck, "SHORT", {"max_steps": 2, "limit_images": 64, "limit_test": 16, "epochs": 1.0,
                                             "width": 0.125, "batch_size": 32})
    monkeypatch.setattr(fastcheck, "CELLS", [("stabkit", "SVD-Taylor", 4)])
    monkeypatch.setattr(loop, "device_data", lambda path, device: synthetic)
    assert fastcheck.main(["--out", str(tmp_path), "--jobs", "1", "--seeds", "2", "--device", "cpu", "--stacked", "2"]) == 0
    saved = json.loads((tmp_path / "fastcheck.json").read_text())
    assert sorted((r["seed"], r["fast"], r["stacked_runs"]) for r in saved["runs"]) == [
        (0, False, 1), (0, True, 2), (1, False, 1), (1, True, 2)]
    assert saved["fast_runs_by_stack"] == {"2": 2} and saved["whole_seeds"] == [0, 1]
    assert "2 at a time: 2" in (tmp_path / "fastcheck.md").read_text()
    with pytest.raises(SystemExit):
        fastcheck.main(["--out", str(tmp_path), "--stacked", "0"])
    assert "--stacked must be ≥ 1" in capsys.readouterr().err


def test_choose_stack_takes_the_fastest_way_to_run_at_least_jobs_runs():
    rows = [{"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 100.0},
            {"path": "fast, stacked", "runs": 6, "processes": 1, "steps_per_s": 300.0},
            {"path": "fast, stacked", "runs": 12, "processes": 1, "steps_per_s": 320.0},
            {"path": "fast, stacked", "runs": 3, "processes": 1, "steps_per_s": 900.0}]  # fewer runs than jobs: not a candidate
    assert session.choose_stack({"rows": rows}, 6) == 6    # 12 stacked is within 10 %: fewer runs, longer horizons
    rows[2]["steps_per_s"] = 400.0
    assert session.choose_stack({"rows": rows}, 6) == 12   # 12 stacked clearly faster in total
    assert session.choose_stack({"rows": rows[:1]}, 6) == 1  # no stacked row: processes
    rows[0]["steps_per_s"] = 390.0
    assert session.choose_stack({"rows": rows}, 6) == 1    # processes within 10 % of the best: 6 runs at once, not 12
    assert session.choose_stack({"rows": []}, 6) == 1


def test_choose_stack_in_a_window_keeps_only_the_ways_that_finish_the_most_runs(tmp_path, capsys):
    """A faster stack whose runs do not fit would start none: with a window, the choice is among the
    ways that finish the most whole runs, and only then the fastest. 13 epochs of the paper preset:
    5 083 steps + 14 test passes of 10 000/128/3 step-equivalents per run, + 60 s, × 1.2."""
    study = tmp_path / "surv.toml"
    study.write_text('[study]\nname = "surv"\nkind = "zca_cifar10_survival"\n[grid]\npreset = "paper"\nepochs = 13.0\nfast = true\n')
    rows = [{"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 98.0},
            {"path": "fast, stacked", "runs": 6, "processes": 1, "steps_per_s": 115.0},
            {"path": "fast, stacked", "runs": 12, "processes": 1, "steps_per_s": 140.0}]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": rows}))
    work = 13 * 391 + 14 * 10_000 / 128 / 3
    run_s = {1: (work / (98 / 6) + 60) * 1.2, 6: (work / (115 / 6) + 60) * 1.2, 12: (work / (140 / 12) + 60) * 1.2}
    assert [round(run_s[k]) for k in (1, 6, 12)] == [472, 413, 632]
    assert session.choose_stack({"rows": rows}, 6) == 12  # by rate alone: 140 steps/s, more than 10 % above 115

    def choose(seconds):
        assert session.main(["--choose-stack", str(study), "--seconds", str(seconds), "--jobs", "6", "--bench", str(bench),
                             "--reports", str(tmp_path)]) == 0
        return int(capsys.readouterr().out)

    assert choose(450) == 6    # only 6 stacked finishes its runs (413 s); 12 stacked (632 s) would start none
    assert choose(500) == 6    # 6 processes fit too (472 s): 6 runs either way, and 6 stacked is > 10 % faster
    assert choose(700) == 12   # 12 stacked finishes 12 runs
    assert choose(400) == 12   # none fits: the rate decides (the script then finds no whole wave)
    rows[1]["steps_per_s"] = 100.0
    bench.write_text(json.dumps({"rows": rows}))
    assert choose(500) == 1    # 6 runs either way and within 10 %: processes


def test_session_main_chooses_the_stack_from_the_bench_file_and_refuses_a_stack_below_one(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 100.0},
                                          {"path": "fast, stacked", "runs": 6, "processes": 1, "steps_per_s": 300.0}]}))
    args = ["study.toml", "--seconds", "0", "--jobs", "6", "--choose-stack"]
    assert session.main([*args, "--bench", str(bench)]) == 0
    assert capsys.readouterr().out.strip() == "6"
    assert session.main([*args, "--bench", str(tmp_path / "missing.json")]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "1" and "(no bench)" in out.err
    with pytest.raises(SystemExit) as exc:
        session.main(["study.toml", "--seconds", "10", "--jobs", "6", "--stack", "0"])
    assert exc.value.code == 2 and "--stack must be ≥ 1, got 0" in capsys.readouterr().err


def test_choose_stack_and_fit_epochs_read_each_file_once(tmp_path, capsys, monkeypatch):
    """The candidates' estimates share one read of the study, the cell files and the bench (they were
    read again for every candidate). The answer still comes from all three: by the bench alone 6
    stacked would win at 500 s (413 s a run, as in the test above), but a finished 6-stacked run of
    600 s (× 1.1 = 660 s) leaves only 6 processes (472 s) that finish runs in the window."""
    study = tmp_path / "surv.toml"
    study.write_text('[study]\nname = "surv"\nkind = "zca_cifar10_survival"\n[grid]\npreset = "paper"\nepochs = 13.0\nfast = true\n')
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"path": "fast", "runs": 6, "processes": 6, "steps_per_s": 98.0},
                                          {"path": "fast, stacked", "runs": 6, "processes": 1, "steps_per_s": 115.0},
                                          {"path": "fast, stacked", "runs": 12, "processes": 1, "steps_per_s": 140.0}]}))
    cells = tmp_path / "surv" / "cells"
    cells.mkdir(parents=True)
    (cells / "a.json").write_text(json.dumps({"rows": [{"steps_total": 5083, "steps_done": 5083, "wall_s": 600.0, "stacked_runs": 6}]}))
    (cells / "b.json").write_text(json.dumps({"rows": [{"steps_total": 999, "steps_done": 999, "wall_s": 9.0}]}))  # another horizon
    (cells / "c.json").write_text("{not json")
    assert session.estimate(study, 6, bench, tmp_path, stack=6)[0] == pytest.approx(660.0)
    reads = []
    read_text = session.Path.read_text
    monkeypatch.setattr(session.Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    assert session.main(["--choose-stack", str(study), "--seconds", "500", "--jobs", "6", "--bench", str(bench),
                         "--reports", str(tmp_path)]) == 0
    assert int(capsys.readouterr().out) == 1
    assert sorted(reads) == ["a.json", "b.json", "bench.json", "c.json", "surv.toml"]
    reads.clear()
    # one run of E epochs from the bench: ((391 E + (E + 1) · 10 000/128/3) / (98/6) + 60) × 1.2 s: 288 s for 7, 319 s for 8
    assert session.fit_epochs(study, 300, 6, bench, reports=tmp_path) == 7
    assert sorted(reads) == ["a.json", "b.json", "bench.json", "c.json", "surv.toml"]
