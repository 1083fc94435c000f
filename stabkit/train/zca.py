"""ZCA whitening layer: decorrelated batch normalization with a chosen eigendecomposition backward.

Huang, Yang, Lang & Deng, "Decorrelated Batch Normalization", CVPR 2018, and Wang, Dang, Hu,
Fua & Salzmann, "Robust Differentiable SVD", TPAMI 2021, Alg. 2. For an input X (B, C, H, W)
the C channels are split into G = C/d groups of d; for each group, with m = B·H·W samples,

    μ = mean(X_g),  Σ = (X_g − μ)(X_g − μ)ᵀ / m + εI,  Σ = U Λ Uᵀ,  W = U Λ^{-1/2} Uᵀ,
    Y_g = W (X_g − μ),   out = γ ∘ Y + β   (per-channel affine).

The eigendecomposition is ``stabkit.torch.eigh_kept(Σ, method=spec)`` batched over the G
groups, so the backward is the chosen registry method's (SVD = ``analytic``, PI = ``pi-forward``,
SVD-PI = ``pi``, SVD-Taylor = ``taylor``, SVD-Clip = ``clip``, …). The method arrives as a
:class:`stabkit.methods.Spec` (in the :class:`ZCAConfig`, or converted once in ``__init__`` from the
``method``/``params`` given); the layer never parses it again. A failure of the solver
(``torch.linalg.LinAlgError``) is raised as :class:`stabkit.errors.EigensolverError`, which the
training loop records by type.

ε defaults to 1e-4, the value of the TPAMI paper's experiments (it is also the ``pi`` method's
default energy threshold): it bounds Λ^{-1/2} ≤ 100 and keeps Σ positive definite, but it does not
separate close eigenvalues, so it does not bound the analytic gradient's 1/(λ_i − λ_j).

Conventions (εI, forward solver, clamp, covariance, truncation of the whitening to kept pairs, γ
init) come from a frozen :class:`stabkit.train.preset.ZCAConfig`; without one the layer is the
``stabkit`` preset's (``method``/``params``/``eps`` as given), as before. With a truncation rule the
whitening keeps only the pairs the rule keeps: W = Σ_{i kept} λ_i^{-1/2} u_i u_iᵀ (the NeurIPS 2019
paper's Alg. 1), so no gradient reaches the dropped pairs through the output.

Eval mode uses the running mean and running whitening matrix, updated in training as
running ← (1 − momentum)·running + momentum·batch (momentum 0.1, as BatchNorm). ``dtype`` sets
the computation dtype of covariance, eigendecomposition and whitening (float32 or float64; the
input is cast in and the result cast back), autocast or not: the layer disables autocast inside. A
float16/bfloat16 map comes out in its own dtype, as from BatchNorm (affine applied before that cast).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _xp, methods
from ..errors import EigensolverError, InputError
from ..methods import Spec
from ..torch import eigh_kept as _eigh_kept
from ..validation import is_real
from .preset import ZCAConfig

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def group_covariance(xg: torch.Tensor, eps: float, symmetrize: bool = True):
    """Mean μ (G, d, 1), centred samples X_g − μ and Σ + εI (G, d, d) of grouped samples xg (G, d, m),
    in xg's dtype; Σ is symmetrised (by default) so that rounding cannot make it asymmetric."""
    mean = xg.mean(-1, keepdim=True)
    xc = xg - mean
    eye = torch.eye(xg.shape[1], dtype=xg.dtype, device=xg.device)
    cov = xc @ xc.transpose(1, 2) / xc.shape[-1] + eps * eye
    return mean, xc, ((cov + cov.transpose(1, 2)) / 2 if symmetrize else cov)


def block_covariance(xg: torch.Tensor, eps: float, runs: int = 1):
    """As :func:`group_covariance`, the authors' way: one C×C product X Xᵀ/m + εI over all C = G·d
    channels, then its G diagonal d×d blocks; not symmetrised. ``runs`` > 1 (R runs stacked in one
    layer, ``stabkit.train.stacked``): the groups are R runs' G/R groups one after another, and each
    run gets its own product over its own channels, as its separate layer would."""
    G, d, m = xg.shape
    g, C = G // runs, G // runs * d
    x = xg.reshape(runs, C, m)
    mean = x.mean(-1, keepdim=True)
    xc = x - mean
    # one run: the 2-D product a single layer has always computed (a batched one may sum in another order)
    gram = (xc[0] @ xc[0].T)[None] if runs == 1 else xc @ xc.transpose(1, 2)
    full = gram / m + eps * torch.eye(C, dtype=x.dtype, device=x.device)
    blocks = torch.diagonal(full.reshape(runs, g, d, g, d), dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(G, d, d)
    return mean.reshape(G, d, 1), xc.reshape(G, d, m), blocks


@torch.no_grad()
def kept_mask(lam: torch.Tensor, rule: str, eps: float) -> torch.Tensor | None:
    """Which eigenpairs (same index order as ``lam``, (..., d)) the whitening keeps; None = all.

    ``svd-head`` (the SVD baseline of the authors' later code): keep down to and including the
    first σ_j ≤ ε, only the largest if none. (SVD-PI's and PI's truncations are their methods' own,
    ``pi``'s Alg. 1 rule and ``pi-authors:stop=true``: the layer reads them as ``method_kept``.)
    """
    if rule == "none":
        return None
    if rule != "svd-head":
        raise ValueError(f"unknown truncation rule {rule!r}")
    desc, order = torch.sort(lam, dim=-1, descending=True)
    low = desc <= eps
    count = torch.where(low.any(-1), low.to(torch.int64).argmax(-1) + 1, torch.ones_like(low[..., 0], dtype=torch.int64))
    kept_sorted = torch.arange(lam.shape[-1], device=lam.device) < count[..., None]
    return torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)


def whitening_matrix(lam: torch.Tensor, U: torch.Tensor, config: ZCAConfig,
                     method_kept: torch.Tensor | None = None) -> torch.Tensor:
    """U diag(s^{-1/2}) Uᵀ over the kept pairs, s = λ (eigh) or |λ| (svd) raised to the floor.
    A pair is kept when the layer's truncation rule and the method's forward (``method_kept``,
    e.g. SVD-PI's pairs, NeurIPS 2019 Alg. 1) both keep it.
    The floor acts on the forward value only: its gradient passes straight through, as in the
    authors' svdv2 (they clamp σ after the SVD and back-propagate ∂L/∂σ unchanged)."""
    s = lam.abs() if config.solver == "svd" else lam
    if config.lam_floor is not None:
        s = s + (s.clamp_min(config.lam_floor) - s).detach()
    kept = kept_mask(s.detach(), config.truncation, config.eps)
    if method_kept is not None:
        kept = method_kept if kept is None else kept & method_kept
    if kept is None:
        return (U * s.rsqrt()[:, None, :]) @ U.transpose(1, 2)
    inv = torch.where(kept, torch.where(kept, s, torch.ones_like(s)).rsqrt(), torch.zeros_like(s))
    return (U * inv[:, None, :]) @ U.transpose(1, 2)


def _with_seed(spec: Spec, seed: int) -> Spec:
    """``spec`` with its ``seed`` parameter set to the counter ``seed`` (≥ 0, always in the domain of
    an integer seed): the per-forward fresh start of the authors' PI, without re-validating a Spec."""
    return Spec(spec.method, tuple((k, seed if k == "seed" else v) for k, v in spec.items))


def eigh_kept(cov: torch.Tensor, spec: Spec):
    """(λ, U, kept) of ``cov`` with ``spec``'s backward — the one place the layer calls the solver.

    ``check=False``: Σ is symmetrised by the layer, and a NaN Σ must reach the eigensolver (its
    failure is the training loop's NaN outcome); it also avoids a host sync per step. A solver
    failure is raised as :class:`EigensolverError` (typed, so the loop never matches message text).
    """
    try:
        return _eigh_kept(cov, spec, check=False)
    except torch.linalg.LinAlgError as exc:
        bad = int((~torch.isfinite(cov)).sum())  # read only once the solver has failed: no sync on the way
        why = f"Σ has {bad} non-finite entries of {cov.numel()} (NaN/Inf in the input map, or its covariance " \
              f"overflows {cov.dtype}); " if bad else ""
        raise EigensolverError(f"ZCA whitening: the eigensolver failed on Σ ({spec}): {why}{exc}") from exc


def _under_vmap(x: torch.Tensor) -> bool:
    """Whether ``x`` is seen inside ``torch.func.vmap`` (at any level of nested transforms)."""
    if not _xp.is_func_transformed(x):
        return False
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == torch._C._functorch.TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class ZCAWhitening(nn.Module):
    def __init__(self, num_features: int, d: int = 16, method: "str | Spec" = methods.DEFAULT, params: dict | None = None,
                 eps: float = 1e-4, momentum: float = 0.1, dtype: str = "float32", affine: bool = True,
                 config: ZCAConfig | None = None):
        super().__init__()
        from ..layers._checks import check_eps, check_positive_integer, method_params  # stabkit.layers imports this module

        check_positive_integer(num_features, "ZCAWhitening", "num_features")
        check_positive_integer(d, "ZCAWhitening", "d")
        if num_features % d:
            raise InputError(f"ZCAWhitening: group size d={d} must divide the number of channels {num_features}")
        if not (is_real(momentum) and 0 <= momentum <= 1):
            raise InputError(f"ZCAWhitening: momentum must be a number in [0, 1], got {momentum!r}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose float32 or float64")
        if config is None:
            check_eps(eps, "ZCAWhitening")
            spec = methods.spec(method)  # the Python edge: text, a Method or a Spec, converted once
            params = method_params(params or {}, "ZCAWhitening")
            config = ZCAConfig(spec=spec.replace(**params) if params else spec, eps=float(eps))
        self.config = config
        self.num_features, self.d, self.groups = num_features, d, num_features // d
        self.spec: Spec = config.spec
        self.method, self.params = self.spec.name, self.spec.params
        self.eps, self.momentum, self.compute_dtype = float(config.eps), float(momentum), DTYPES[dtype]
        self.forward_calls = 0
        self.runs = 1  # R > 1: R runs stacked in this layer (stabkit.train.stacked), groups run by run
        self.last_lam = None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            if config.weight_init == "uniform":
                with torch.no_grad():
                    self.weight.uniform_()
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(self.groups, d, 1))
        self.register_buffer("running_whitening", torch.eye(d).expand(self.groups, d, d).clone())

    def get_extra_state(self) -> dict:
        """The forward count travels in the state_dict: it seeds the fresh start vectors (``fresh_starts``),
        so a layer loaded from a checkpoint draws the starts the saved one would have drawn next."""
        return {"forward_calls": self.forward_calls}

    def set_extra_state(self, state: dict) -> None:
        self.forward_calls = int(state["forward_calls"])

    def extra_repr(self):
        c = self.config
        extra = "" if (c.solver, c.truncation, c.covariance) == ("eigh", "none", "grouped") else \
            f", solver={c.solver}, floor={c.lam_floor}, truncation={c.truncation}, covariance={c.covariance}"
        return f"{self.num_features}, d={self.d}, method={self.spec}, eps={self.eps:g}, dtype={self.compute_dtype}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"ZCAWhitening: expected a float feature map (B, C, H, W), got {got}")
        # under autocast (the fast training path) the layer still computes in its own dtype:
        # covariance, eigendecomposition and whitening never drop to bf16/fp16
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if C != self.num_features:
            raise InputError(f"ZCAWhitening: expected a map with {self.num_features} channels, got {C} "
                             f"(shape {tuple(x.shape)})")
        xg = x.to(self.compute_dtype).transpose(0, 1).reshape(self.groups, self.d, -1)  # G, d, m
        if self.training:
            if B * H * W < 2:  # one sample: Σ = εI, the output β and the running whitening pulled to ε^{-1/2}·I
                raise InputError(f"ZCAWhitening: training needs more than one sample per channel to estimate a "
                                 f"covariance, got B·H·W = {B * H * W} (input shape {tuple(x.shape)})")
            if _under_vmap(x):  # else: the in-place update of the shared running statistics fails in broadcasting
                raise InputError("ZCAWhitening: training mode under torch.func.vmap is not supported (each vmapped call "
                                 "would update the one set of running statistics in place): use eval mode inside vmap")
            cfg = self.config
            if cfg.covariance == "full":
                mean, xc, cov = block_covariance(xg, self.eps, self.runs)
                cov = (cov + cov.transpose(1, 2)) / 2 if cfg.symmetrize else cov
            else:
                mean, xc, cov = group_covariance(xg, self.eps, cfg.symmetrize)
            spec = _with_seed(self.spec, self.forward_calls) if cfg.fresh_starts and "seed" in self.params else self.spec
            self.forward_calls += 1
            lam, U, kept = eigh_kept(cov, spec)
            self.last_lam = lam.detach()  # the λ of Σ + εI (G, d): the loop's per-epoch λ_max
            whitening = whitening_matrix(lam, U, cfg, kept)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_whitening.mul_(1 - m).add_(m * whitening.to(self.running_whitening.dtype))
        else:
            xc = xg - self.running_mean.to(xg.dtype)
            whitening = self.running_whitening.to(xg.dtype)
        y = (whitening @ xc).reshape(C, B, H, W).transpose(0, 1).to(x.dtype)
        # the fast path: hand the trunk its layout (a torch.func tensor cannot answer: vmap raises NYI)
        if not _xp.is_func_transformed(x) and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        if self.weight is not None:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        # float16/bfloat16 in, the same out (BatchNorm's rule): a float32 γ, β would otherwise promote it
        return y if x.dtype in DTYPES.values() else y.to(x.dtype)
