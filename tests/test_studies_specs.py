"""stabkit.studies._specs: the registry queries that give the kinds their default method lists."""

from stabkit import methods
from stabkit.studies import _specs


def test_paper_names_and_native_come_from_the_registry():
    assert _specs.by_paper_name("SVD-Taylor", "SVD-Clip") == ["taylor", "clip"]
    assert _specs.by_paper_name("SVD", "SVD-PI") == ["analytic", "pi"]
    assert _specs.by_paper_name("no such paper row") == []
    assert _specs.native_names() == [m.name for m in methods.REGISTRY.values() if m.native]


def test_exact_rule_and_one_conversion_per_list():
    assert _specs.exact() == methods.spec("analytic")
    specs = _specs.specs(["taylor:K=19", methods.spec("clip")])
    assert [str(s) for s in specs] == ["taylor:K=19", "clip"]
