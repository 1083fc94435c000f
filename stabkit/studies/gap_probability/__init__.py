"""Study kind ``gap_probability``: how often a d×d covariance has two eigenvalues closer than τ.

Reproduces the setting of Fig. 1(a) of Wang, Chen, Ma, Salzmann & Fua, "Robust Differentiable
SVD", IEEE TPAMI 2021: the probability that the smallest eigenvalue gap of a covariance matrix
falls below τ, as a function of the dimension d, which is the probability that the analytic
eigenvector gradient has a factor max|K̃_ij| = 1/min gap above 1/τ.

Sources (one cell = source × d × chunk of matrices, each chunk seeded by its index):

* ``gaussian``: C = XᵀX/n with X an n×d standard Gaussian matrix (E C = I). Its eigenvalues are
  drawn from the β = 1 Laguerre tridiagonal model of Dumitriu & Edelman ("Matrix models for beta
  ensembles", J. Math. Phys. 2002): BBᵀ/n with B lower bidiagonal, B_ii ~ χ_{n−i},
  B_{i+1,i} ~ χ_{d−1−i}, which has exactly the eigenvalue law of XᵀX/n at O(d²) cost per matrix
  (``gaussian_model = "dense"`` forms XᵀX/n and runs batched ``numpy.linalg.eigvalsh`` instead).
* ``cifar10``: the channel covariance that a ZCA layer sees after a first conv layer: a mini-batch
  of ``cifar_batch`` CIFAR-10 training images (drawn from a seeded random pool of ``cifar_pool``) (pixels /255, standardized per channel), a fixed
  seeded random 3×3 conv (He-normal weights, zero padding, no bias) to d channels, ReLU; the
  n = batch·32·32 feature vectors are centred, C = XᵀX/n is scaled to mean eigenvalue 1
  (trace/d = 1, so τ is in the same units as for the Gaussian source) and εI is added as a ZCA
  layer does (``zca_eps``). Eigenvalues by batched float64 ``numpy.linalg.eigvalsh``.

Events counted per matrix: min_i(λ_{i+1} − λ_i) < τ ("abs"), min gap / λ_max < τ ("rel"),
max|K̃| = 1/min gap > ``k_threshold`` ("K"). Probabilities carry Wilson 95% score intervals.

Random-matrix prediction (level repulsion). In unfolded units (spacings divided by the local mean
spacing) the GOE nearest-neighbour law is close to the Wigner surmise p(s) = (π/2) s e^{−πs²/4},
so P(s < x) ≈ (π/4) x² for small x. A gap i with local mean spacing ⟨Δ_i⟩ is below τ with
probability ≈ (π/4)(τ/⟨Δ_i⟩)²; summing over the d − 1 adjacent pairs gives the expected number of
small gaps N(τ), and P(min gap < τ) ≈ 1 − e^{−N(τ)} (independent rare events). Two unfoldings:

* Marchenko–Pastur (``pred_mp``, Gaussian source): with γ = d/n the density of the eigenvalues of
  C is ρ(x) = √((b − x)(x − a)) / (2πγx) on [a, b] = [(1 − √γ)², (1 + √γ)²]; the local mean
  spacing at x is 1/(d ρ(x)), so N(τ) = (π/4) τ² d³ ∫ ρ(x)³ dx. For the relative gap τ is
  multiplied by the MP edge b (λ_max → b).
* empirical (``pred_unfold``, both sources): ⟨Δ_i⟩ is the mean of gap i over the chunk's matrices.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import integrate, linalg as sla

from .. import check_choices, with_defaults

SOURCES = ("gaussian", "cifar10")

GRID_DEFAULTS = {
    "sources": ["gaussian", "cifar10"],
    "dims": [4, 8, 16, 32, 64, 128, 256, 512],
    "taus": [1e-3, 1e-4, 1e-5, 1e-6],
    "n_matrices": 10000,  # matrices per (source, d) point
    "reduced": {},  # {"cifar10:512": 2000}: fewer matrices for named points (documented in the report)
    "chunk_size": 2500,  # matrices per cell
    "n_samples": 4096,  # Gaussian: rows of X (n); 4096 = 4 images × 32 × 32 positions
    "gaussian_model": "tridiagonal",  # or "dense"
    "cifar_batch": 4,  # images per mini-batch → n = 4·32·32 = 4096 feature vectors
    "cifar_pool": 5000,  # a seeded random subset of the training split that mini-batches are drawn from
    "cifar_path": "",  # "" → stabkit.data default location
    "zca_eps": 1e-5,
    "k_threshold": 1e5,
    "seed": 0,
}


def validate(grid: dict) -> dict:
    out = with_defaults("gap_probability", grid, GRID_DEFAULTS)
    check_choices("gap_probability", "sources", out["sources"], SOURCES)
    if not out["dims"] or any(int(d) != d or d < 2 for d in out["dims"]):
        raise ValueError(f"gap_probability: dims must be integers ≥ 2, got {out['dims']!r}")
    if not out["taus"] or any(not (t > 0) for t in out["taus"]):
        raise ValueError(f"gap_probability: taus must be positive, got {out['taus']!r}")
    for key in ("n_matrices", "chunk_size", "n_samples", "cifar_batch", "cifar_pool"):
        if int(out[key]) != out[key] or out[key] < 1:
            raise ValueError(f"gap_probability: {key} must be a positive integer, got {out[key]!r}")
    if out["gaussian_model"] not in ("tridiagonal", "dense"):
        raise ValueError(f"gap_probability: gaussian_model must be 'tridiagonal' or 'dense', got {out['gaussian_model']!r}")
    if max(out["dims"]) > out["n_samples"] and "gaussian" in out["sources"]:
        raise ValueError(f"gap_probability: n_samples={out['n_samples']} must be ≥ the largest d (full-rank covariances)")
    if not isinstance(out["reduced"], dict):
        raise ValueError("gap_probability: reduced must be a table {\"source:d\" = count}")
    for key, value in out["reduced"].items():
        src, _, d = str(key).partition(":")
        if src not in SOURCES or not d.isdigit() or int(value) < 1:
            raise ValueError(f"gap_probability: reduced key {key!r} = {value!r}: expected \"source:d\" = positive count")
    if out["zca_eps"] < 0 or out["k_threshold"] <= 0:
        raise ValueError("gap_probability: zca_eps must be ≥ 0 and k_threshold > 0")
    return out


def _count(grid, source, d):
    return int(grid["reduced"].get(f"{source}:{d}", grid["n_matrices"]))


def cells(grid: dict) -> list[dict]:
    grid = validate(grid)
    out = []
    for source in grid["sources"]:
        for d in sorted(grid["dims"], reverse=True):  # largest first: better load balance
            total = _count(grid, source, d)
            n_chunks = math.ceil(total / grid["chunk_size"])
            for c in range(n_chunks):
                size = min(grid["chunk_size"], total - c * grid["chunk_size"])
                out.append({
                    "cell_id": f"{source}-d{d}-c{c}",
                    "source": source, "d": int(d), "chunk": c, "size": int(size),
                    "taus": list(grid["taus"]), "n_samples": int(grid["n_samples"]),
                    "gaussian_model": grid["gaussian_model"], "cifar_batch": int(grid["cifar_batch"]),
                    "cifar_pool": int(grid["cifar_pool"]), "cifar_path": grid["cifar_path"],
                    "zca_eps": float(grid["zca_eps"]), "k_threshold": float(grid["k_threshold"]),
                    "seed": int(grid["seed"]),
                })
    return out


# ---------------------------------------------------------------- eigenvalue sources


def laguerre_eigvals(d: int, n: int, count: int, rng) -> np.ndarray:
    """Eigenvalues (ascending, count×d) of XᵀX/n, X n×d Gaussian, by the β=1 tridiagonal model."""
    out = np.empty((count, d))
    dfs_diag = n - np.arange(d)
    dfs_sub = d - 1 - np.arange(d - 1)
    for m in range(count):
        b = np.sqrt(rng.chisquare(dfs_diag))
        c = np.sqrt(rng.chisquare(dfs_sub)) if d > 1 else np.empty(0)
        diag = b ** 2
        diag[1:] += c ** 2
        out[m] = sla.eigvalsh_tridiagonal(diag, c * b[:-1], lapack_driver="sterf")
    return out / n


def dense_wishart_eigvals(d: int, n: int, count: int, rng, batch: int = 64) -> np.ndarray:
    out = np.empty((count, d))
    for start in range(0, count, batch):
        m = min(batch, count - start)
        X = rng.standard_normal((m, n, d))
        C = X.swapaxes(1, 2) @ X / n
        out[start:start + m] = np.linalg.eigvalsh(C)
    return out


@functools.lru_cache(maxsize=2)
def _cifar_pool(path: str, pool: int) -> np.ndarray:
    from ... import data

    images, _ = data.load_cifar10(path or None, split="train")
    # a seeded random subset: the archive's training split is stored class by class
    pick = np.sort(np.random.default_rng(0xC1FA).permutation(len(images))[:pool])
    x = np.asarray(images[pick], dtype=np.float64) / 255.0
    x = (x - x.mean((0, 1, 2))) / x.std((0, 1, 2))
    return np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero padding for the 3×3 conv


def cifar_patches(padded: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """3×3×3 patches at every position of images ``idx``: (len(idx)·32·32, 27)."""
    win = np.lib.stride_tricks.sliding_window_view(padded[idx], (3, 3), axis=(1, 2))  # B,32,32,3,3,3
    return win.reshape(-1, 27)


def cifar_eigvals(d, count, rng, *, batch, pool, path, eps, conv_seed, sub=8) -> np.ndarray:
    padded = _cifar_pool(path, pool)
    w = np.random.default_rng(np.random.SeedSequence([conv_seed, d, 0xC0])).standard_normal((27, d)) * math.sqrt(2 / 27)
    out = np.empty((count, d))
    for start in range(0, count, sub):
        m = min(sub, count - start)
        covs = np.empty((m, d, d))
        for k in range(m):
            idx = rng.choice(padded.shape[0], size=batch, replace=False)
            feats = np.maximum(cifar_patches(padded, idx) @ w, 0)
            feats -= feats.mean(0)
            C = feats.T @ feats / feats.shape[0]
            covs[k] = C / (np.trace(C) / d) + eps * np.eye(d)
        out[start:start + m] = np.linalg.eigvalsh(covs)
    return out


# ---------------------------------------------------------------- level-repulsion prediction


def mp_edges(gamma: float):
    return (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2


def mp_density(x, gamma: float):
    a, b = mp_edges(gamma)
    x = np.asarray(x, dtype=float)
    inside = (x > a) & (x < b)
    val = np.sqrt(np.clip((b - x) * (x - a), 0, None)) / (2 * math.pi * gamma * np.where(x > 0, x, 1))
    return np.where(inside, val, 0.0)


def mp_cubic_integral(gamma: float) -> float:
    """∫ ρ_MP(x)³ dx (substitution x = (a+b)/2 + (b−a)/2·cos θ removes the edge singularities)."""
    a, b = mp_edges(gamma)
    mid, half = (a + b) / 2, (b - a) / 2
    val, _ = integrate.quad(lambda t: mp_density(mid + half * math.cos(t), gamma) ** 3 * half * math.sin(t), 0, math.pi, limit=200)
    return val


def mp_expected_small_gaps(tau: float, d: int, n: int) -> float:
    """N(τ) = (π/4) τ² d³ ∫ρ³ — expected number of adjacent gaps below τ (Wigner surmise + MP)."""
    return math.pi / 4 * tau ** 2 * d ** 3 * mp_cubic_integral(d / n)


def unfolded_expected_small_gaps(tau: float, mean_gaps: np.ndarray) -> float:
    """N(τ) = Σ_i (π/4)(τ/⟨Δ_i⟩)² — the same law unfolded with the measured mean spacings."""
    return float(math.pi / 4 * tau ** 2 * np.sum(1.0 / np.asarray(mean_gaps) ** 2))


def run_cell(cell: dict) -> list[dict]:
    d, size = cell["d"], cell["size"]
    rng = np.random.default_rng(np.random.SeedSequence([cell["seed"], d, cell["chunk"], SOURCES.index(cell["source"])]))
    if cell["source"] == "gaussian":
        if cell["gaussian_model"] == "dense":
            lam = dense_wishart_eigvals(d, cell["n_samples"], size, rng)
        else:
            lam = laguerre_eigvals(d, cell["n_samples"], size, rng)
        n = cell["n_samples"]
    else:
        lam = cifar_eigvals(d, size, rng, batch=cell["cifar_batch"], pool=cell["cifar_pool"], path=cell["cifar_path"],
                            eps=cell["zca_eps"], conv_seed=cell["seed"])
        n = cell["cifar_batch"] * 32 * 32
    gaps = np.diff(lam, axis=1)
    lmax = lam[:, -1]
    min_abs = gaps.min(1)
    min_rel = min_abs / lmax
    mean_abs = gaps.mean(0)
    mean_rel = (gaps / lmax[:, None]).mean(0)
    base = {"source": cell["source"], "d": d, "chunk": cell["chunk"], "n": size, "n_samples": n,
            "lam_max_mean": float(lmax.mean()), "lam_min_mean": float(lam[:, 0].mean()),
            "median_min_gap": float(np.median(min_abs))}
    rows = []
    for tau in cell["taus"]:
        for kind, values, means in (("abs", min_abs, mean_abs), ("rel", min_rel, mean_rel)):
            if cell["source"] == "gaussian":
                scale = 1.0 if kind == "abs" else mp_edges(d / n)[1]
                pred_mp = 1 - math.exp(-mp_expected_small_gaps(tau * scale, d, n))
            else:
                pred_mp = math.nan
            rows.append({**base, "event": kind, "tau": float(tau), "count": int((values < tau).sum()),
                         "pred_mp": pred_mp, "pred_unfold": 1 - math.exp(-unfolded_expected_small_gaps(tau, means))})
    kmax = np.where(min_abs > 0, 1 / np.where(min_abs > 0, min_abs, 1), np.inf)
    rows.append({**base, "event": "K", "tau": float(cell["k_threshold"]), "count": int((kmax > cell["k_threshold"]).sum()),
                 "pred_mp": math.nan, "pred_unfold": math.nan})
    return rows


# ---------------------------------------------------------------- report (report.py)

from .report import aggregate, report  # noqa: E402

__all__ = ["SOURCES", "GRID_DEFAULTS", "validate", "cells", "run_cell", "report", "aggregate", "laguerre_eigvals",
           "dense_wishart_eigvals", "cifar_patches", "cifar_eigvals", "mp_edges", "mp_density", "mp_cubic_integral",
           "mp_expected_small_gaps", "unfolded_expected_small_gaps"]
