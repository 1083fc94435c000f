"""stabkit.studies._checks: the grid values the kinds share and the one family-variant label."""

import pandas as pd
import pytest

from stabkit.studies import _checks


def test_lists_integers_and_choices_name_the_key():
    assert _checks.as_list("d", 4) == [4]
    with pytest.raises(ValueError, match="grid key 'd' is empty"):
        _checks.as_list("d", [])
    assert _checks.int_list("d", [4, 8.0], 2, "matrix size") == [4, 8]
    with pytest.raises(ValueError, match=r"grid key 'd': matrix size must be an integer in \[2, 2\^63 − 1\], got 1"):
        _checks.int_list("d", [1], 2, "matrix size")
    assert _checks.int_list("seeds", [2**63 - 1], 0, "seed") == [2**63 - 1]
    for too_big in (2**63, 1e20, float("inf"), float("nan")):  # a results table stores int64
        with pytest.raises(ValueError, match="grid key 'seeds': seed must be an integer in"):
            _checks.int_list("seeds", [too_big], 0, "seed")
    with pytest.raises(ValueError, match="appears twice"):
        _checks.int_list("seeds", [0, 0], 0, "seed")
    with pytest.raises(ValueError, match=r"unknown value 'float16' \(allowed: float32, float64\)"):
        _checks.choice_list("dtypes", ["float16"], ("float32", "float64"))


def test_family_entries_and_labels():
    entry = _checks.family_entry({"family": "cluster", "delta": 1e-8})
    assert _checks.family_label(entry) == "cluster(delta=1e-08)"
    assert _checks.family_label(_checks.family_entry("separated")) == "separated"
    with pytest.raises(ValueError, match="unknown spectrum family 'nope'"):
        _checks.family_entry("nope")
    with pytest.raises(ValueError, match="must be a scalar"):
        _checks.family_entry({"family": "cluster", "delta": [1e-8]})
    rows = pd.DataFrame({"family": ["cluster", "separated"], "family_params": ["delta=1e-08", None]})
    assert list(_checks.variant_labels(rows)) == ["cluster(delta=1e-08)", "separated"]


@pytest.mark.parametrize("kind, key", [("gap_probability", "seed"), ("projector_rank", "seed"),
                                       ("angle_surfaces", "loss_seed")])
def test_a_kinds_own_validate_checks_types_as_the_cli_does(kind, key):
    """Through the API (no study file), a list where one seed belongs was accepted and cells() then
    failed with a TypeError; each kind's validate now refuses it, naming the key."""
    from stabkit.studies import kind_module

    module = kind_module(kind)
    with pytest.raises(ValueError, match=f"grid key '{key}' must be an integer, got \\[1, 2\\]"):
        module.cells(module.validate({key: [1, 2]}))
