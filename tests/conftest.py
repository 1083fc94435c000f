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
def float64():
    """Networks and the training loop's arrays in float64 (torch's default dtype inside the test):
    runs computed two ways then agree to the rounding of sums taken in another order, so any mix-up
    of runs, steps or data shows."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture()
def exact_ties(monkeypatch):
    """Training runs whose ZCA layer sees all its eigenvalues tie exactly, on any LAPACK, and meets them
    with a nonzero eigenvector gradient: the layer's covariance Σ + εI is replaced by 0·Σ + εI, a
    diagonal matrix every eigensolver returns exactly, which still depends on the input (∂L/∂Σ reaches
    conv1). The centred samples stay nonzero, so Uᵀ∂L/∂U is nonzero at the tied pairs and the analytic
    rule's 1/0 there is non-finite. (Zeroing conv1 also gives εI, but then the samples, ∂L/∂W and
    ∂L/∂U are exactly 0, and the exact rule's gradient at the tie is finite.)"""
    import torch

    from stabkit.train import zca

    def tied(covariance):
        def wrapped(xg, eps, *args):
            mean, xc, cov = covariance(xg, eps, *args)
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            return mean, xc, cov * 0 + eps * eye
        return wrapped

    monkeypatch.setattr(zca, "group_covariance", tied(zca.group_covariance))
    monkeypatch.setattr(zca, "block_covariance", tied(zca.block_covariance))


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


def write_tiny_batches(parent):
    """A torchvision-style ``cifar-10-batches-py`` folder in ``parent`` with 16 random images per batch file."""
    import pickle

    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 16).tolist()}, fh)
    return folder


@pytest.fixture()
def tiny_batches(tmp_path):
    """A torchvision-style ``cifar-10-batches-py`` folder with 16 random images per batch file."""
    return write_tiny_batches(tmp_path)

