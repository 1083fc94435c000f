"""Bad input gives a ValueError whose message names the problem."""

import re

import numpy as np
import pytest

from stabkit import validation
from stabkit.validation import check_symmetric


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.ones((2, 3)), "not square"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "1 NaN"),
        (np.array([[np.inf, 0.0], [0.0, 1.0]]), "1 Inf"),
        (np.zeros((0, 0)), "empty"),
        (np.ones(3), "square matrix"),
        (np.eye(2, dtype=np.float16), "unsupported dtype float16"),
        (np.eye(2, dtype=np.complex128), "unsupported dtype complex128"),
        (np.array([["a", "b"], ["c", "d"]]), "unsupported dtype"),
        (np.eye(2, dtype=np.int64), "^matrix has unsupported dtype int64"),  # was unnamed, read as --dtype's
        (np.eye(2, dtype=">i8"), "^matrix has unsupported dtype >i8"),
    ],
)
def test_bad_input_is_named(bad, needle):
    with pytest.raises(ValueError, match=needle):
        check_symmetric(bad)


def test_an_empty_batch_is_accepted_as_stabkit_torch_accepts_it():
    """(0, d, d) was "empty" here while stabkit.torch.eigh returns empty factors for it; (0, 0) stays refused."""
    import torch

    import stabkit.torch as st

    for shape in [(0, 3, 3), (2, 0, 3, 3)]:
        assert check_symmetric(np.zeros(shape)).shape == shape
        assert st.eigh(torch.zeros(shape, dtype=torch.float64)).eigenvalues.shape == shape[:-1]
    with pytest.raises(ValueError, match="empty"):
        check_symmetric(np.zeros((2, 0, 0)))


def test_tiny_asymmetry_is_removed():
    A = np.array([[1.0, 2.0], [2.0 + 1e-15, 1.0]])
    S = check_symmetric(A)
    assert S[0, 1] == S[1, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetry_tolerance_is_sqrt_eps_as_in_torch_eigh(dtype):
    """One tolerance everywhere: what stabkit.torch.eigh accepts, check_symmetric (compare, the
    ground truth) accepts, and both refuse the same matrices."""
    import torch

    import stabkit.torch as st

    sqrt_eps = float(np.finfo(dtype).eps) ** 0.5
    for rel, accepted in ((sqrt_eps / 4, True), (sqrt_eps * 4, False)):
        A = np.diag(np.arange(1.0, 5.0)).astype(dtype)
        A[0, 3] = A[3, 0] = 1.0
        A[3, 0] += dtype(rel * 4.0)  # max|A| = 4
        if accepted:
            S = check_symmetric(A)
            assert (S == S.T).all()
            st.eigh(torch.from_numpy(A))
        else:
            with pytest.raises(ValueError, match="not symmetric"):
                check_symmetric(A)
            with pytest.raises(ValueError, match="not symmetric"):
                st.eigh(torch.from_numpy(A))


@pytest.mark.parametrize("value, minimum, ok", [
    (0, 0, True), (3.0, 0, True), (np.int64(5), 1, True), (2**63 - 1, 0, True),
    (-1, 0, False), (0, 1, False), (2.5, 0, False), (2**63, 0, False), (1e20, 0, False),
    (float("inf"), 0, False), (float("nan"), 0, False), (True, 0, False), ("3", 0, False), (None, 0, False),
])
def test_is_count_is_an_integer_a_results_table_can_store(value, minimum, ok):
    assert validation.is_count(value, minimum) is ok


def test_is_integer_takes_python_and_numpy_integers_in_range_only():
    """The layers' counts, ranks and seeds: no bool, no float (not even 2.0), both ends inclusive."""
    import numpy as np
    from stabkit.validation import is_integer
    assert is_integer(3, 1, 3) and is_integer(np.int64(1), 1, 3) and is_integer(2 ** 64 - 1, 0, 2 ** 64 - 1)
    assert not any(is_integer(v, 1, 3) for v in (0, 4, True, 2.0, "2", None, np.float64(2.0)))


@pytest.mark.parametrize("entries", [[[0.0, 5e-324], [0.0, 0.0]], [[1e-310, 1e-317], [0.0, 1e-310]], [[1e-300, 1e-305], [0.0, 1e-300]]])
def test_subnormal_asymmetry_is_judged_alike_by_numpy_and_torch(entries):
    """Both sides judge max|A − Aᵀ| against √eps·max(max|A|, tiny): torch had no floor, so a matrix
    of subnormal entries that check_symmetric accepts (asymmetry below √eps·tiny = 3.3e-316) it refused."""
    import torch

    import stabkit.torch as st
    from stabkit.errors import InputError

    A = np.array(entries)
    asym = np.abs(A - A.T).max()
    accept = asym <= np.finfo(np.float64).eps ** 0.5 * max(np.abs(A).max(), np.finfo(np.float64).tiny)
    assert accept == (entries[0][0] < 1e-300)  # the two subnormal matrices pass, the normal one does not
    for call in (lambda: check_symmetric(A), lambda: st.check_values(torch.from_numpy(A))):
        if accept:
            call()
        else:
            with pytest.raises(InputError, match="not symmetric"):
                call()


def test_symmetry_is_judged_per_matrix_of_a_batch():
    """max|A − Aᵀ| = 1e-3 against max|A| = 3 is refused alone; beside 1e6·I the batch's max|A| = 1e6 would
    make the tolerance √eps·1e6 ≈ 1.5e-2 and accept it. Each matrix is measured against its own max|A|,
    and the message names the batch index."""
    import torch

    import stabkit.torch as st

    B = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 3.0]])
    B[0, 1] += 1e-3
    big = 1e6 * np.eye(3)
    for batch, index in ((B, ""), (np.stack([big, B]), r" \(batch index \[1\]\)"),
                         (np.stack([np.stack([big, big]), np.stack([big, B])]), r" \(batch index \[1, 1\]\)")):
        with pytest.raises(ValueError, match="matrix" + index + " is not symmetric: max.A - Aᵀ. = 0.001"):
            check_symmetric(batch)
        with pytest.raises(ValueError, match="eigh: input" + index + " is not symmetric: max.A − Aᵀ. = 0.001"):
            st.eigh(torch.from_numpy(batch))
    check_symmetric(np.stack([big, (B + B.T) / 2]))  # a symmetric batch still passes
    st.eigvalsh(torch.from_numpy(np.stack([big, (B + B.T) / 2])))


def test_a_non_finite_entry_in_a_batch_is_located():
    """One NaN or Inf among several matrices: the message named only the count ("1 NaN of 12"), so the
    caller had to search the batch for it; it names the first bad matrix's index, as the non-symmetric
    message does, here and in stabkit.torch. A single matrix's message is unchanged."""
    import torch

    import stabkit.torch as st

    S = np.array([[2.0, 1.0], [1.0, 3.0]])
    for bad, index in ((np.nan, "[1]"), (np.inf, "[1]")):
        batch = np.stack([S, S, S])
        batch[1, 1, 1] = bad
        batch[2, 0, 0] = bad
        with pytest.raises(ValueError, match=r"non-finite entries \(.*\), the first in batch index " + re.escape(index) + "$"):
            check_symmetric(batch)
        with pytest.raises(ValueError, match=r"eigh: input has non-finite entries \(2 \w+ of 12\), the first in batch "
                                             r"index " + re.escape(index) + "$"):
            st.eigh(torch.from_numpy(batch))
    nested = np.stack([np.stack([S, S]), np.stack([S, S])])
    nested[1, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"the first in batch index \[1, 0\]$"):
        check_symmetric(nested)
    with pytest.raises(ValueError, match=r"the first in batch index \[1, 0\]$"):
        st.svdvals(torch.from_numpy(nested))
    with pytest.raises(ValueError, match=r"\(1 NaN, 0 Inf\)$"):  # one matrix: no index
        check_symmetric(nested[1, 0])


@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_a_big_endian_float_matrix_is_accepted_as_its_native_dtype(dtype):
    """A .npy written on a big-endian machine holds >f8: it was refused as "unsupported dtype >f8: use
    float32 or float64", though it is float64. It is read in native byte order, values unchanged."""
    S = np.array([[2.0, 1.0], [1.0, 3.0]], dtype=dtype)
    out = check_symmetric(S)
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.dtype.isnative
    np.testing.assert_array_equal(out, S)
