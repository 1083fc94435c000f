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
