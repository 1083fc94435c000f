"""Bad input found by the fault-injection review (issue 13, validation gaps): every one is refused
with a ValueError naming the problem in the library, and one line with exit code 2 on the CLI."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from stabkit import methods
from stabkit.losses import make_loss
from stabkit.torch import eigh

from .conftest import build

# ---------------------------------------------------------------------------- method parameters
#: (spec, the parameter the message must name) — each was accepted before parameters had domains
#: (taylor:K=-1 ran as K=0, taylor:eps=-1 gave angle 90°, taylor:K=1e9 hung).
OUT_OF_RANGE = [
    ("taylor:K=-1", "K=-1"), ("taylor:K=1e9", "K=1e9"), ("taylor:K=inf", "K=inf"), ("taylor:K=nan", "K=nan"),
    ("taylor:eps=-1", "eps=-1"), ("taylor:eps=nan", "eps=nan"), ("taylor:eps=inf", "eps=inf"),
    ("clip:tau=0", "tau=0"), ("clip:tau=-5", "tau=-5"), ("clip:tau=inf", "tau=inf"),
    ("pi:steps=0", "steps=0"), ("pi:steps=-3", "steps=-3"), ("pi-forward:steps=0", "steps=0"), ("pi:steps=1e6", "steps=1e6"),
    ("pi-forward:seed=-1", "seed=-1"), ("lorentzian:eps=-1", "eps=-1"), ("lorentzian:eps=0", "eps=0"),
    ("taylor-song:K=-2", "K=-2"), ("taylor-song:K=5000", "K=5000"), ("degenerate:atol=-1e-9", "atol=-1e-09"),
    ("taylor:K=none", "K=none"),
]


@pytest.mark.parametrize("spec, needle", OUT_OF_RANGE)
def test_out_of_range_parameter_is_refused_naming_method_parameter_and_domain(spec, needle):
    name = spec.partition(":")[0]
    with pytest.raises(ValueError) as info:
        methods.parse_spec(spec)
    message = str(info.value)
    assert f"method {name!r}" in message and needle.split("=")[0] + "=" in message
    assert "must be" in message  # the domain is stated
    assert "\n" not in message


def test_domain_is_checked_for_python_calls_too():
    A = build([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="tau=0"):
        methods.gradient(("clip", {"tau": 0}), A, make_loss("zca", 3))
    with pytest.raises(ValueError, match="eps=-1"):
        eigh(torch.eye(3, dtype=torch.float64), method="lorentzian", eps=-1.0)
    with pytest.raises(ValueError, match="K=True"):
        methods.resolve_params("taylor", {"K": True})


def test_domain_edges_are_accepted_and_give_the_closed_form():
    """The smallest legal values: taylor K=0 is F_ij = sign/λ_hi; clip with a tiny τ is ±τ."""
    lam = np.array([1.0, 2.0, 4.0])
    params = methods.resolve_params("taylor", {"K": "0", "eps": "0"})
    assert params == {"K": 0, "eps": 0.0}
    F = methods.get("taylor").backward.kernel(lam, **params)
    assert F[0, 1] == pytest.approx(1 / 2) and F[1, 0] == pytest.approx(-1 / 2) and F[0, 2] == pytest.approx(1 / 4)
    tau = methods.resolve_params("clip", {"tau": "1e-300"})["tau"]
    F = methods.get("clip").backward.kernel(lam, tau=tau)
    assert F[0, 1] == 1e-300 and F[2, 0] == -1e-300
    assert methods.resolve_params("pi", {"steps": "1", "eps": "1"}) == {"steps": 1, "eps": 1.0}
    assert methods.resolve_params("taylor", {"K": "1000"})["K"] == 1000


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True)))
def test_taylor_K_accepted_exactly_on_the_integers_0_to_1000(value):
    legal = math.isfinite(value) and value == int(value) and 0 <= value <= 1000
    try:
        K = methods.resolve_params("taylor", {"K": repr(value)})["K"]
    except ValueError as exc:
        assert not legal, exc
        assert "taylor" in str(exc) and "K=" in str(exc)
    else:
        assert legal and K == int(value) and isinstance(K, int)


@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_clip_tau_accepted_exactly_when_finite_and_positive(value):
    legal = math.isfinite(value) and value > 0
    try:
        tau = methods.resolve_params("clip", {"tau": value})["tau"]
    except ValueError:
        assert not legal
    else:
        assert legal and tau == value


def test_every_parameter_has_a_domain_holding_its_default():
    for name in methods.NAMES:
        method = methods.get(name)
        assert set(method.domains) == set(method.defaults), name
        for key, default in method.defaults.items():
            assert method.domains[key].contains(default), (name, key)


def test_one_key_value_grammar():
    from cli._common import parse_params
    from stabkit.studies.runner import parse_override

    assert parse_params([" delta = 1e-8", "k=2"]) == {"delta": 1e-8, "k": 2}
    assert parse_override(" d = [4, 8]") == ("d", [4, 8])
    assert methods.parse_spec("taylor: K = 19 , eps = 1e-4") == ("taylor", {"K": 19, "eps": 1e-4})
    for call in (lambda: parse_params(["delta"]), lambda: parse_override("d"), lambda: methods.parse_spec("taylor:K")):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            call()
    with pytest.raises(ValueError, match="given twice"):
        methods.parse_spec("taylor:K=1,K=2")
    with pytest.raises(ValueError, match="given twice"):
        parse_params(["k=1", "k=2"])
