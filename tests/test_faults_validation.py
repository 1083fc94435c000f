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
        methods.parse(spec)
    message = str(info.value)
    assert f"method {name!r}" in message and needle.split("=")[0] + "=" in message
    assert "must be" in message  # the domain is stated
    assert "\n" not in message


@pytest.mark.parametrize("text", ["taylor:K=nan", "taylor:K=inf", "taylor:K=2.5", "pi-forward:seed=-inf"])
def test_an_integer_parameter_that_is_no_integer_says_so(text):
    """NaN, ±∞ and fractions are refused as "not an integer", not as "out of range"."""
    with pytest.raises(ValueError, match="is not an integer"):
        methods.parse(text)


@pytest.mark.parametrize("text", ["taylor:", "taylor:K=3,,", "taylor:,K=3", "clip: "])
def test_an_empty_parameter_in_a_spec_is_refused(text):
    with pytest.raises(ValueError, match="empty parameter"):
        methods.parse(text)
    assert str(methods.parse("taylor")) == "taylor"  # no colon: the defaults


def test_domain_is_checked_for_python_calls_too():
    A = build([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="tau=0"):
        methods.spec(("clip", {"tau": 0})).gradient(A, make_loss("zca", 3))
    with pytest.raises(ValueError, match="eps=-1"):
        eigh(torch.eye(3, dtype=torch.float64), method="lorentzian", eps=-1.0)
    with pytest.raises(ValueError, match="K=True"):
        methods.bind("taylor", {"K": True}).params


MAPPING = r"method 'taylor': parameters must be a mapping such as \{'K': 19\}, got "


@pytest.mark.parametrize("call, needle", [
    (lambda: methods.spec(("taylor", [("K", 3)])), MAPPING + r"\[\('K', 3\)\]"),
    (lambda: methods.bind("taylor", "K=3"), MAPPING + "'K=3'"),
    (lambda: methods.spec((1, {})), "unknown method 1: choose one of analytic, "),
    (lambda: methods.get(["taylor"]), r"unknown method \['taylor'\]: choose one of analytic, "),
    (lambda: methods.bind(None), "unknown method None: choose one of analytic, "),
])
def test_a_method_or_parameters_of_the_wrong_type_are_a_method_spec_error(call, needle):
    """A list of pairs, spec text as parameters, or a number/list as the method gave AttributeError or
    TypeError from inside bind/get."""
    with pytest.raises(methods.MethodSpecError, match=needle):
        call()


def test_domain_edges_are_accepted_and_give_the_closed_form():
    """The smallest legal values: taylor K=0 is F_ij = sign/λ_hi; clip with a tiny τ is ±τ."""
    lam = np.array([1.0, 2.0, 4.0])
    params = methods.bind("taylor", {"K": "0", "eps": "0"}).params
    assert params == {"K": 0, "eps": 0.0}
    F = methods.get("taylor").kernel(lam, **params)
    assert F[0, 1] == pytest.approx(1 / 2) and F[1, 0] == pytest.approx(-1 / 2) and F[0, 2] == pytest.approx(1 / 4)
    tau = methods.bind("clip", {"tau": "1e-300"}).params["tau"]
    F = methods.get("clip").kernel(lam, tau=tau)
    assert F[0, 1] == 1e-300 and F[2, 0] == -1e-300
    assert methods.bind("pi", {"steps": "1", "eps": "1"}).params == {"steps": 1, "eps": 1.0}
    assert methods.bind("taylor", {"K": "1000"}).params["K"] == 1000


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True)))
def test_taylor_K_accepted_exactly_on_the_integers_0_to_1000(value):
    legal = math.isfinite(value) and value == int(value) and 0 <= value <= 1000
    try:
        K = methods.bind("taylor", {"K": repr(value)}).params["K"]
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
        tau = methods.bind("clip", {"tau": value}).params["tau"]
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
    from stabkit.cli._common import parse_params
    from stabkit.studies._grid import parse_override

    assert parse_params([" delta = 1e-8", "k=2"]) == {"delta": 1e-8, "k": 2}
    assert parse_override(" d = [4, 8]") == ("d", [4, 8])
    assert methods.parse("taylor: K = 19 , eps = 1e-4").params == {"K": 19, "eps": 1e-4}
    for call in (lambda: parse_params(["delta"]), lambda: parse_override("d"), lambda: methods.parse("taylor:K")):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            call()
    with pytest.raises(ValueError, match="given twice"):
        methods.parse("taylor:K=1,K=2")
    with pytest.raises(ValueError, match="given twice"):
        parse_params(["k=1", "k=2"])


# ---------------------------------------------------------------------------- the command line
from typer.testing import CliRunner  # noqa: E402

from stabkit.cli.main import app  # noqa: E402

cli = CliRunner()


def _one_line_exit_2(result, needle):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "╭" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def _npy(tmp_path, array, name="m.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize("args, needle", [
    (["compare", "--dtype", "foo"], "unsupported dtype 'foo'"),
    (["compare", "--format", "xml"], "'xml' is not one of"),
    (["compare", "--d", "abc"], "--d"),
    (["compare", "--d", "1"], "--d 1: a generated matrix needs d ≥ 2"),  # every family needs d ≥ 2 (a 1×1 --matrix is compared)
    (["compare", "--d", "0"], "--d 0: a generated matrix needs d ≥ 2"),
    (["compare", "--nosuch"], "No such option"),
    (["compare", "-m", "taylor:K=1e9"], "K=1e9"),
    (["compare", "-m", "clip:tau=0"], "tau=0"),
    (["nosuch"], "No such command"),
    (["run"], "Missing argument"),
    (["bench", "--device", "foo"], "unknown device 'foo'"),
    (["bench", "--device", "cuda:99"], "cuda"),
    (["bench", "--repeats", "0"], "repeats must be at least 1"),
    (["bench", "--batch", "-1"], "batch must be at least 1"),
    (["bench", "--dtype", "float16"], "unsupported dtype"),
    (["bench", "--d", "100000"], "GiB"),
    (["bench", "-m", "magic"], "unknown method"),
])
def test_cli_bad_options_are_one_line_exit_2(args, needle):
    _one_line_exit_2(cli.invoke(app, args), needle)


def test_cli_huge_d_refused_before_allocating(monkeypatch):
    """--d 100000 would need 80 GB for the matrix alone (MemoryError traceback before): refused before
    the matrix is built."""
    from stabkit import spectra

    def build(*args, **kwargs):
        raise AssertionError("the matrix was built before the refusal")

    monkeypatch.setattr(spectra, "make", build)
    result = cli.invoke(app, ["compare", "--d", "100000"])
    _one_line_exit_2(result, "d = 100000")
    assert "GiB" in result.stderr


def test_cli_slow_truth_refused_without_force():
    """--d 5000 ran silently for an hour: refused (by its memory or its estimated time), one line."""
    result = cli.invoke(app, ["compare", "--d", "5000"])
    _one_line_exit_2(result, "d = 5000")
    assert "--force" in result.stderr or "GiB" in result.stderr


def test_truth_cost_guard():
    from stabkit.compare import TRUTH_SECONDS_LIMIT, check_truth_cost, truth_cost

    big = 1e13  # bytes: memory is no limit here
    seconds, _ = truth_cost(2048)
    assert seconds > TRUTH_SECONDS_LIMIT
    with pytest.raises(ValueError, match="--force") as info:
        check_truth_cost(2048, memory_bytes=big)
    assert f"~{seconds / 60:.0f} min" in str(info.value)
    check_truth_cost(2048, force=True, memory_bytes=big)  # forced: allowed
    check_truth_cost(64, memory_bytes=big)  # ~0.1 s: allowed
    with pytest.raises(ValueError, match="GiB"):
        check_truth_cost(100_000, force=True, memory_bytes=64 * 2**30)  # never fits, even forced
    # the model is monotone and scales as documented: ×2 in d → ×2^2.5 in time, ×4 in memory
    (t1, m1), (t2, m2) = truth_cost(300), truth_cost(600)
    assert t2 / t1 == pytest.approx(2**2.5) and m2 / m1 == pytest.approx(4.0)
    # an iterating method's own-function truth adds ~d³: fine at 256 (the study's largest), not at 512
    pi = [methods.spec("pi-forward")]
    check_truth_cost(256, memory_bytes=big, specs=pi)
    check_truth_cost(512, memory_bytes=big)
    with pytest.raises(ValueError, match="own-function truths are estimated"):
        check_truth_cost(512, memory_bytes=big, specs=pi)
    own = {d: truth_cost(d, pi)[0] - truth_cost(d)[0] for d in (256, 512)}
    assert own[512] == pytest.approx(8 * own[256])
    # ∝ T: 2000 steps cost 2000/19 times the default's; two iterating methods, two truths
    long = [methods.spec("pi-forward:steps=2000")]
    assert truth_cost(256, long)[0] - truth_cost(256)[0] == pytest.approx(own[256] * 2000 / 19)
    assert truth_cost(256, pi + long)[0] - truth_cost(256)[0] == pytest.approx(own[256] * 2019 / 19)
    assert truth_cost(256, [methods.spec("taylor")]) == truth_cost(256)  # no iteration, no own truth


def test_compare_and_run_count_the_own_function_truth_of_an_iterating_method(tmp_path):
    """`stabkit compare` at d = 512 runs analytic alone but refuses pi-forward (its power-iteration
    truth ~7 min) in one line, exit 2; a gradient-accuracy grid with pi-forward at d = 512 likewise."""
    from stabkit.studies import gradient_accuracy

    result = cli.invoke(app, ["compare", "--d", "512", "-m", "pi-forward"])
    _one_line_exit_2(result, "own-function truth")
    gradient_accuracy.check_cost({"d": [512], "methods": ["analytic"]})
    with pytest.raises(ValueError, match="own-function truth"):
        gradient_accuracy.check_cost({"d": [512], "methods": ["analytic", "pi-forward"]})


def _huge_header(path):
    """A .npy file whose header declares a 10⁷ × 10⁷ float64 matrix (800 TB) over 16 bytes of data."""
    from numpy.lib import format as npy_format

    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**7)})
        f.write(np.zeros(2).tobytes())


@pytest.mark.parametrize("make, needle", [
    (lambda p: np.save(p, np.array(3.0)), "shape ()"),                  # 0-d (IndexError before)
    (lambda p: np.save(p, np.arange(3.0)), "shape (3,)"),               # 1-d
    (lambda p: np.save(p, np.ones((2, 2, 2))), "shape (2, 2, 2)"),      # 3-d
    (lambda p: open(p, "wb").close(), "empty"),                         # empty ("Aborted.", exit 1 before)
    (lambda p: open(p, "wb").write(b"not numpy at all"), "not a .npy file"),  # junk, e.g. a CSV
    (lambda p: np.save(p, np.array(["a", "b"], dtype=object), allow_pickle=True), "as .npy"),  # pickled
    (lambda p: p.mkdir(), "folder"),                                    # a directory
    (lambda p: np.savez(open(p, "wb"), a=np.eye(2)), ".npz archive"),    # an .npz under a .npy name
    (_huge_header, "cannot read matrix file"),                            # damaged header (MemoryError, exit 1 before)
])
def test_cli_bad_matrix_files(tmp_path, make, needle):
    path = tmp_path / "m.npy"
    make(path)
    _one_line_exit_2(cli.invoke(app, ["compare", "--matrix", str(path)]), needle)


def test_cli_unreadable_file(tmp_path, monkeypatch):
    """A file the user may not read (simulated: this test may run as root, who reads everything)."""
    path = _npy(tmp_path, np.eye(3))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(np, "load", denied)
    _one_line_exit_2(cli.invoke(app, ["compare", "--matrix", path]), "Permission denied")


def test_library_refuses_bad_dtype_and_bench_args():
    from stabkit.bench import check_bench_args
    from stabkit.validation import check_dtype

    with pytest.raises(ValueError, match="unsupported dtype 'foo'"):
        check_dtype("foo")
    for kwargs, needle in [({"device": "foo"}, "unknown device"), ({"repeats": 0}, "repeats"),
                           ({"batch": -1}, "batch"), ({"dims": [1]}, "at least 2"), ({"dtype": "int8"}, "dtype")]:
        args = {"dims": [4], "batch": 2, "dtype": "float32", "device": "cpu", "repeats": 1, **kwargs}
        with pytest.raises(ValueError, match=needle):
            check_bench_args(**args)
    check_bench_args([4], 2, "float64", "cpu", 1, ["taylor"])  # valid: no error


def test_the_guard_counts_the_steps_of_an_iterating_method(monkeypatch):
    """pi-forward:steps=2000 at d = 256 (~95 min of own-function truth) is refused by the grid check and
    by `stabkit compare` (one line, exit 2, before any work), unless forced."""
    import stabkit.compare
    from stabkit.studies import gradient_accuracy

    gradient_accuracy.check_cost({"d": [256], "methods": ["pi-forward"]})  # ~1 min: allowed
    with pytest.raises(ValueError, match="own-function truths"):
        gradient_accuracy.check_cost({"d": [256], "methods": ["pi-forward:steps=2000"]})
    gradient_accuracy.check_cost({"d": [256], "methods": ["pi-forward:steps=2000"]}, force=True)

    def never(*args, **kwargs):
        raise AssertionError("the guard let a ~95 min truth through")

    monkeypatch.setattr(stabkit.compare, "compare", never)
    _one_line_exit_2(cli.invoke(app, ["compare", "--d", "256", "-m", "pi-forward:steps=2000"]), "own-function truths")
