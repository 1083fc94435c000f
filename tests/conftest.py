"""Shared fixtures: an isolated reference cache and small matrices with known spectra."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes ground truths to its own cache, never the user's."""
    monkeypatch.setenv("STABKIT_CACHE", str(tmp_path_factory.getbasetemp() / "reference-cache"))


def build(lam, seed=0):
    """Symmetric float64 matrix Q diag(lam) Qᵀ with a seeded orthogonal Q."""
    lam = np.asarray(lam, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread: on a shared 2-core machine torch's pool oversubscribes badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def exact_ties(monkeypatch):
    """Training runs whose ZCA layer sees all its eigenvalues tie exactly, on any LAPACK: conv1's weight
    is zeroed after its init, so the layer's input is exactly 0 and its covariance Σ + εI is εI, a
    diagonal matrix every eigensolver returns exactly (a large ε alone is not enough: the off-diagonal
    covariances stay O(1), and whether the computed eigenvalues of εI + O(1) tie depends on the LAPACK)."""
    import torch

    from stabkit.train import loop

    real = loop.ResNet18

    def zero_stem(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.conv1.weight.zero_()
        return model

    monkeypatch.setattr(loop, "ResNet18", zero_stem)


#: the smallest training run that still exercises the loop (tests of stabkit.train)
SMALL_RUN = {"width": 0.125, "d": 4, "batch_size": 32, "limit_test": 64, "check_every": 1}


@pytest.fixture(scope="module")
def synthetic():
    """CIFAR-shaped uint8 data; class k images are brighter in channel k % 3 (learnable, cheap)."""
    import torch

    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 128, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        x[torch.arange(n), y % 3] += 100
        return x, y

    return {"train": split(256), "test": split(64)}


@pytest.fixture()
def tiny_batches(tmp_path):
    """A torchvision-style ``cifar-10-batches-py`` folder with 16 random images per batch file."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 16).tolist()}, fh)
    return folder

