"""Structured layers of matrix backpropagation (Ionescu, Vantzos & Sminchisescu, ICCV 2015) and the
declarative principal-feature layers (LESS, IED; Xu, Wang, Liu & Gould, PMaF).

Every layer is a torch op with the paper's backward, batched over leading axes, float32/float64,
CPU or CUDA:

* :func:`svd` — thin SVD (U, σ, V), Prop. 1;  :func:`eig` — symmetric EIG, Prop. 2 via
  ``stabkit.torch.eigh`` (``method=`` picks any registry backward);
* :func:`svd_matrix_function` (Prop. 3), :func:`eig_matrix_function` (Prop. 4), :func:`o2p`
  (DeepO2P, Corollary 1) for g ∈ {log, sqrt, power}; :func:`svd_dk_matrix_function` (SVD forward,
  cancellation-free Daleckii–Krein backward — an extension, compared in the o2p_stability study);
* :func:`projector` — Π_A = A A⁺, Lemma 1;
* :func:`ncut_j1`, :func:`ncut_j2`, :func:`low_rank_affinity` — normalized cuts, Props. 5–6 and
  the low-rank affinity derivatives;
* :func:`less`, :func:`ied` — principal eigenvector(s) with the implicit (DDN) backward;
* :class:`CovariancePooling` — second-order pooling g(Σ), g = √ or log, of a (B, C, H, W) map;
  :class:`ZCAWhitening` — decorrelated batch normalization (``stabkit.train.zca``), e.g.

      >>> import torch
      >>> from stabkit.layers import ZCAWhitening
      >>> zca = ZCAWhitening(16, d=8, method="taylor", params={"K": 9}, dtype="float64")
      >>> y = zca(torch.randn(32, 16, 4, 4))   # each group of 8 channels: identity covariance
      >>> y.shape
      torch.Size([32, 16, 4, 4])

  Both take ``method=`` (the eigendecomposition's backward, any registry method; CovariancePooling's
  default, None, is the exact Daleckii–Krein backward of g).

Inputs are checked as :mod:`stabkit.torch` checks them (InputError); the iterative LESS and IED
power solver raise EigensolverError when they do not converge.
"""

from .eig import eig
from .ied import ied
from .less import less
from .matrix_functions import eig_matrix_function, o2p, svd_dk_matrix_function, svd_matrix_function
from .ncuts import low_rank_affinity, ncut_j1, ncut_j2
from .projector import projector
from .pooling import CovariancePooling
from .svd import svd
from ..train.zca import ZCAWhitening

__all__ = [
    "svd", "eig", "svd_matrix_function", "svd_dk_matrix_function", "eig_matrix_function", "o2p", "projector",
    "ncut_j1", "ncut_j2", "low_rank_affinity", "less", "ied", "CovariancePooling", "ZCAWhitening",
]
