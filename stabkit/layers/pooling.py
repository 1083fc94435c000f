"""Covariance (second-order) pooling with a chosen eigendecomposition backward.

For a feature map X (B, C, H, W), with x_m ∈ ℝ^C the features at pixel m and M = H·W,

    μ = (1/M) Σ_m x_m,   Σ = (1/M) Σ_m (x_m − μ)(x_m − μ)ᵀ + εI,   Σ = U Λ Uᵀ,
    out = g(Σ) = U g(Λ) Uᵀ ∈ ℝ^{C×C},   g = √· (``"sqrt"``) or log (``"log"``).

g = √·: matrix power normalization, MPN-COV (Li, Xie, Wang & Zuo, "Is Second-order Information
Helpful for Large-scale Visual Recognition?", ICCV 2017). g = log: second-order pooling O2P
(Carreira, Caseiro, Batista & Sminchisescu, ECCV 2012), trained end to end by matrix
backpropagation (Ionescu, Vantzos & Sminchisescu, ICCV 2015, Prop. 4).

Backward. Default (``method=None``): the exact gradient of g(Σ) in Daleckii–Krein form,
U (D ∘ Uᵀ Ḡ U) Uᵀ with D the divided differences of g (Higham, "Functions of Matrices", 2008,
Thm. 3.11) — defined on repeated eigenvalues too (dead channels make ε an eigenvalue of Σ + εI
once per channel, where g is smooth but 1/(λ_i − λ_j) is not); its second derivatives are exact there too, and
the monitor logs it as ``stabkit.layers.matrix_functions.eig_dk`` and never swaps it (:mod:`.matrix_functions`). With ``method`` given, the
eigendecomposition is ``stabkit.torch.eigh(Σ, method, **params)`` and that registry backward is
used (``taylor``, ``clip``, ``pade``, …, or the exact Prop. 2, which is infinite at exact ties;
see ``stabkit methods``/README "Methods") — to study or use an approximate rule.

ε > 0 keeps Σ positive definite (Σ has rank ≤ M − 1, so with fewer pixels than channels it is
singular without it, as with a constant or repeated channel); √ of a matrix with a zero eigenvalue
has an infinite derivative and log one has no value (an InputError), whatever the backward rule. Σ is positive
semidefinite by construction, so an eigenvalue below 0 is rounding and is taken as 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _xp, methods
from ..errors import InputError
import stabkit.torch
from . import matrix_functions
from ._checks import check_eps, method_params
from ..methods import Spec
from ..torch import check_values

FUNCTIONS = {"sqrt": torch.sqrt, "log": torch.log}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def channel_covariance(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Σ + εI (B, C, C) of the C channels of x (B, C, H, W) over its H·W pixels, symmetrised."""
    B, C = x.shape[:2]
    xf = x.flatten(2)  # (B, C, H·W); reshape(B, C, -1) cannot infer H·W when B = 0
    xc = xf - xf.mean(-1, keepdim=True)
    cov = xc @ xc.transpose(1, 2) / xf.shape[-1] + eps * torch.eye(C, dtype=x.dtype, device=x.device)
    return (cov + cov.transpose(1, 2)) / 2


class CovariancePooling(nn.Module):
    """(B, C, H, W) → g(Σ) (B, C, C): the matrix square root or logarithm of the channel covariance.

    >>> import torch
    >>> from stabkit.layers import CovariancePooling
    >>> pool = CovariancePooling(function="sqrt", method="taylor", params={"K": 9}, eps=1e-3)
    >>> pool(torch.randn(2, 8, 5, 5)).shape
    torch.Size([2, 8, 8])

    ``method``/``params``: None (default) for the exact Daleckii–Krein backward, or the
    eigendecomposition's backward (a :class:`~stabkit.methods.Spec`, or a registry name or spec
    text with ``params`` its parameters; made a Spec once, here). ``eps``: ridge
    ε added to Σ. ``dtype``: computation dtype (``"float32"``, ``"float64"``; default the input's, so
    a float16/bfloat16 map needs one: InputError otherwise), the result is cast back to the input's dtype;
    under autocast too (the layer turns it off inside).
    """

    def __init__(self, function: str = "sqrt", method: str | Spec | None = None, params: dict | None = None,
                 eps: float = 1e-5, dtype: str | None = None):
        super().__init__()
        if not isinstance(function, str) or function not in FUNCTIONS:  # a list is unhashable: TypeError
            raise InputError(f"unknown matrix function {function!r}: choose one of {', '.join(FUNCTIONS)}")
        check_eps(eps, "CovariancePooling")
        if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
            raise InputError(f"unknown dtype {dtype!r}: choose float32 or float64")
        params = method_params(params or {}, "CovariancePooling")
        if method is None and params:
            raise InputError("params need a method (the exact backward has no parameters)")
        spec = None if method is None else methods.spec(method)
        self.function, self.spec = function, spec.replace(**params) if params else spec
        self.eps = float(eps)
        self.compute_dtype = DTYPES[dtype] if dtype else None

    def extra_repr(self):
        return f"function={self.function}, method={self.spec or 'exact (Daleckii–Krein)'}, eps={self.eps:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or 0 in x.shape[1:]:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"CovariancePooling: expected a feature map (B, C, H, W) with C, H, W ≥ 1, got {got}")
        if not x.is_floating_point():
            raise InputError(f"CovariancePooling: expected a float feature map, got {x.dtype}")
        dtype = self.compute_dtype or x.dtype
        if dtype not in DTYPES.values():  # float16/bfloat16: no eigendecomposition in that dtype
            raise InputError(f"CovariancePooling: cannot compute in {dtype}: pass dtype='float32' or 'float64'")
        # autocast would run Σ's product (and g's) in bf16/fp16, whatever ``dtype`` says: off, as in ZCAWhitening
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_in = x.to(dtype)
            cov = channel_covariance(x_in, self.eps)
            if not _xp.is_traced(cov) and not bool(torch.isfinite(cov).all()):   # one sync, as a check of cov
                check_values(x_in, "CovariancePooling", symmetric=False)           # the map's own NaN/Inf
                wider = " or pass dtype='float64'" if dtype == torch.float32 else ""
                raise InputError(f"CovariancePooling: the channel covariance overflows {dtype} (max |x| = "
                                 f"{float(x_in.abs().max()):.3g}): scale the feature map down{wider}")
            if self.spec is None:
                out, lam = matrix_functions.eig_dk(cov, self.function, psd=True)  # module attribute: watched
            else:
                lam, U = stabkit.torch.eigh(cov, method=self.spec, check=False)  # checked above; symmetric by construction
                lam = lam.clamp_min(0)  # Σ is PSD: a λ < 0 is rounding (√ of it was NaN)
                out = (U * FUNCTIONS[self.function](lam)[:, None, :]) @ U.transpose(1, 2)
            if self.function == "log" and not _xp.is_traced(lam) and bool((lam <= 0).any()):  # log 0: −inf, and NaN off it
                raise InputError(f"CovariancePooling: log of a singular channel covariance (an eigenvalue of Σ + εI is 0 "
                                 f"to {dtype}'s rounding, with ε = {self.eps:g}): pass a larger eps")
            return out.to(x.dtype)
