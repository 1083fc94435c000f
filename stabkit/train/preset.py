"""Presets of the ZCA layer and the training protocol: ``stabkit`` (default) and ``paper``.

A preset is parsed once, at the edge (``get_preset("paper")``), and travels as a frozen
:class:`Preset`; ``Preset.layer(spec)`` gives the frozen :class:`ZCAConfig` one ZCA layer needs
(its backward a :class:`stabkit.methods.Spec`). Backward rules stay in the method registry
(``stabkit.methods``): the paper preset's rows are keyed by the Table IV names (``Method.paper_name``,
``stabkit.train.table_iv``), and the backward of the authors' code for a row is the method's
``paper_variant`` when it differs from the method itself (:data:`PAPER_BACKWARD_SPECS`).

``stabkit`` is the layer the committed reports used: εI = 1e-4 for every method, torch.linalg.eigh
forward with no clamp, one batched covariance product per group shape (symmetrised), the full
whitening, γ = 1, torch's default conv init, input std (0.2470, 0.2435, 0.2616), ×0.1 at 50 % and
75 % of the steps, and a run stops at its first failure event of any kind.

``paper`` reproduces the authors' public layers, row by row of Wang et al., TPAMI 2021, Table IV
(CIFAR-10, ResNet-18, ZCA after conv1, 15 runs × 350 epochs, float32). Sources, read at
github.com/cvlab-epfl/Power-Iteration-SVD ("PI-SVD", CIFAR-10 code of the NeurIPS 2019 paper) and
github.com/WeiWangTrento/Robust-Differentiable-SVD ("RDS", code of the TPAMI paper), and which
version produced each row:

* SVD (``analytic``): PI-SVD commit a3f2e1f (2019-05-27), ``ZCANorm.py::ZCANormOrg`` — autograd
  through ``torch.svd`` of each diagonal block, the full whitening V diag(σ^{-1/2}) Vᵀ, ε = 1e-4.
  Evidence: the NeurIPS draft committed a week earlier (a5bc13f, ``Nips/tex/3_experiments.tex``)
  already reports SVD as NaN for G1–G8 and 4.43 % error for G16 (d = 4), and that layer had no
  truncation. The truncation loop of the later versions (PI-SVD 1e6a6e7 ``ZCANormOrg``, HEAD
  ``ZCANormSVDunstable``, RDS ``ZCANormOrg``: keep pairs up to and *including* the first σ ≤ ε,
  and only the largest pair when no σ ≤ ε) appeared in September 2019, after the table; it is
  kept as the separate preset ``paper-svd-head`` (truncation ``svd-head``).
* PI (``pi-forward``, run as ``pi-authors:stop=true``): PI-SVD HEAD ``ZCANorm.py::ZCANormPIunstable``
  with ``torch_utils.py::power_iteration_unstable`` (19 iterations, backprop through all of them,
  deflation M ← M − M v vᵀ), fresh ``randn`` start vectors at every forward, ε = 1e-4, no SVD.
  Its backward hands each step's gradient back through M where reverse mode has Mᵀ
  (``pi-authors``; the two differ once a deflated M is not symmetric). Stopping rule (the
  method's ``stop=true``, with the layer's ε: the whitening keeps the method's pairs, and the
  stopped pairs are not back-propagated, as the released layer never computes them): the first
  pair is always kept; pair j ≥ 1 stops the loop when its Rayleigh quotient exceeds the previous
  one or is < ε.
* SVD-PI (``pi``): PI-SVD HEAD ``ZCANorm.py::ZCANormSVDPI`` with
  ``torch_utils.py::power_iteration_once`` (num_iter = 19: the backward sums (M/‖Mv‖)^i for
  i = 0…19, i.e. 20 power-iteration steps from the exact eigenvector), ε = 1e-4. Forward
  truncated (by the method's own rule, read by the layer): going down from the largest σ, stop at the first j with
  γ_j = Σ_{k≤j} σ_k / Σ σ ≥ 1 − ε (γ_j includes σ_j, so the smallest pair is always dropped) or
  σ_j ≤ ε — the NeurIPS paper's Alg. 1 with ε = 1e-4, K = 19 (draft a5bc13f, ``2_method.tex``).
  The RDS copy ``ZCANormPI`` (ε = 1e-10, num_iter = 9) is a later ImageNet variant, not this row.
* SVD-Taylor (``taylor``): RDS HEAD ``ZCANorm.py::ZCANormPIv2`` with ``torch_utils.py::svdv2``
  and ``geometric_approximation`` (K = 9: 1 + p + … + p⁹; at exact ties both F_ij and F_ji are
  +(K+1)/σ), ``torch.svd`` forward, σ clamped ≥ 1e-10, ε = 1e-2 (the layer's default; RDS's
  ``main_imgnet.py`` logs as "group1e-2taylor9"). Not the PI-SVD 1e6a6e7 ``geometric_approximation``
  (``range(19)``, a1 += a1·p^k: the product ∏_{k=1..19}(1 + p^k), not the series; RDS keeps that form
  with 9 factors as ``bug_geometric_approximation``), nor RDS ``geometric_approximation_old`` (squares p)
  or ``v3geometric_approximation``.
* SVD-Clip (``clip``): RDS HEAD ``ZCANorm.py::ZCANormPIv2Clip`` with ``svdv2clip`` and ``clip``
  (F_ij = 1/max(σ_i − σ_j, 0.01) for σ_i > σ_j, i.e. τ = 100; 0 at exact ties), σ clamped ≥ 1e-5,
  ε = 1e-2.

Common to all rows: ``groups`` in the authors' layers is the number of groups G (d = 64/G); the
covariance is one C×C product ``x xᵀ/(N·H·W) + εI`` whose diagonal d×d blocks are taken (no
symmetrisation); affine γ ~ U(0, 1), β = 0; every conv Kaiming-normal (fan_out, ReLU), BatchNorm
γ = 1, β = 0 (``models/resnet.py::ResNet.__init__``); input normalised with mean (0.4914, 0.4822,
0.4465) and std (0.2023, 0.1994, 0.2010); SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128,
``StepLR(step_size=100, gamma=0.1)`` stepped per epoch over 350 epochs, the DataLoader keeping the
last partial batch (391 steps per epoch) (PI-SVD ``main.py``);
failure = NaN loss (``isnan(loss)`` before the backward, then ``sys.exit``). The remaining
differences are in :data:`PAPER_DEVIATIONS` and in ``studies/zca-cifar10-paper.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import methods
from ..methods import Spec
from ..validation import is_real
from . import table_iv

#: Table IV row (``Method.paper_name``) → backward of the authors' code: the row's method, or its
#: ``paper_variant`` where their layer ran another rule (SVD-PI ``pi:steps=20``: power_iteration_once
#: sums 20 terms; SVD-Taylor ``taylor-song:K=9``: same-sign ties = geometric_approximation; SVD-Clip
#: ``clip-authors``: F = 0 at exact ties). Parsed once, here; the run record names it (``spec``).
PAPER_BACKWARD_SPECS: dict[str, Spec] = {
    row: methods.spec(table_iv.method(row).paper_variant or table_iv.method(row)) for row in table_iv.ROWS}

PAPER_STD = (0.2023, 0.1994, 0.2010)
STABKIT_STD = (0.2470, 0.2435, 0.2616)
SOLVERS = ("eigh", "svd")
TRUNCATIONS = ("none", "svd-head")
MILESTONE_UNITS = ("fraction", "epoch", "step")
STOP_ON = ("any", "nan-loss")


@dataclass(frozen=True)
class ZCAConfig:
    """Everything one ZCA layer needs, resolved for one method (see ``stabkit.train.zca``)."""

    spec: Spec = methods.spec(methods.DEFAULT)  # the backward (a Spec: parsed once, at an edge)
    eps: float = 1e-4                # εI added to Σ, and the truncation threshold
    solver: str = "eigh"             # "svd": σ = |λ| (singular values of symmetric Σ), then the floor
    lam_floor: float | None = None   # forward clamp σ ≥ floor; the gradient passes straight through
    truncation: str = "none"         # which pairs the whitening keeps (TRUNCATIONS)
    covariance: str = "grouped"      # "grouped": one product per group; "full": C×C, diagonal blocks
    symmetrize: bool = True          # (Σ + Σᵀ)/2 after the product
    weight_init: str = "ones"        # affine γ: "ones" or "uniform" (U(0, 1))
    fresh_starts: bool = False       # pi-forward: new random start vectors at every forward
    source: str = ""                 # where the convention comes from

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown ZCA solver {self.solver!r}: choose {', '.join(SOLVERS)}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"unknown ZCA truncation {self.truncation!r}: choose {', '.join(TRUNCATIONS)}")
        if self.covariance not in ("grouped", "full"):
            raise ValueError(f"unknown ZCA covariance {self.covariance!r}: choose grouped or full")
        if self.weight_init not in ("ones", "uniform"):
            raise ValueError(f"unknown ZCA weight init {self.weight_init!r}: choose ones or uniform")
        if not isinstance(self.spec, Spec):
            raise TypeError(f"ZCAConfig.spec must be a methods.Spec (parse at the edge: methods.spec(...)), got {self.spec!r}")
        if not (is_real(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number ≥ 0, got {self.eps!r}")
        if self.lam_floor is not None and not self.lam_floor >= 0:
            raise ValueError(f"lam_floor must be ≥ 0, got {self.lam_floor}")

    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def params(self) -> dict:
        return self.spec.params


@dataclass(frozen=True)
class Row:
    """One method's layer-side conventions within a preset (the backward is ``spec``)."""

    spec: Spec
    eps: float
    solver: str = "eigh"
    lam_floor: float | None = None
    truncation: str = "none"
    fresh_starts: bool = False
    shares_eps: bool = False         # the backward's own ``eps`` is the layer's ε (the authors' PI, SVD-PI)
    source: str = ""


@dataclass(frozen=True)
class Preset:
    """A named layer + protocol convention; ``rows`` maps a Table IV row name (``Method.paper_name``)
    to its :class:`Row` (empty: any registry spec, with ``default_eps``)."""

    name: str
    covariance: str
    symmetrize: bool
    weight_init: str
    conv_init: str                   # "torch-default" or "kaiming-fan-out"
    input_std: tuple
    epochs: float
    milestones: tuple
    milestone_unit: str
    gamma: float
    stop_on: str                     # "any": stop at the first failure event; "nan-loss": only at NaN loss
    tf32: bool | None                # None: leave torch's setting alone
    drop_last: bool = True           # drop an epoch's last partial batch (the authors' DataLoader keeps it)
    default_eps: float = 1e-4
    rows: tuple = field(default_factory=tuple)  # ((Table IV row name, Row), …)
    description: str = ""

    def row(self, spec: Spec) -> Row | None:
        """The row of ``spec``'s method (by its Table IV name), None when this preset has none."""
        return dict(self.rows).get(table_iv.row_of(spec))

    def row_methods(self) -> list[str]:
        """The registry names of this preset's rows, in row order."""
        return [table_iv.method(row).name for row, _ in self.rows]

    def layer(self, spec: Spec, eps: float | None = None) -> ZCAConfig:
        """The ZCA layer config of ``spec`` under this preset; ``eps`` overrides the preset's ε.
        The paper preset fixes each row's backward: the spec's parameters must be the defaults."""
        common = {"covariance": self.covariance, "symmetrize": self.symmetrize, "weight_init": self.weight_init}
        if not self.rows:
            return ZCAConfig(spec=spec, eps=self.default_eps if eps is None else float(eps), **common)
        row = self.row(spec)
        if row is None:
            raise ValueError(f"preset {self.name!r} has no row for method {spec.name!r}: choose one of "
                             f"{', '.join(self.row_methods())} (or preset 'stabkit')")
        if str(spec) != spec.name:
            raise ValueError(f"preset {self.name!r} fixes the backward of {spec.name!r} to {str(row.spec)!r}; "
                             f"got parameters {str(spec)!r} (use preset 'stabkit' to vary them)")
        eps = row.eps if eps is None else float(eps)
        backward = row.spec
        if row.shares_eps and backward.params["eps"] != eps:  # one ε for the layer and the truncation
            backward = backward.replace(eps=eps)
        return ZCAConfig(spec=backward, eps=eps, solver=row.solver,
                         lam_floor=row.lam_floor, truncation=row.truncation, fresh_starts=row.fresh_starts,
                         source=row.source, **common)


_PI_SVD = "cvlab-epfl/Power-Iteration-SVD"
_RDS = "WeiWangTrento/Robust-Differentiable-SVD"

#: (Table IV row, Row) in the paper's order
PAPER_ROWS = (
    ("SVD", Row(PAPER_BACKWARD_SPECS["SVD"], 1e-4, solver="svd",
                source=f"{_PI_SVD}@a3f2e1f ZCANorm.py::ZCANormOrg")),
    ("PI", Row(PAPER_BACKWARD_SPECS["PI"], 1e-4, fresh_starts=True, shares_eps=True,
               source=f"{_PI_SVD} ZCANorm.py::ZCANormPIunstable, torch_utils.py::power_iteration_unstable")),
    ("SVD-PI", Row(PAPER_BACKWARD_SPECS["SVD-PI"], 1e-4, solver="svd", shares_eps=True,
                   source=f"{_PI_SVD} ZCANorm.py::ZCANormSVDPI, torch_utils.py::power_iteration_once")),
    ("SVD-Taylor", Row(PAPER_BACKWARD_SPECS["SVD-Taylor"], 1e-2, solver="svd", lam_floor=1e-10,
                       source=f"{_RDS} ZCANorm.py::ZCANormPIv2, torch_utils.py::svdv2/geometric_approximation")),
    ("SVD-Clip", Row(PAPER_BACKWARD_SPECS["SVD-Clip"], 1e-2, solver="svd", lam_floor=1e-5,
                     source=f"{_RDS} ZCANorm.py::ZCANormPIv2Clip, torch_utils.py::svdv2clip/clip")),
)

PRESETS = {
    "stabkit": Preset(
        name="stabkit", covariance="grouped", symmetrize=True, weight_init="ones", conv_init="torch-default",
        input_std=STABKIT_STD, epochs=1.0, milestones=(0.5, 0.75), milestone_unit="fraction", gamma=0.1,
        stop_on="any", tf32=None, default_eps=1e-4,
        description="today's layer: ε = 1e-4, eigh, grouped covariance, full whitening, γ = 1"),
    "paper": Preset(
        name="paper", covariance="full", symmetrize=False, weight_init="uniform", conv_init="kaiming-fan-out",
        input_std=PAPER_STD, epochs=350.0, milestones=(100, 200, 300), milestone_unit="epoch", gamma=0.1,
        stop_on="nan-loss", tf32=False, drop_last=False, rows=PAPER_ROWS,
        description="the authors' public layers per Table IV row (see stabkit.train.preset)"),
}
PRESETS["paper-svd-head"] = replace(
    PRESETS["paper"], name="paper-svd-head",
    rows=tuple((m, replace(r, truncation="svd-head", source=f"{_PI_SVD} ZCANorm.py::ZCANormSVDunstable"))
               if m == "SVD" else (m, r) for m, r in PAPER_ROWS),
    description="paper, with the SVD baseline of PI-SVD HEAD (truncated through the first σ ≤ ε, else one pair)")

#: Differences between the ``paper`` preset and the authors' code that remain (also in the study file).
PAPER_DEVIATIONS = (
    ("forward solver", "torch.svd of each block, autograd through its backward",
     "eigh, σ = |λ| (equal in exact arithmetic for symmetric Σ); other rounding, ascending order; the "
     "SVD row's kernel 1/(λ_i − λ_j) is torch.svd's backward in exact arithmetic off ties"),
    ("clamp and backward", "kernel evaluated at the clamped σ",
     "kernel at the signed eigh λ (the forward whitens with |λ|); differs only where λ < 0 or |λ| < floor"),
    ("SVD-PI whitening", "λ̃ = Rayleigh quotient on the deflated matrix; stops when |λ̃ − σ|/σ > 0.1 or λ̃ < 0",
     "σ; the Rayleigh stop is the method's (pi), not the layer's"),
    ("PI random starts", "torch.randn_like per group, pair and forward, from the global RNG (unseeded)",
     "uniform [−½, ½) from an integer hash of (entry, forward count), normalised: one start set per forward, "
     "shared by the layer's groups and by every run of a cell (stacked runs need one set)"),
    ("PI step norm", "‖M v‖ clamped at ≥ 1e-5 in every step", "no clamp: differs only at a step where ‖M v‖ < 1e-5"),
    ("data pipeline", "torchvision RandomCrop(32, padding=4) + flip, DataLoader shuffle",
     "the same transforms as tensor ops on the device, own shuffle order"),
    ("multi-GPU wrapper", "nn.DataParallel, cudnn.benchmark", "one device, cudnn defaults"),
    ("SVD-Taylor non-finite F", "left as computed", "taylor-song replaces a non-finite F entry by the sample's extreme "
     "finite one; reached only where an eigenvalue of Σ + εI is 0 or not finite (the kernel sees the unclamped λ)"),
)


def get_preset(preset) -> Preset:
    """``Preset`` from a name (or a Preset, returned as is); ValueError naming the choices."""
    if isinstance(preset, Preset):
        return preset
    if preset is None:
        return PRESETS["stabkit"]
    try:
        return PRESETS[str(preset)]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}") from None
