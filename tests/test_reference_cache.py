"""The ground-truth cache (``stabkit.reference._cache``): keys that never change, entries reused, and a
damaged or unwritable cache that never fails a computation or gives a wrong answer (issue 13)."""

import errno
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabkit import _io
from stabkit import reference as R
from stabkit.compare import compare
from stabkit.losses import make_loss
from stabkit.reference import _cache
from tests.conftest import build


def _loss(name, d, seed=0):
    return make_loss(name, d, seed=seed, k=2)


def test_cache_keys_never_change():
    """The keys of this fixed input, pinned: a changed key would recompute every cached truth (bump
    ``ENGINE_VERSIONS`` instead when an engine's results change)."""
    A = np.array([[2.0, 0.5, 0.0], [0.5, 3.0, 0.25], [0.0, 0.25, 4.0]])
    h = "4518791de7c612444077314e8baf44cd"
    assert _cache.eig_key(A, "mpmath", (33, 55)) == f"eig-v3-mpmath3-{h}-(33,55)"
    assert _cache.eig_key(A, "flint", None) == f"eig-v3-flint5-{h}-auto"
    assert _cache.eig_key(A, "flint", 40) == f"eig-v3-flint5-{h}-40"
    assert (_cache.grad_key(A, "mpmath", make_loss("zca", 3, seed=1), None)
            == f"grad-v3-mpmath3-{h}-8c71ce9e9c69180ac4d2557f-auto")
    assert (_cache.grad_key(A, "flint", make_loss("projector", 3, seed=1, k=1), 12)
            == f"grad-v3-flint5-{h}-aa0dfe8a1ee7db852e47134b-12")
    assert R.ENGINE_VERSIONS is _cache.ENGINE_VERSIONS  # the public name is the one the keys read


def test_cache_keys_carry_the_engine_version(monkeypatch):
    A = build([1.0, 2.0, 3.0], seed=1)
    loss = _loss("zca", 3)
    for engine in ("mpmath", "flint"):
        k_eig, k_grad = _cache.eig_key(A, engine, None), _cache.grad_key(A, engine, loss, None)
        assert f"-{engine}{R.ENGINE_VERSIONS[engine]}-" in k_eig and _cache.CACHE_VERSION in k_eig
        assert f"-{engine}{R.ENGINE_VERSIONS[engine]}-" in k_grad and _cache.CACHE_VERSION in k_grad
        monkeypatch.setitem(R.ENGINE_VERSIONS, engine, "bumped")
        assert _cache.eig_key(A, engine, None) != k_eig
        assert _cache.grad_key(A, engine, loss, None) != k_grad


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_cache_identical_and_not_recomputed(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_CACHE", str(tmp_path / "cache"))
    A = build(np.linspace(1, 3, 16), seed=2)
    loss = _loss("log", 16, seed=3)
    first = R.ground_truth(A, loss, engine=engine)
    with monkeypatch.context() as m:  # the second call computes nothing (checked, not timed: load cannot fail it)
        m.setattr(R, "_engine", lambda *a, **k: pytest.fail("the cached truth was computed again"))
        second = R.ground_truth(A, loss, engine=engine)
    np.testing.assert_array_equal(first.grad, second.grad)
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    assert (first.digits, first.engine) == (second.digits, second.engine)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporaries left
    # the eigendecomposition is cached separately: a new loss on the same matrix reuses it
    files = {p.name for p in (tmp_path / "cache").iterdir()}
    assert any(f.startswith("eig-") for f in files) and any(f.startswith("grad-") for f in files)
    other = R.ground_truth(A, _loss("projector", 16, seed=3), engine=engine)
    assert other.certified
    assert len([f for f in (tmp_path / "cache").iterdir() if f.name.startswith("eig-")]) == 1
    # cache=False recomputes and writes nothing new
    n = len(list((tmp_path / "cache").iterdir()))
    again = R.ground_truth(A, loss, engine=engine, cache=False)
    np.testing.assert_array_equal(again.grad, first.grad)
    assert len(list((tmp_path / "cache").iterdir())) == n


def _entries(cache):
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def _compute(engine, A, loss, expect_warning: str | None = None):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        truth = R.ground_truth(A, loss, engine=engine)
    msgs = [str(x.message) for x in w if issubclass(x.category, R.ReferenceCacheWarning)]
    if expect_warning is None:
        assert not msgs, msgs
    else:
        assert msgs and all(expect_warning in m for m in msgs), msgs
    return truth, msgs


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
@pytest.mark.parametrize("fault", ["edited", "truncated", "garbage", "empty"])
def test_bad_cache_entry_is_recomputed(engine, fault, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("STABKIT_CACHE", str(cache))
    A = build([0.5, 1.0, 2.0, 3.5], seed=4)
    loss = make_loss("zca", 4, seed=2)
    good, _ = _compute(engine, A, loss)
    files = _entries(cache)
    assert {f.name.split("-")[0] for f in files} == {"eig", "grad"}
    for f in files:
        raw = f.read_bytes()
        if fault == "edited":  # flip bits in the payload (a valid-looking file, wrong numbers)
            b = bytearray(raw)
            b[-40] ^= 0x10
            b[len(b) // 2] ^= 0x01
            f.write_bytes(bytes(b))
        elif fault == "truncated":
            f.write_bytes(raw[: len(raw) // 2])
        elif fault == "garbage":
            f.write_bytes(b"{not json, not a zip")
        else:
            f.write_bytes(b"")
    # the gradient entry is read first; after its recomputation the eigendecomposition entry too
    again, msgs = _compute(engine, A, loss, expect_warning="recomputing")
    assert any(str(files[0]) in m for m in msgs) or any(str(files[1]) in m for m in msgs)
    np.testing.assert_array_equal(again.grad, good.grad)
    assert again.digits == good.digits and again.certified
    # the entries were rewritten: a third call reads them without a warning
    third, _ = _compute(engine, A, loss)
    np.testing.assert_array_equal(third.grad, good.grad)


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_entry_edited_with_valid_contents_is_caught(engine, tmp_path, monkeypatch):
    """A gradient entry rewritten as a *valid* archive with a wrong gradient (the 27.7° case)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STABKIT_CACHE", str(cache))
    A = build([0.5, 1.0, 2.0, 3.5], seed=4)
    loss = make_loss("log", 4, seed=2)
    good, _ = _compute(engine, A, loss)
    gfile = next(f for f in _entries(cache) if f.name.startswith("grad-"))
    head, _, _ = gfile.read_bytes().partition(b"\n")
    forged = R.Truth(good.grad * 1.5, good.eigenvalues, 60.0, engine, 0.0)
    gfile.write_bytes(head + b"\n" + R._truth_to_bytes(forged))
    again, msgs = _compute(engine, A, loss, expect_warning="checksum mismatch")
    assert str(gfile) in msgs[0]
    np.testing.assert_array_equal(again.grad, good.grad)


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_unwritable_cache_never_fails(engine, tmp_path, monkeypatch):
    """A full disk (ENOSPC on every write) and a cache path that cannot be a directory: the truth is
    computed, certified and equal to the uncached one; each problem is one warning."""
    A = build([0.5, 1.0, 2.0, 3.5], seed=5)
    loss = make_loss("sqrt", 4, seed=2)
    ref = R.ground_truth(A, loss, engine=engine, cache=False)

    monkeypatch.setenv("STABKIT_CACHE", str(tmp_path / "full"))

    def full(path, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_cache, "write_bytes_atomic", full)
    truth, msgs = _compute(engine, A, loss, expect_warning="going on without caching")
    assert "No space left" in msgs[0]
    np.testing.assert_array_equal(truth.grad, ref.grad)
    assert truth.certified
    monkeypatch.undo()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("STABKIT_CACHE", str(blocker / "cache"))
    truth, msgs = _compute(engine, A, loss, expect_warning="without caching")
    np.testing.assert_array_equal(truth.grad, ref.grad)


@pytest.mark.parametrize("engine", ["mpmath", "flint"])
def test_read_only_cache_never_fails(engine, tmp_path, monkeypatch):
    """A read-only cache directory: EACCES opening the temporary file (simulated in ``stabkit._io``, as
    root ignores permissions), and a real chmod 0o555 directory where the tests do not run as root."""
    A = build([0.5, 1.0, 2.0, 3.5], seed=8)
    loss = make_loss("zca", 4, seed=2)
    ref = R.ground_truth(A, loss, engine=engine, cache=False)
    cache = tmp_path / "ro"
    cache.mkdir()
    monkeypatch.setenv("STABKIT_CACHE", str(cache))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(cache))

    with monkeypatch.context() as m:
        m.setattr(_io, "open", denied, raising=False)
        truth, msgs = _compute(engine, A, loss, expect_warning="going on without caching")
    assert "Permission denied" in msgs[0]
    np.testing.assert_array_equal(truth.grad, ref.grad)
    assert not list(cache.iterdir())
    if os.geteuid() != 0:
        cache.chmod(0o555)
        try:
            truth, _ = _compute(engine, A, loss, expect_warning="going on without caching")
            np.testing.assert_array_equal(truth.grad, ref.grad)
        finally:
            cache.chmod(0o755)


def test_compare_survives_a_corrupt_cache(tmp_path, monkeypatch):
    """The path a study cell takes (compare → ground_truth) with every cache entry truncated."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STABKIT_CACHE", str(cache))
    A = build([0.5, 1.0, 2.0, 3.5], seed=6)
    first = compare(A, "zca", ["analytic"])
    for f in _entries(cache):
        f.write_bytes(f.read_bytes()[:10])
    with pytest.warns(R.ReferenceCacheWarning, match="recomputing"):
        second = compare(A, "zca", ["analytic"])
    np.testing.assert_array_equal(first.truth.grad, second.truth.grad)
    assert second.truth.certified


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=3),
       which=st.sampled_from(["grad", "eig"]))
def test_any_damage_to_an_entry_is_harmless(cut, flips, which, tmp_path_factory, monkeypatch):
    """Property: whatever is done to a cache entry (truncated anywhere, any bytes changed), the truth
    equals the freshly computed one and nothing raises."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("STABKIT_CACHE", str(cache))
    A = build([0.5, 1.0, 2.5], seed=7)
    loss = make_loss("zca", 3, seed=1)
    ref = R.ground_truth(A, loss, engine="mpmath", cache=False)
    R.ground_truth(A, loss, engine="mpmath")
    f = next(p for p in _entries(cache) if p.name.startswith(which))
    b = bytearray(f.read_bytes())
    for pos, x in flips:
        b[min(int(pos * len(b)), len(b) - 1)] ^= x
    f.write_bytes(bytes(b[: int(cut * len(b))] if cut < 1 else b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", R.ReferenceCacheWarning)
        again = R.ground_truth(A, loss, engine="mpmath")
    np.testing.assert_array_equal(again.grad, ref.grad)
    assert again.digits == ref.digits
