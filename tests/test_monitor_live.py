"""The monitor's live log: flushed every N steps, a row for calls that raise, optimizer steps
counted when the user never calls mon.step(), one file per DDP rank."""

import math
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import stabkit.torch as sktorch
from stabkit import monitor
from stabkit.errors import InputError
from stabkit.monitor import hooks, process as monitor_process
from stabkit.monitor.log import COLUMNS, read_log, rank_file_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sym(lams):
    return torch.diag(torch.tensor(lams, dtype=torch.float64))


def test_csv_is_flushed_every_n_steps_while_the_block_runs(tmp_path):
    path = tmp_path / "eig.csv"
    seen = []
    with monitor.watch(log_path=path, every=2) as mon:
        for step in range(5):
            torch.linalg.eigh(_sym([1.0, 2.0 + step]))
            torch.linalg.eigh(_sym([1.0, 3.0]))
            mon.step()
            seen.append(len(read_log(path)) if path.exists() else 0)
    # two calls per step; after steps 2 and 4 are finished, the rows of all finished steps are in
    assert seen == [0, 4, 4, 8, 8]
    df = read_log(path)
    assert len(df) == 10 and list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df["step"].tolist() == [s for s in range(5) for _ in range(2)]
    assert df["min_gap"].tolist()[::2] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_parquet_gets_one_row_group_per_flush(tmp_path):
    path = tmp_path / "eig.parquet"
    with monitor.watch(log_path=path, every=1) as mon:
        for lam in (2.0, 3.0, 4.0):
            torch.linalg.eigh(_sym([1.0, lam]))
            mon.step()
    assert pq.ParquetFile(path).num_row_groups == 3
    assert pd.read_parquet(path)["min_gap"].tolist() == [1.0, 2.0, 3.0]


def test_a_call_that_raises_is_logged_and_flushed_at_once(tmp_path, monkeypatch):
    """eigh failing on a NaN input is LAPACK-dependent, so a stand-in original raises as it does."""

    def failing_eigh(A, *args, **kwargs):
        if not torch.isfinite(A).all():
            raise torch._C._LinAlgError("linalg.eigh: The algorithm failed to converge (error code: 2).")
        return real_eigh(A, *args, **kwargs)

    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    path = tmp_path / "eig.csv"
    bad = torch.full((3, 3), float("nan"), dtype=torch.float64)
    with pytest.raises(torch._C._LinAlgError, match="failed to converge"):
        with monitor.watch(log_path=path, every=100) as mon:
            torch.linalg.eigh(_sym([1.0, 2.0]))
            mon.step()
            try:
                torch.linalg.eigh(bad)
            finally:
                on_disk = read_log(path)  # before the block exits: flushed with the error
    assert len(on_disk) == 2
    err = on_disk.iloc[1]
    assert err["error"].startswith("_LinAlgError: linalg.eigh: The algorithm failed to converge")
    assert err["step"] == 1 and err["n"] == 3 and err["input_nonfinite"] and err["nonfinite"]
    assert math.isnan(err["lam_min"])
    assert on_disk.iloc[0]["error"] == "" and not on_disk.iloc[0]["nonfinite"]


def test_a_genuine_torch_error_is_logged_and_propagates():
    with pytest.raises(RuntimeError):
        with monitor.watch() as mon:
            torch.linalg.eigh(torch.zeros(2, 3))  # not square
    (row,) = mon.records.itertuples()
    assert row.error.startswith(("RuntimeError", "_LinAlgError")) and row.n == 3 and not row.input_nonfinite


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=torch.float64)

    def forward(self, x):
        h = self.lin(x)
        lam, U = torch.linalg.eigh(h.T @ h + torch.eye(3, dtype=torch.float64))
        return lam.sum() + U.abs().sum()


def _train(steps, optimizers, manual=False):
    torch.manual_seed(0)
    net = Net()
    opts = [torch.optim.SGD(net.parameters(), lr=1e-3) for _ in range(optimizers)]
    x = torch.randn(8, 3, dtype=torch.float64)
    with monitor.watch() as mon:
        for _ in range(steps):
            net(x).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
            if manual:
                mon.step(10)
    return mon


def test_steps_are_optimizer_steps_when_mon_step_is_never_called():
    assert _train(3, optimizers=1).records["step"].tolist() == [0, 1, 2]
    assert _train(3, optimizers=2).records["step"].tolist() == [0, 1, 2]  # two optimizers, one iteration each
    assert _train(3, optimizers=1, manual=True).records["step"].tolist() == [0, 10, 20]  # mon.step() wins
    # the global optimizer hook is removed with the last watch
    from torch.optim import optimizer as optim_mod

    assert hooks._optimizer_hook not in list(optim_mod._global_optimizer_post_hooks.values())


def test_grad_norm_of_a_step_reaches_the_log(tmp_path):
    path = tmp_path / "eig.csv"
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(8, 3, dtype=torch.float64)
    with monitor.watch(log_path=path) as mon:
        net(x).backward()
        opt.step()
        on_disk = read_log(path)
        expected = mon.records.iloc[0]["grad_norm"]
    # ∂L/∂λ = 1 (3 entries), ∂L/∂U = sign(U) (9 entries, no zeros): ‖·‖ = √12
    assert on_disk.iloc[0]["grad_norm"] == pytest.approx(math.sqrt(12.0)) == expected


def test_tensorboard_is_flushed_during_the_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with monitor.watch(tensorboard_dir=tmp_path / "tb") as mon:
        torch.linalg.eigh(_sym([1.0, 1.25]))
        mon.step()
        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        (tag,) = [t for t in events.Tags()["scalars"] if t.endswith("/max_K")]
        assert [e.value for e in events.Scalars(tag)] == [pytest.approx(4.0)]


@pytest.mark.parametrize("env, expected", [({}, "eig-rank0.csv"), ({"RANK": "3"}, "eig-rank3.csv"),
                                           ({"LOCAL_RANK": "1"}, "eig-rank1.csv"), ({"RANK": "2", "LOCAL_RANK": "0"}, "eig-rank2.csv")])
def test_one_log_per_rank(monkeypatch, env, expected):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert rank_file_name() == expected


def test_process_monitor_writes_its_rank_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "5")
    mon = monitor_process.start_process_monitor(tmp_path, every=1)
    try:
        torch.linalg.eigh(_sym([1.0, 3.0]))
        mon.step()
        sktorch.eigh(_sym([1.0, 4.0]), "taylor")
    finally:
        assert monitor_process.stop_process_monitor(mon) is None
    assert os.listdir(tmp_path) == ["eig-rank5.csv"]
    df = read_log(tmp_path / "eig-rank5.csv")
    assert df["fn"].tolist() == ["eigh", "stabkit.torch.eigh[taylor]"] and df["step"].tolist() == [0, 1]
    assert df["backward"].tolist() == ["analytic", "taylor"]
    assert mon.records.empty  # keep_records=False: flushed rows are not kept in memory


def test_read_log_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "eig.csv"
    with monitor.watch(log_path=path):
        torch.linalg.eigh(_sym([1.0, 2.0]))
    with open(path, "a") as f:
        f.write("3,site.py:1,eigh,analytic,1,2,float")  # a write cut mid-line
    assert len(read_log(path)) == 1


def test_grad_in_norm_is_the_gradient_the_backward_hands_on():
    X = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        A = X * 1.5  # not a leaf: the monitor hooks its gradient
        A.retain_grad()
        lam, U = torch.linalg.eigh(A)
        (lam[1] + U[0, 0] ** 2).backward()
    row = mon.records.iloc[0]
    assert row["grad_in_norm"] == pytest.approx(float(torch.linalg.vector_norm(A.grad)), rel=1e-12)
    assert not row["nonfinite"]


def test_a_non_finite_gradient_made_by_the_analytic_backward_is_flagged():
    X = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with monitor.watch() as mon:
        lam, U = torch.linalg.eigh(X * 2.0)  # λ = 2, 2, 2: K̃ = 1/0
        U[:, 0].sum().backward()
    row = mon.records.iloc[0]
    assert row["max_K"] == math.inf and row["grad_norm"] == pytest.approx(math.sqrt(3.0))  # the incoming gradient is finite
    assert not math.isfinite(row["grad_in_norm"]) and row["nonfinite"] and not row["input_nonfinite"]


def test_process_monitor_from_environment_swaps_the_backward(tmp_path, monkeypatch):
    """What `stabkit watch --swap-backward clip:tau=10 --every 2` hands to the watched process."""
    import json

    monkeypatch.setenv(monitor_process.ENV_VAR, json.dumps({"log_dir": str(tmp_path), "every": 2, "swap_backward": "clip:tau=10"}))
    A0 = torch.tensor([[2.0, 1e-3], [1e-3, 2.0 + 1e-5]], dtype=torch.float64)
    mon = monitor_process.start_from_environment()
    try:
        A = A0.clone().requires_grad_(True)
        lam, U = torch.linalg.eigh(A)
        (U[0, 0] * 3.0 + U[1, 0]).backward()
        assert mon.every == 2 and mon.all_threads
    finally:
        assert monitor_process.stop_process_monitor(mon) is None
    B = A0.clone().requires_grad_(True)
    lam, U = sktorch.eigh(B, "clip", tau=10)
    (U[0, 0] * 3.0 + U[1, 0]).backward()
    torch.testing.assert_close(A.grad, B.grad)
    df = read_log(tmp_path / "eig-rank0.csv")
    assert df["backward"].tolist() == ["clip:tau=10"] and df["bound"].tolist() == [pytest.approx(10.0)]


def _child_calls_eigh():
    torch.linalg.eigh(_sym([1.0, 9.0]))
    for mon in hooks._active:
        mon.close()  # a worker leaves through os._exit: flush explicitly, as its exit would


def test_a_forked_child_never_writes_into_the_parents_log(tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.setenv("RANK", "0")
    mon = monitor_process.start_process_monitor(tmp_path, every=1)
    try:
        torch.linalg.eigh(_sym([1.0, 3.0]))
        mon.step()
        child = multiprocessing.get_context("fork").Process(target=_child_calls_eigh)
        child.start()
        child.join(60)
        assert child.exitcode == 0
        torch.linalg.eigh(_sym([1.0, 4.0]))
    finally:
        assert monitor_process.stop_process_monitor(mon) is None
    assert read_log(tmp_path / "eig-rank0.csv")["min_gap"].tolist() == [2.0, 3.0]  # the parent's rows, intact
    (child_log,) = [p for p in tmp_path.iterdir() if p.name.startswith("eig-rank0-pid")]
    assert child_log.name == f"eig-rank0-pid{child.pid}.csv"
    assert read_log(child_log)["min_gap"].tolist() == [8.0]
    assert not hasattr(torch.linalg.eigh, "__wrapped__") and hooks._originals is None  # the originals are back


def _worker_calls_eigh():
    torch.linalg.eigh(_sym([1.0, 6.0]))  # and leaves through os._exit, past atexit, as a DataLoader worker does


def test_a_multiprocessing_child_flushes_its_log_on_its_way_out(tmp_path, monkeypatch):
    """A forked multiprocessing child (a DataLoader worker) ends in os._exit: its monitor is finished
    by multiprocessing's exit finalizers (it used to write nothing at all)."""
    import multiprocessing

    monkeypatch.setenv("RANK", "0")
    mon = monitor_process.start_process_monitor(tmp_path, every=1)
    try:
        child = multiprocessing.get_context("fork").Process(target=_worker_calls_eigh)
        child.start()
        child.join(60)
        assert child.exitcode == 0
    finally:
        assert monitor_process.stop_process_monitor(mon) is None
    assert read_log(tmp_path / f"eig-rank0-pid{child.pid}.csv")["min_gap"].tolist() == [5.0]


def test_a_log_path_with_another_suffix_is_an_input_error(tmp_path):
    before = torch.linalg.eigh
    with pytest.raises(InputError, match=r"\.csv or \.parquet"):
        with monitor.watch(log_path=tmp_path / "eig.txt"):
            pass
    assert torch.linalg.eigh is before


@pytest.mark.parametrize("every", [0, -3, 1.5, 2.0, True, "2", None])
def test_every_that_is_not_a_positive_integer_is_an_input_error_before_anything_is_patched_or_written(tmp_path, every):
    before = torch.linalg.eigh
    with pytest.raises(InputError, match=rf"every \(optimizer steps between log flushes\) must be an integer ≥ 1, got {every!r}"):
        with monitor.watch(log_path=tmp_path / "eig.csv", every=every):
            pass
    assert torch.linalg.eigh is before
    assert list(tmp_path.iterdir()) == []


def test_rank_placeholder_in_log_path(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "7")
    with monitor.watch(log_path=tmp_path / "eig-{rank}.csv"):
        torch.linalg.eigh(_sym([1.0, 2.0]))
    assert os.listdir(tmp_path) == ["eig-7.csv"] and len(read_log(tmp_path / "eig-7.csv")) == 1


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-1000, 1000), min_size=3, max_size=3, unique=True), min_size=1, max_size=3))
def test_gap_columns_match_a_direct_computation(spectra):
    """Diagonal matrices (eigenvalues exact in any LAPACK): the row's numbers from sorted lists."""
    A = torch.stack([torch.diag(torch.tensor(s, dtype=torch.float64)) for s in spectra])
    with monitor.watch() as mon:
        torch.linalg.eigh(A)
    row = mon.records.iloc[0]
    gaps = [min(b - a for a, b in zip(sorted(s), sorted(s)[1:])) for s in spectra]
    rel = [g / max(abs(v) for v in s) for g, s in zip(gaps, spectra)]
    assert row["batch"] == len(spectra) and row["min_gap"] == min(gaps)
    assert row["min_rel_gap"] == pytest.approx(min(rel), rel=1e-15) and row["max_K"] == pytest.approx(1 / min(gaps), rel=1e-15)
    assert row["lam_min"] == min(min(s) for s in spectra)


def test_swap_backward_leaves_complex_input_to_torch():
    H = torch.tensor([[2.0, 1j], [-1j, 3.0]], dtype=torch.complex128)
    with monitor.watch(swap_backward="taylor") as mon:
        lam, U = torch.linalg.eigh(H)
    torch.testing.assert_close(lam, torch.tensor([2.5 - 5 ** 0.5 / 2, 2.5 + 5 ** 0.5 / 2], dtype=torch.float64))
    assert mon.records["backward"].tolist() == ["analytic"]


def test_rows_hold_no_tensors_once_flushed(tmp_path):
    """A watch keeps every row for ``records``; once logged a row holds Python scalars, not 0-d
    tensors (device memory under CUDA), and a backward run later still reaches ``records``."""
    A = _sym([1.0, 3.0]).requires_grad_(True)
    with monitor.watch(log_path=tmp_path / "eig.csv") as mon:
        lam, U = torch.linalg.eigh(A * 1.0)
        mon.step()  # the step's row is flushed
        assert [k for row in mon._rows for k, v in row.items() if isinstance(v, torch.Tensor)] == []
        lam, U = torch.linalg.eigh(A * 1.0)
        lam2, _ = torch.linalg.eigh(A * 1.0)
        mon.step()
        assert [k for row in mon._rows for k, v in row.items() if isinstance(v, torch.Tensor)] == []
        (lam * torch.tensor([3.0, 4.0], dtype=torch.float64)).sum().backward()  # after its step was logged
    df = mon.records
    assert df["min_gap"].tolist() == [2.0, 2.0, 2.0]
    assert df["grad_norm"].tolist()[1] == pytest.approx(5.0)  # ‖(3, 4)‖
    assert math.isnan(df["grad_norm"].tolist()[2])
    assert read_log(tmp_path / "eig.csv")["grad_norm"].isna().all()  # logged before that backward


def test_a_second_live_process_of_the_same_rank_gets_its_own_file(tmp_path, monkeypatch):
    """Two runs started into one --log folder: the second used to truncate the first's eig-rank0.csv
    and append into it, interleaving two runs' rows in one log. A file held by a live process is left
    alone; the second writes eig-rank0-pid{PID}.csv."""
    import fcntl

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    theirs = tmp_path / "eig-rank0.csv"
    with monitor.watch(log_path=theirs):  # the other run's rows so far
        torch.linalg.eigvalsh(_sym([1.0, 3.0]))
    before = theirs.read_bytes()
    with open(theirs, "a") as held:  # that run is alive: it holds its file as a process monitor does
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        mon = monitor_process.start_process_monitor(tmp_path, every=1)
        try:
            torch.linalg.eigvalsh(_sym([1.0, 5.0]))
            mon.step()
        finally:
            assert monitor_process.stop_process_monitor(mon) is None
    assert theirs.read_bytes() == before
    assert read_log(theirs)["min_gap"].tolist() == [2.0]
    assert read_log(tmp_path / f"eig-rank0-pid{os.getpid()}.csv")["min_gap"].tolist() == [pytest.approx(4.0)]


@pytest.mark.parametrize("column, old, new, kind", [
    ("min_gap", "0.5", "abc", "number"),
    ("step", "1", "one", "number"),
    ("nonfinite", "True", "maybe", "true/false"),
])
def test_text_in_a_number_or_flag_column_of_a_log_is_named(tmp_path, column, old, new, kind):
    """A damaged or edited cell was read as NaN (a number column) or False (a flag, so a non-finite
    call "maybe" became finite) and the report went on; it is an InputError naming file, column, row."""
    from stabkit.errors import InputError
    from stabkit.monitor.log import frame

    rows = [{"step": s, "site": "a.py:1", "fn": "eigh", "backward": "analytic", "batch": 1, "n": 2,
             "dtype": "float64", "min_gap": 0.5, "nonfinite": True, "error": ""} for s in (0, 1)]
    path = tmp_path / "eig-rank0.csv"
    frame(rows).to_csv(path, index=False)
    assert len(read_log(path)) == 2  # the log as written reads
    header, first, second = path.read_text().splitlines()
    cells = second.split(",")
    where = header.split(",").index(column)
    assert cells[where] == old
    cells[where] = new
    path.write_text("\n".join([header, first, ",".join(cells)]) + "\n")
    with pytest.raises(InputError, match=rf"eig-rank0.csv: column '{column}' of row 2 \(after the header\) holds "
                                         rf"'{new}', not a {kind}"):
        read_log(path)
