"""Study kind ``gap_probability``: how often a d×d covariance has two eigenvalues closer than τ.

Reproduces the setting of Fig. 1(a) of Wei Wang, Zheng Dang, Yinlin Hu, Pascal Fua & Mathieu
Salzmann, "Robust Differentiable SVD", IEEE TPAMI 2021: the probability that the smallest
eigenvalue gap of a covariance matrix falls below τ, as a function of the dimension d, which is the
probability that the analytic eigenvector gradient has a factor max abs(K̃_ij) = 1/min gap above 1/τ.

The text of the paper could not be retrieved here; the conventions of the CIFAR-10 source are
taken from the authors' public code (github.com/WeiWangTrento/Robust-Differentiable-SVD,
``models/resnet.py``, ``ZCANorm.py``, ``main_imgnet.py``), which has no script for Fig. 1(a):

* the whitening layer replaces the first BatchNorm, right after ``conv1`` (3×3, stride 1, padding 1,
  no bias, 3 input channels) and *before* the ReLU: it sees the conv output, not ReLU(conv);
* ``conv1`` is initialised Kaiming-normal, fan_out mode, ReLU gain: std = √(2 / (9·C_out));
* the layer's covariance is xxᵀ/(N·H·W) of the channel-centred features plus ε·I, with no
  trace normalisation (``ZCANormPIv2``, the class ``main_imgnet.py`` selects, has ε = 1e-2);
* a group of d channels is a diagonal block of the covariance of ONE conv (``torch.chunk``): the
  first group is the first d channels, so the d-channel features are nested across d;
* inputs are ToTensor (/255) then Normalize(mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994,
  0.2010)); the argparse default batch size is 128.

Sources (one cell = source × d × chunk of matrices, each chunk seeded by its index):

* ``gaussian``: C = XᵀX/n with X an n×d standard Gaussian matrix (E C = I). Its eigenvalues are
  drawn from the β = 1 Laguerre tridiagonal model of Dumitriu & Edelman ("Matrix models for beta
  ensembles", J. Math. Phys. 2002): BBᵀ/n with B lower bidiagonal, B_ii ~ χ_{n−i},
  B_{i+1,i} ~ χ_{d−1−i}, which has exactly the eigenvalue law of XᵀX/n at O(d²) cost per matrix
  (``gaussian_model = "dense"`` forms XᵀX/n and runs batched ``numpy.linalg.eigvalsh`` instead).
  The default n = 131072 is the n of the CIFAR source (128 images × 32 × 32 positions).
* ``cifar10``: the channel covariance that a ZCA layer after the first conv sees: a mini-batch of
  ``cifar_batch`` CIFAR-10 training images drawn without replacement from ``cifar_pool`` images
  (a seeded random subset of the 50 000; all of them by default), normalised as above, zero padding,
  ONE seeded 3×3 conv with ``cifar_channels`` output channels (Kaiming-normal fan_out as above) of
  which the first d are kept; by default no ReLU (``cifar_relu = false``: the conv output, as the
  authors' whitening layer sees it); the n = batch·32·32 feature vectors are centred,
  C = XᵀX/n (scaled to trace/d = 1 only if ``cifar_trace_norm``), + ``zca_eps``·I. Eigenvalues by
  batched float64 ``numpy.linalg.eigvalsh`` of the d×d matrix.

  Without ReLU the features are a linear map of the 27-dim 3×3×3 input patch, so C = W_dᵀ P W_d
  with P the 27×27 covariance of the batch's patches; P is assembled from per-image patch sums
  (Σ ppᵀ and Σ p, computed once per process), which is exact and makes batch 128 affordable.
  Consequence: rank C ≤ 27, so for d > 27 at least d − 27 eigenvalues of C + εI equal ε up to
  rounding, the minimum gap is a rounding residue and P(min gap < τ) = 1 by construction.
  With ``cifar_relu = true`` the features are formed explicitly (cost ∝ batch·1024·d², use a small
  ``cifar_batch`` there).

Events counted per matrix: min_i(λ_{i+1} − λ_i) < τ ("abs"), min gap / λ_max < τ ("rel"),
max abs(K̃) = 1/min gap > ``k_threshold`` ("K"). Probabilities carry Wilson 95% score intervals.
Per cell the rows also carry the mean eigenvalue, λ_min, λ_max, the chunk's median min gap and the
mean number of eigenvalues within 1e-9·λ_max of ε (``n_at_eps``).

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

from ...data import check_path
from .. import check_choices, with_defaults
from .._checks import int_list

SOURCES = ("gaussian", "cifar10")
#: Result columns that hold numbers (or true/false, or nothing): a report refuses text in one (publish.read_results).
NUMBER_COLUMNS = ("d", "chunk", "n", "n_samples", "lam_max_mean", "lam_min_mean", "lam_mean", "median_min_gap",
                  "n_at_eps", "tau", "count", "pred_mp", "pred_unfold")

GRID_DEFAULTS = {
    "sources": ["gaussian", "cifar10"],
    "dims": [4, 8, 16, 32, 64, 128, 256, 512],
    "taus": [1e-3, 1e-4, 1e-5, 1e-6],
    "n_matrices": 10000,  # matrices per (source, d) point
    "reduced": {},  # {"cifar10:512": 2000}: fewer matrices for named points (documented in the report)
    "chunk_size": 2500,  # matrices per cell
    "n_samples": 131072,  # Gaussian: rows of X (n); 131072 = 128 images × 32 × 32 positions, the CIFAR n
    "gaussian_model": "tridiagonal",  # or "dense"
    "cifar_batch": 128,  # images per mini-batch (the authors' argparse default) → n = 128·32·32
    "cifar_pool": 50000,  # mini-batches are drawn from a seeded random subset of this many training images
    "cifar_channels": 512,  # output channels of the ONE conv; d-channel features are its first d channels
    "cifar_relu": False,  # False: the conv output, which the authors' whitening layer sees (before ReLU)
    "cifar_trace_norm": False,  # True: scale C to trace/d = 1 before adding ε (the authors do not)
    "cifar_path": "",  # "" → stabkit.data default location
    "zca_eps": 1e-2,  # ε·I added to the CIFAR covariance: 1e-2 is ZCANormPIv2's default in the authors' code
    "k_threshold": 1e5,
    "seed": 0,
}

#: CIFAR-10 per-channel mean and std of the authors' transforms.Normalize (main_imgnet.py)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR_TRAIN = 50000
CIFAR_SPLIT = "train"  # the one split the cifar10 cells sample (and the check before them loads)
PATCH = 27  # 3×3 kernel × 3 input channels: the rank bound of the pre-ReLU features


def validate(grid: dict) -> dict:
    out = with_defaults("gap_probability", grid, GRID_DEFAULTS)
    check_choices("gap_probability", "sources", out["sources"], SOURCES)
    if not out["dims"] or any(int(d) != d or d < 2 for d in out["dims"]):
        raise ValueError(f"gap_probability: dims must be integers ≥ 2, got {out['dims']!r}")
    if not out["taus"] or any(not (t > 0) for t in out["taus"]):
        raise ValueError(f"gap_probability: taus must be positive, got {out['taus']!r}")
    for key in ("n_matrices", "chunk_size", "n_samples", "cifar_batch", "cifar_pool", "cifar_channels"):
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
    for key in ("cifar_relu", "cifar_trace_norm"):
        if not isinstance(out[key], bool):
            raise ValueError(f"gap_probability: {key} must be true or false, got {out[key]!r}")
    if "cifar10" in out["sources"]:
        if out["cifar_channels"] < max(out["dims"]):
            raise ValueError(f"gap_probability: cifar_channels={out['cifar_channels']} must be ≥ the largest d "
                             "(each d takes the first d channels of one conv)")
        if not out["cifar_batch"] <= out["cifar_pool"] <= CIFAR_TRAIN:
            raise ValueError(f"gap_probability: need cifar_batch ≤ cifar_pool ≤ {CIFAR_TRAIN}, got "
                             f"{out['cifar_batch']} and {out['cifar_pool']}")
        check_path("gap_probability: cifar_path", out["cifar_path"])  # else every cifar10 cell fails
    if out["zca_eps"] < 0 or out["k_threshold"] <= 0:
        raise ValueError("gap_probability: zca_eps must be ≥ 0 and k_threshold > 0")
    int_list("seed", out["seed"], 0, "seed")  # numpy's generators take no negative seed
    return out


def _count(grid, source, d):
    return int(grid["reduced"].get(f"{source}:{d}", grid["n_matrices"]))


def cell_axes(grid: dict) -> list[dict]:
    """The number of cells as a sum of products (``stabkit.studies._grid.cell_count``): ⌈matrices /
    chunk_size⌉ chunks per (source, d) point, its matrices n_matrices or the point's ``reduced`` count."""
    chunk = int(grid["chunk_size"])
    points = [(source, d) for source in grid["sources"] for d in grid["dims"]]
    named = [(source, d) for source, d in points if f"{source}:{d}" in grid["reduced"]]
    chunks = {"⌈n_matrices / chunk_size⌉": math.ceil(int(grid["n_matrices"]) / chunk)}
    rest = [{"sources": len(grid["sources"]), "dims": len(grid["dims"]), **chunks}] if not named else [
        {"sources × dims not in reduced": len(points) - len(named), **chunks}]
    return rest + [{f"⌈reduced {source}:{d} / chunk_size⌉": math.ceil(_count(grid, source, d) / chunk)}
                   for source, d in named]


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
                    "cifar_channels": int(grid["cifar_channels"]), "cifar_relu": bool(grid["cifar_relu"]),
                    "cifar_trace_norm": bool(grid["cifar_trace_norm"]),
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


def _pool_indices(pool: int) -> np.ndarray:
    # a seeded random subset of the training split (the archive stores it class by class)
    return np.sort(np.random.default_rng(0xC1FA).permutation(CIFAR_TRAIN)[:pool])


def normalise_images(images: np.ndarray) -> np.ndarray:
    """uint8 (B, 32, 32, 3) → float64, /255 then the authors' per-channel Normalize, zero-padded by 1."""
    x = (np.asarray(images, dtype=np.float64) / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    return np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # the conv's zero padding, in normalised units


@functools.lru_cache(maxsize=1)
def _cifar_images(path: str, pool: int) -> np.ndarray:
    from ... import data

    images, _ = data.load_cifar10(path or None, split=CIFAR_SPLIT)
    if len(images) != CIFAR_TRAIN:
        raise ValueError(f"expected {CIFAR_TRAIN} CIFAR-10 training images, got {len(images)}")
    return images[_pool_indices(pool)]


def cifar_patches(images: np.ndarray) -> np.ndarray:
    """3×3×3 normalised patches at every position of uint8 images (B, 32, 32, 3): (B, 32·32, 27),
    order (channel, row, col). Only these images are normalised (float64 costs 8× their bytes)."""
    win = np.lib.stride_tricks.sliding_window_view(normalise_images(images), (3, 3), axis=(1, 2))  # B,32,32,3,3,3
    return win.reshape(len(images), -1, PATCH)


def patch_moments(images: np.ndarray, block: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per image: Σ_p ppᵀ (B, 27, 27) and Σ_p p (B, 27) over its 32·32 normalised, zero-padded patches."""
    second = np.empty((len(images), PATCH, PATCH))
    first = np.empty((len(images), PATCH))
    for start in range(0, len(images), block):
        p = cifar_patches(images[start:start + block])
        second[start:start + len(p)] = p.swapaxes(1, 2) @ p
        first[start:start + len(p)] = p.sum(1)
    return second, first


@functools.lru_cache(maxsize=1)
def _cifar_moments(path: str, pool: int) -> tuple[np.ndarray, np.ndarray]:
    return patch_moments(_cifar_images(path, pool))


def conv_weights(channels: int, seed: int) -> np.ndarray:
    """ONE 3×3 conv, 3 → ``channels``, as a (27, channels) matrix; Kaiming-normal, fan_out, ReLU gain
    (std √(2/(9·channels))), as the authors initialise ``conv1``. Column k is filter k: a d-channel
    source uses the first d columns, so the features are nested across d."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0]))
    return rng.standard_normal((PATCH, channels)) * math.sqrt(2.0 / (9 * channels))


def patch_covariance(second: np.ndarray, first: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """27×27 covariance (1/n, centred) of the patches of images ``idx`` from their per-image sums."""
    n = len(idx) * 32 * 32
    mu = first[idx].sum(0) / n
    return second[idx].sum(0) / n - np.outer(mu, mu)


def feature_covariance(w: np.ndarray, idx: np.ndarray, *, path: str = "", pool: int = CIFAR_TRAIN,
                       relu: bool = False, trace_norm: bool = False, eps: float = 0.0) -> np.ndarray:
    """The d×d covariance (+ εI) of the conv features ``w`` (27×d) of the pool's images ``idx``."""
    d = w.shape[1]
    if relu:
        feats = np.maximum(cifar_patches(_cifar_images(path, pool)[idx]).reshape(-1, PATCH) @ w, 0)
        feats -= feats.mean(0)
        C = feats.T @ feats / feats.shape[0]
    else:
        C = w.T @ patch_covariance(*_cifar_moments(path, pool), idx) @ w
        C = (C + C.T) / 2
    if trace_norm:
        C = C / (np.trace(C) / d)
    return C + eps * np.eye(d)


def cifar_eigvals(d, count, rng, *, batch, pool, path, eps, conv_seed, channels, relu=False, trace_norm=False,
                  sub=16) -> np.ndarray:
    w = conv_weights(channels, conv_seed)[:, :d]
    out = np.empty((count, d))
    for start in range(0, count, sub):
        m = min(sub, count - start)
        covs = np.empty((m, d, d))
        for k in range(m):
            idx = np.sort(rng.choice(pool, size=batch, replace=False))
            covs[k] = feature_covariance(w, idx, path=path, pool=pool, relu=relu, trace_norm=trace_norm, eps=eps)
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


def count_at(lam: np.ndarray, value: float, rel_tol: float = 1e-9) -> np.ndarray:
    """Per matrix (rows of ``lam``), the number of eigenvalues within rel_tol·λ_max of ``value``."""
    return (np.abs(lam - value) <= rel_tol * np.abs(lam).max(1, keepdims=True)).sum(1)


def check_inputs(cells: list[dict]) -> None:
    """The runner's check before any cell starts: CIFAR-10 loads where a cell samples it."""
    from ...data import check_loads

    for path in dict.fromkeys(c["cifar_path"] for c in cells if c["source"] == "cifar10"):
        check_loads("gap_probability: cifar_path", path, splits=(CIFAR_SPLIT,))


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
                            eps=cell["zca_eps"], conv_seed=cell["seed"], channels=cell["cifar_channels"],
                            relu=cell["cifar_relu"], trace_norm=cell["cifar_trace_norm"])
        n = cell["cifar_batch"] * 32 * 32
    gaps = np.diff(lam, axis=1)
    lmax = lam[:, -1]
    min_abs = gaps.min(1)
    min_rel = min_abs / lmax
    mean_abs = gaps.mean(0)
    mean_rel = (gaps / lmax[:, None]).mean(0)
    base = {"source": cell["source"], "d": d, "chunk": cell["chunk"], "n": size, "n_samples": n,
            "lam_max_mean": float(lmax.mean()), "lam_min_mean": float(lam[:, 0].mean()),
            "lam_mean": float(lam.mean()), "median_min_gap": float(np.median(min_abs)),
            "n_at_eps": float(count_at(lam, cell["zca_eps"]).mean()) if cell["source"] == "cifar10" else math.nan}
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

__all__ = ["SOURCES", "GRID_DEFAULTS", "validate", "cell_axes", "cells", "run_cell", "report", "aggregate", "laguerre_eigvals",
           "dense_wishart_eigvals", "cifar_patches", "cifar_eigvals", "conv_weights", "patch_moments",
           "patch_covariance", "feature_covariance", "normalise_images", "count_at", "CIFAR_MEAN", "CIFAR_STD", "PATCH", "mp_edges", "mp_density", "mp_cubic_integral",
           "mp_expected_small_gaps", "unfolded_expected_small_gaps"]
