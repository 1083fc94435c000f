"""stabkit.monitor.sites: instances of one layer that call the eigensolver from one line are told apart."""

import math

import pytest
import torch
from torch import nn

from stabkit import monitor
from stabkit.train.zca import ZCAWhitening

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 1e-4


def _two_zca_net():
    """ZCA, a 1×1 conv scaling channel 1 by 2, ZCA: on :func:`_tied_input` the first layer's Σ is
    (1 + ε)·I (an exact tie: gap 0), the second's diag(1, 4)/(1 + ε) + εI (gap 3/(1 + ε))."""
    conv = nn.Conv2d(2, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))[:, :, None, None])
    return nn.Sequential(ZCAWhitening(2, d=2, eps=EPS, dtype="float64"), conv, ZCAWhitening(2, d=2, eps=EPS, dtype="float64"))


def _tied_input():
    """4 samples of 2 channels, ±1 patterns with mean 0, variance 1, covariance 0: exact in binary."""
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return x[:, :, None, None].requires_grad_(True)


def test_two_zca_layers_of_one_network_are_two_sites_each_with_its_own_spectrum():
    """Both layers call the solver from one line of zca.py: they were one site, 2 calls per step, the
    min gap 0 (layer 0) beside the λ_min and gradient of layer 2 in one report row."""
    net, x = _two_zca_net(), _tied_input()
    with monitor.watch() as mon:
        for _ in range(3):
            net(x).square().sum().backward()
            mon.step()
    df = mon.records
    first, second = df["site"].iloc[0], df["site"].iloc[1]
    assert first.split("/")[-1].startswith("zca.py:") and second == f"{first} [2]"  # [2]: its name in the Sequential
    assert df.groupby("site").size().to_dict() == {first: 3, second: 3}  # one row per layer and step
    tied, other = df[df["site"] == first], df[df["site"] == second]
    assert (tied["min_gap"] == 0).all() and (tied["max_K"] == math.inf).all()  # the exact tie of (1 + ε)·I
    assert tied["lam_min"].tolist() == pytest.approx([1 + EPS] * 3, rel=1e-12)
    assert other["min_gap"].tolist() == pytest.approx([3 / (1 + EPS)] * 3, rel=1e-12)
    assert other["lam_min"].tolist() == pytest.approx([1 / (1 + EPS) + EPS] * 3, rel=1e-12)


class _Eigh(nn.Module):
    """A layer that is its own model: the one calling torch.linalg.eigh."""

    def forward(self, A):
        return torch.linalg.eigh(A)[0]


def test_one_instance_keeps_file_line_and_another_called_from_the_same_line_is_numbered():
    """Two models called from one line (no outer module to name them in): ``Class#k``. One instance
    called twice in a step stays one site."""
    models = [_Eigh(), _Eigh()]
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    with monitor.watch() as mon:
        for model in [models[0], models[0], models[1]]:
            model(A)
    sites = mon.records["site"].tolist()
    assert sites[0] == sites[1] and sites[0].endswith(f"test_monitor_sites.py:{_line('torch.linalg.eigh(A)[0]')}")
    assert sites[2] == f"{sites[0]} [_Eigh#2]"


def test_one_name_in_two_models_is_numbered_instead():
    """Three models with their layer at ``0``: the second is ``[0]``, the third may not be ``[0]`` too."""
    models = [nn.Sequential(_Eigh()) for _ in range(3)]
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    with monitor.watch() as mon:
        for model in models:
            model(A)
    plain = mon.records["site"].iloc[0]
    assert mon.records["site"].tolist() == [plain, f"{plain} [0]", f"{plain} [_Eigh#3]"]


def test_a_module_that_is_collected_gives_its_site_back():
    """A model rebuilt inside one watch (the old one gone) logs under the plain file:line again."""
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    with monitor.watch() as mon:
        _Eigh()(A)
        _Eigh()(A)  # the first instance is no longer alive
    assert mon.records["site"].nunique() == 1


def _line(marker):
    return next(i for i, text in enumerate(open(__file__), 1) if marker in text and "_line(" not in text)
