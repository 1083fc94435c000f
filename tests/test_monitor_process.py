"""stabkit.monitor.process in this process: one process monitor, however often it is started."""

import pytest
import torch

from stabkit.monitor import hooks, process
from stabkit.monitor.report import load_logs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_second_start_returns_the_running_monitor_and_every_call_is_logged_once(tmp_path):
    """Started twice (sitecustomize run again), every call was logged twice, into eig-rank0.csv and an
    eig-rank0-pid….csv beside it: 6 rows for 3 calls in the report's view of the folder."""
    first = process.start_process_monitor(tmp_path)
    try:
        again = process.start_process_monitor(tmp_path)
        assert again is first
        with pytest.raises(RuntimeError, match="already watched"):
            process.start_process_monitor(tmp_path / "elsewhere")
        p = torch.nn.Parameter(torch.zeros(()))
        opt = torch.optim.SGD([p], lr=0.1)
        for gap in (1.0, 2.0, 4.0):
            torch.linalg.eigvalsh(torch.diag(torch.tensor([1.0, 1.0 + gap], dtype=torch.float64)))
            opt.step()
    finally:
        for mon in [m for m in hooks._active if isinstance(m.log, process._ProcessLog)]:
            process.stop_process_monitor(mon)
    assert hooks._active == ()
    rows = load_logs(tmp_path)
    assert sorted(rows["min_gap"].tolist()) == [1.0, 2.0, 4.0]
    again = process.start_process_monitor(tmp_path / "after")  # stopped: a new one starts
    try:
        assert again is not first
    finally:
        process.stop_process_monitor(again)
