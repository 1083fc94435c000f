"""Issue 13, monitor: reference-counted patching across threads, nested watches, the user's
exception never masked by a log error, and only the watching thread recorded."""

import threading
import warnings

import pytest
import torch

import stabkit.torch as sktorch
from stabkit import monitor
from stabkit.monitor import grads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ORIGINALS = (torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd, sktorch.eigh)


def _patched_now():
    return (torch.linalg.eigh, torch.linalg.eigvalsh, torch.linalg.svd, sktorch.eigh)


def _sym(lams):
    return torch.diag(torch.tensor(lams, dtype=torch.float64))


def _run_interleaved(exit_order):
    """Thread a enters, thread b enters, then they exit in ``exit_order``; each calls eigh while
    both are inside and once more after the other one left (if it is still inside)."""
    entered = {name: threading.Event() for name in "ab"}
    go_exit = {name: threading.Event() for name in "ab"}
    exited = {name: threading.Event() for name in "ab"}
    rows, errors = {}, []

    def worker(name, lam):
        try:
            with monitor.watch() as mon:
                entered[name].set()
                torch.linalg.eigh(_sym([1.0, lam]))
                go_exit[name].wait(10)
                torch.linalg.eigh(_sym([1.0, lam]))
            rows[name] = mon.records
        except Exception as exc:  # noqa: BLE001 — reported by the test
            errors.append(exc)
        finally:
            exited[name].set()

    threads = {"a": threading.Thread(target=worker, args=("a", 2.0)), "b": threading.Thread(target=worker, args=("b", 5.0))}
    threads["a"].start()
    assert entered["a"].wait(10)
    threads["b"].start()
    assert entered["b"].wait(10)
    for name in exit_order:
        go_exit[name].set()
        assert exited[name].wait(10)
    for t in threads.values():
        t.join(10)
    assert not errors
    return rows


@pytest.mark.parametrize("exit_order", ["ab", "ba"])
def test_interleaved_watches_in_two_threads_restore_the_originals(exit_order):
    rows = _run_interleaved(exit_order)
    assert _patched_now() == ORIGINALS
    # each thread saw its own two calls, and only those (λ = (1, 2) in a, (1, 5) in b)
    assert rows["a"]["min_gap"].tolist() == [1.0, 1.0]
    assert rows["b"]["min_gap"].tolist() == [4.0, 4.0]


def test_nested_watches_both_record_every_call():
    with monitor.watch() as outer:
        torch.linalg.eigh(_sym([1.0, 2.0]))
        with monitor.watch() as inner:
            torch.linalg.eigh(_sym([1.0, 3.0]))
            sktorch.eigh(_sym([1.0, 4.0]), "taylor")
        torch.linalg.eigh(_sym([1.0, 5.0]))
        assert torch.linalg.eigh is not ORIGINALS[0]  # the outer watch is still active
    assert _patched_now() == ORIGINALS
    assert outer.records["min_gap"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert inner.records["min_gap"].tolist() == [2.0, 3.0]
    assert inner.records["fn"].tolist() == ["eigh", "stabkit.torch.eigh[taylor]"]


def test_a_run_monitor_also_reached_through_an_active_split_monitor_records_each_call_once():
    """A Monitor active on its own and also a run of an active SplitMonitor got two rows per call (the
    whole batch and its slice); it now gets its slice once, as from the split alone."""
    run_a, run_b = monitor.Monitor(), monitor.Monitor()
    split = monitor.SplitMonitor([run_a, run_b])
    batch = torch.stack([_sym([1.0, 3.0]), _sym([1.0, 8.0])])  # run a's matrix, then run b's
    with monitor.watching(run_a), monitor.watching(split):
        torch.linalg.eigh(batch)
    with monitor.watching(run_a):  # the split no longer active: run a records the whole call
        torch.linalg.eigh(batch)
    assert run_a.records["min_gap"].tolist() == [2.0, 2.0]
    assert run_a.records["batch"].tolist() == [1, 2]
    assert run_b.records["min_gap"].tolist() == [7.0]


def test_a_watch_on_the_log_file_of_an_active_watch_is_refused(tmp_path):
    """Nested watches on one file truncated each other's rows (3 steps in, 1 row in the file)."""
    log = tmp_path / "eig.csv"
    with monitor.watch(log_path=log) as outer:
        with pytest.raises(ValueError, match="already the log of an active"):
            with monitor.watch(log_path=tmp_path / "." / "eig.csv"):
                pass
        for _ in range(3):
            with monitor.watch():  # an inner watch without a log still records
                torch.linalg.eigh(_sym([1.0, 2.0]))
            outer.step()
    assert monitor.read_log(log)["step"].tolist() == [0, 1, 2]
    assert _patched_now() == ORIGINALS


def test_two_threads_opening_watches_on_one_log_at_once_are_refused(tmp_path, monkeypatch):
    """The shared-log check ran before the activation: thread a checked, thread b checked and
    activated while a was still building its monitor, and both then wrote one file. Checked
    with the activation, under the lock, the later one is refused."""
    from stabkit.monitor import hooks

    log, built, b_inside, a_tried = tmp_path / "eig.csv", threading.Event(), threading.Event(), threading.Event()
    errors, real_monitor = {}, hooks.Monitor

    def monitor_built_slowly_in_a(*args, **kwargs):
        mon = real_monitor(*args, **kwargs)
        if threading.current_thread().name == "a":
            built.set()
            b_inside.wait(5)
        return mon

    def run(name):
        try:
            if name == "b":
                built.wait(5)
            with monitor.watch(log_path=log):
                if name == "b":
                    b_inside.set()
                    a_tried.wait(5)
        except ValueError as exc:
            errors[name] = str(exc)
        finally:
            if name == "a":
                a_tried.set()

    monkeypatch.setattr(hooks, "Monitor", monitor_built_slowly_in_a)
    threads = [threading.Thread(target=run, args=(name,), name=name) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert list(errors) == ["a"] and "already the log of an active" in errors["a"]
    assert _patched_now() == ORIGINALS


def test_nested_swap_backward_applies_inside_only():
    A0 = torch.tensor([[2.0, 1e-3], [1e-3, 2.0 + 1e-5]], dtype=torch.float64)

    def grad():
        A = A0.clone().requires_grad_(True)
        lam, U = torch.linalg.eigh(A)
        (U[0, 0] * 3.0 + U[1, 0]).backward()
        return A.grad

    with monitor.watch() as outer:
        g_outer = grad()
        with monitor.watch(swap_backward="clip:tau=10"):
            g_inner = grad()
    A = A0.clone().requires_grad_(True)
    lam, U = sktorch.eigh(A, "clip", tau=10)
    (U[0, 0] * 3.0 + U[1, 0]).backward()
    torch.testing.assert_close(g_inner, A.grad)
    assert g_outer.abs().max() > 10 * g_inner.abs().max()
    assert outer.records["backward"].tolist() == ["analytic", "clip:tau=10"]


def test_a_log_write_error_never_replaces_the_users_exception(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's folder should be")
    with pytest.warns(UserWarning, match="log was not written"):
        with pytest.raises(RuntimeError, match="the user's own error"):
            with monitor.watch(log_path=blocker / "eig.csv"):
                torch.linalg.eigh(_sym([1.0, 2.0]))
                raise RuntimeError("the user's own error")
    assert _patched_now() == ORIGINALS


def test_a_log_write_error_without_a_user_exception_is_raised(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OSError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with monitor.watch(log_path=blocker / "eig.csv"):
            torch.linalg.eigh(_sym([1.0, 2.0]))
    assert _patched_now() == ORIGINALS


def test_a_log_write_error_mid_run_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OSError):
        with pytest.warns(UserWarning, match="writing the log failed"):
            with monitor.watch(log_path=blocker / "eig.csv") as mon:
                for lam in (2.0, 3.0, 4.0):
                    torch.linalg.eigh(_sym([1.0, lam]))
                    mon.step()  # the first flush fails; later steps still run and are recorded
    assert mon.records["min_gap"].tolist() == [1.0, 2.0, 3.0]


def _call_in_other_thread(lam):
    t = threading.Thread(target=torch.linalg.eigh, args=(_sym([1.0, lam]),))
    t.start()
    t.join(10)


def test_calls_from_unrelated_threads_are_not_recorded():
    with monitor.watch() as mon:
        torch.linalg.eigh(_sym([1.0, 2.0]))
        _call_in_other_thread(7.0)
    assert mon.records["min_gap"].tolist() == [1.0]


def test_all_threads_records_other_threads_too():
    with monitor.watch(all_threads=True) as mon:
        torch.linalg.eigh(_sym([1.0, 2.0]))
        _call_in_other_thread(7.0)
    assert sorted(mon.records["min_gap"].tolist()) == [1.0, 6.0]


def test_many_threads_entering_and_leaving_at_random():
    """8 threads × 15 watches each, entered and left while the others run: every watch records
    exactly its own thread's calls, and the originals are back at the end."""
    import random

    errors = []
    barrier = threading.Barrier(8)

    def worker(k):
        rng = random.Random(k)
        try:
            barrier.wait(10)
            for _ in range(15):
                calls = rng.randint(0, 3)
                with monitor.watch() as mon:
                    for _ in range(calls):
                        torch.linalg.eigvalsh(_sym([0.0, float(k + 1)]))
                gaps = mon.records["min_gap"].tolist()
                if gaps != [float(k + 1)] * calls:
                    errors.append((k, calls, gaps))
                torch.linalg.eigvalsh(_sym([0.0, 1.0]))  # maybe patched by another thread: must pass through
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _patched_now() == ORIGINALS


def test_a_failure_of_the_monitors_bookkeeping_never_breaks_the_call(monkeypatch):
    from stabkit.monitor import hooks

    monkeypatch.setattr(hooks, "_warned_internal", False)

    def broken_log(self, *args, **kwargs):
        raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(monitor.Monitor, "_log", broken_log)
    with pytest.warns(UserWarning, match="could not be logged"):
        with monitor.watch():
            lam, U = torch.linalg.eigh(_sym([1.0, 2.0]))
    assert lam.tolist() == [1.0, 2.0]


def test_the_monitors_own_warnings_never_raise_where_warnings_are_errors(tmp_path, monkeypatch, capsys):
    """Under -W error (or a test suite's filterwarnings = error) the monitor's warnings about itself
    used to raise into the user's eigh call, optimizer step, or in place of the block's own exception;
    they now go to stderr."""
    from stabkit.monitor import hooks

    monkeypatch.setattr(hooks, "_warned_internal", False)
    monkeypatch.setattr(monitor.Monitor, "_log", lambda self, *a, **k: 1 / 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with monitor.watch():
            lam, U = torch.linalg.eigh(_sym([1.0, 2.0]))  # the call goes through
        assert lam.tolist() == [1.0, 2.0]
        monkeypatch.undo()
        (tmp_path / "not-a-dir").write_text("")
        with pytest.raises(KeyError, match="the user's"):  # the block's own exception, not the warning
            with monitor.watch(log_path=tmp_path / "not-a-dir" / "eig.csv") as mon:
                torch.linalg.eigh(_sym([1.0, 2.0]))
                mon.step()  # the write fails here: warned, not raised
                raise KeyError("the user's")
    err = capsys.readouterr().err
    assert "could not be logged (ZeroDivisionError" in err and "writing the log failed" in err


def test_a_swapped_eigh_keeps_torchs_input_contract():
    """swap_backward changes the backward only: torch's error type on a NaN input (code catching
    torch.linalg.LinAlgError still works) and torch's reading of the lower triangle alone."""
    nan = torch.full((3, 3), float("nan"), dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.eigh(nan)  # what torch itself does on this machine
    with pytest.raises(torch.linalg.LinAlgError):
        with monitor.watch(swap_backward="taylor") as mon:
            torch.linalg.eigh(nan)
    assert mon.records["backward"].tolist() == ["taylor"] and mon.records["error"].str.startswith("_LinAlgError").all()
    L = torch.tril(torch.arange(1.0, 10.0, dtype=torch.float64).reshape(3, 3)) + 5 * torch.eye(3, dtype=torch.float64)
    lam_torch = torch.linalg.eigh(L).eigenvalues
    with monitor.watch(swap_backward="taylor") as mon:
        lam = torch.linalg.eigh(L).eigenvalues
    torch.testing.assert_close(lam, lam_torch, rtol=0, atol=0)
    sym = torch.tril(L) + torch.tril(L, -1).mT  # the matrix torch decomposes
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(sym))
    assert mon.records["backward"].tolist() == ["taylor"]



@pytest.mark.parametrize("A", [torch.ones(3, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64),
                               torch.zeros(0, 0, dtype=torch.float64), torch.zeros(2, 0, 0)],
                         ids=["1-D", "non-square", "0x0", "batch-of-0x0"])
def test_a_swapped_eigh_gives_torchs_answer_to_a_malformed_shape(A):
    """A shape torch refuses (its RuntimeError, its message) or decomposes (0×0) is torch's alone:
    swap_backward never turns it into stabkit's InputError."""
    def call():
        try:
            return tuple(t.shape for t in torch.linalg.eigh(A))
        except Exception as exc:  # noqa: BLE001
            return type(exc), str(exc)

    expected = call()
    with monitor.watch(swap_backward="taylor"):
        assert call() == expected


@pytest.mark.parametrize("keyword", ["input", "A"])
def test_a_swapped_eigh_takes_the_keywords_torch_takes(keyword):
    """torch.linalg.eigh(input=X) is swapped; torch.linalg.eigh(A=X) is torch's TypeError, watched or not."""
    X = _sym([1.0, 2.0])
    try:
        expected = torch.linalg.eigh(**{keyword: X}).eigenvalues.tolist()
    except TypeError as exc:
        expected = str(exc)
    with monitor.watch(swap_backward="taylor") as mon:
        try:
            got = torch.linalg.eigh(**{keyword: X}).eigenvalues.tolist()
        except TypeError as exc:
            got = str(exc)
    assert got == expected
    assert mon.records["backward"].tolist() == ["taylor" if isinstance(expected, list) else "analytic"]


class _HookMidRead(torch.Tensor):
    """A row value whose first ``.item()`` lets ``hook`` run in another thread meanwhile (waiting for
    it at most 0.5 s): a read of the rows and a backward hook then overlap on every run."""

    hook, threads = None, []

    def item(self):
        hook, _HookMidRead.hook = _HookMidRead.hook, None
        if hook is not None:
            t = threading.Thread(target=hook)
            _HookMidRead.threads.append(t)
            t.start()
            t.join(0.5)  # a reader that holds the rows' lock makes the hook wait for it
        return super().item()


@pytest.mark.parametrize("read", ["records", "flush"])
def test_a_gradient_hook_in_another_thread_while_rows_are_read(tmp_path, read):
    """With all_threads=True (what `stabkit watch` uses) a backward in another thread adds a gradient
    norm to a row while mon.records or mon.step()'s flush reads it: neither raises, nothing is lost."""
    g_lam = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g_in = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    with monitor.watch(log_path=tmp_path / "eig.csv", all_threads=True) as mon:
        torch.linalg.eigh(_sym([1.0, 2.0]))
        row = mon._rows[0]
        _HookMidRead.threads = []
        on_out = grads.GradNorms([row], "_grad_norm", mon._lock, accumulate=True)
        on_in = grads.GradNorms([row], "_grad_in_norm", mon._lock, accumulate=False)
        _HookMidRead.hook = lambda: (on_out(g_lam), on_in(g_in))
        row["min_gap"] = row["min_gap"].as_subclass(_HookMidRead)
        if read == "records":
            assert mon.records["min_gap"].tolist() == [1.0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # not even a warning: the log is written
                mon.step()
        for t in _HookMidRead.threads:
            t.join(5)
    assert len(_HookMidRead.threads) == 1 and not _HookMidRead.threads[0].is_alive()
    got = mon.records.iloc[0]
    assert (got["min_gap"], got["grad_norm"], got["grad_in_norm"]) == (1.0, pytest.approx(5 ** 0.5), pytest.approx(5.0))
    assert mon.log_error is None


def test_a_failure_to_make_the_rows_never_reaches_the_users_step(tmp_path, monkeypatch):
    """flush is called from mon.step() and the optimizer's step: whatever fails in it is warned about
    and turns the log off, as a write error does."""
    def broken(row):
        raise RuntimeError("materialize bug")

    monkeypatch.setattr(monitor.Monitor, "_materialize", staticmethod(broken))
    with pytest.raises(RuntimeError, match="materialize bug"):  # raised at exit, as a write error is
        with pytest.warns(UserWarning, match="writing the log failed .*materialize bug"):
            with monitor.watch(log_path=tmp_path / "eig.csv") as mon:
                for lam in (2.0, 3.0):
                    torch.linalg.eigh(_sym([1.0, lam]))
                    mon.step()  # does not raise
    assert len(mon._rows) == 2 and isinstance(mon.log_error, RuntimeError)
