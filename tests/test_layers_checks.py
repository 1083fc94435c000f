"""A layer checks its own input: it refuses stabkit.torch's ``check=`` (instead of forwarding it or
mixing it into the method's parameters), and its non-symmetric-input message does not advise one."""

import inspect

import pytest
import torch

from stabkit import layers
from stabkit.errors import InputError
from tests._helpers import nonsymmetric

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPD = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]], dtype=torch.float64)

# each public layer that takes method parameters, called with ``check`` among them
WITH_METHOD_PARAMS = {
    "eig": lambda check: layers.eig(SPD, method="taylor", check=check),
    "eig_matrix_function": lambda check: layers.eig_matrix_function(SPD, method="taylor", check=check),
    "o2p": lambda check: layers.o2p(SPD, route="eig", method="taylor", check=check),
    "CovariancePooling": lambda check: layers.CovariancePooling(method="taylor", params={"check": check}),
    "ZCAWhitening": lambda check: layers.ZCAWhitening(4, d=2, method="taylor", params={"check": check}),
}


def _takes_method_params(obj) -> bool:
    sig = inspect.signature(obj)
    return "params" in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def test_the_parametrized_layers_are_all_public_layers_with_method_params():
    public = {name for name in layers.__all__ if _takes_method_params(getattr(layers, name))}
    assert public == set(WITH_METHOD_PARAMS)


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("name", sorted(WITH_METHOD_PARAMS))
def test_layer_refuses_check(name, check):
    with pytest.raises(InputError, match=rf"^{name}: check= is not a layer argument"):
        WITH_METHOD_PARAMS[name](check)


SYMMETRIC_INPUT = {
    "eig": layers.eig,
    "eig_matrix_function": layers.eig_matrix_function,
    "ied": layers.ied,
    "less": layers.less,
}


@pytest.mark.parametrize("name", sorted(SYMMETRIC_INPUT))
def test_non_symmetric_message_gives_no_check_advice(name):
    with pytest.raises(InputError, match=rf"^{name}: input is not symmetric") as info:
        SYMMETRIC_INPUT[name](nonsymmetric())
    assert "check=" not in str(info.value)
    assert "symmetrize" in str(info.value)


@pytest.mark.parametrize("name", ["less", "ied"])
def test_tolerance_takes_any_real_number_in_the_open_unit_interval(name):
    """tol = np.float32(1e-6) was refused as 'tol must be a number in (0, 1), got np.float32(1e-06)'
    (only int and float passed; eps= takes numpy numbers). The result equals that of the float tol."""
    import numpy as np

    fn = getattr(layers, name)
    y32, y = fn(SPD, tol=np.float32(1e-6)), fn(SPD, tol=float(np.float32(1e-6)))
    torch.testing.assert_close(y32, y, rtol=0, atol=0)
    for bad in (np.float32(0.0), np.float64(1.0), True, float("nan"), "1e-6"):
        with pytest.raises(InputError, match="tol must be a number in"):
            fn(SPD, tol=bad)
