"""The SVD-DK derivatives' scale where σ spread so far that a divided difference overflows
(:mod:`stabkit.layers._spread_scale`): ordinary σ keep range_scale's c, so they are computed bitwise as before."""

import pytest
import torch

from stabkit.layers._spread_scale import spread_scale
from stabkit.layers.svd import range_scale

G = lambda s: torch.Generator().manual_seed(s)  # noqa: E731


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn, p", [("log", None), ("sqrt", None), ("power", -1.0), ("power", -0.5), ("power", 0.3),
                                   ("power", 0.5), ("power", 2.0)])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_ordinary_singular_values_keep_range_scale(dtype, fn, p, eps):
    """200 σ-vectors with entries 10^U(−3, 3) (spreads up to 1e6) and some 2^±60 overall: c is range_scale's,
    bitwise (so the backward is the one before spread_scale existed)."""
    S = 10.0 ** (torch.rand(200, 5, generator=G(1), dtype=torch.float64) * 6 - 3)
    S = (S * 2.0 ** torch.tensor([0.0, 60.0, -60.0]).repeat(67)[:200, None].double()).to(dtype)
    q = {"log": 0.0, "sqrt": 0.5}.get(fn, p)
    c = range_scale(S, eps, q)
    assert torch.equal(spread_scale(S, eps, fn, p, c), c)


def test_only_the_batch_entry_whose_divided_difference_overflows_is_centred():
    """float32 σ = (1, ½, 1e-14), x^−½, ε = 0: D_33 = ½·1e42 overflows, so c puts the binary exponents of 1 (e = 1)
    and 1e-14 (e = −46) about 0: c = 2^−⌊−45/2⌋ = 2^23; the ordinary entry next to it keeps c = 1."""
    S = torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.5, 1e-14]])
    c = spread_scale(S, 0.0, "power", -0.5, range_scale(S, 0.0, -0.5))
    assert c.squeeze(-1).tolist() == [1.0, 2.0 ** 23]
    S0 = torch.tensor([[1.0, 0.5, 0.0]])                      # an exact zero: g'(0) = ∞ at every scale, not moved
    assert spread_scale(S0, 0.0, "power", -0.5, torch.ones(1, 1)).item() == 1.0
