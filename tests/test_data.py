"""stabkit.data.load_cifar10 on tiny synthetic archives/folders and on the real shared archive."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from stabkit import data


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STABKIT_DATA_CACHE", str(tmp_path / "cache"))


def _jpeg(color):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), color, dtype=np.uint8)).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def _make_archive(path, spec):
    """spec: list of (split, class, name, color); a plain tar when ``path`` ends in .tar."""
    with tarfile.open(path, "w" if str(path).endswith(".tar") else "w:gz") as tar:
        for split, cls, name, color in spec:
            blob = _jpeg(color)
            info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


SPEC = [
    ("train", "truck", "0000.jpg", (200, 10, 10)),
    ("train", "airplane", "0001.jpg", (10, 200, 10)),
    ("train", "airplane", "0000.jpg", (10, 10, 200)),
    ("train", "cat", "0000.jpg", (128, 128, 128)),
    ("test", "frog", "0000.jpg", (50, 60, 70)),
]


def test_archive_labels_order_and_pixels(tmp_path):
    path = _make_archive(tmp_path / "tiny.tar.gz", SPEC)
    images, labels = data.load_cifar10(path, "train", per_class=None)
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 3, 9]  # sorted by class, then file
    # airplane/0000 is blue, airplane/0001 green, truck red (JPEG at q=100 is within a few levels)
    assert np.abs(images[0].mean((0, 1)) - (10, 10, 200)).max() < 4
    assert np.abs(images[1].mean((0, 1)) - (10, 200, 10)).max() < 4
    assert np.abs(images[3].mean((0, 1)) - (200, 10, 10)).max() < 4
    test_images, test_labels = data.load_cifar10(path, "test", per_class=None)
    assert test_images.shape == (1, 32, 32, 3) and test_labels.tolist() == [6]


def test_archive_cache_written_and_keyed_by_mtime(tmp_path):
    path = _make_archive(tmp_path / "tiny.tar.gz", SPEC)
    data.load_cifar10(path, "train", per_class=None)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(p.endswith(".npy") for p in cached)
    # Overwrite the cached images with a sentinel: a second load must come from the cache.
    img_file = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith("-images.npy")][0]
    np.save(img_file, np.full((4, 32, 32, 3), 7, dtype=np.uint8))
    assert data.load_cifar10(path, "train", per_class=None)[0].max() == 7
    # Touching the archive (new mtime) invalidates the cache → decoded afresh.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert data.load_cifar10(path, "train", per_class=None)[0].max() > 100


_NO_PROCESS = """
import os, sys
sys.path.insert(0, {tests!r})
from test_data import _balanced_spec, _make_archive
from stabkit import data
os.register_at_fork(after_in_child=lambda: os._exit(7))  # every forked child dies at birth
images, labels = data.load_cifar10(_make_archive({archive!r}, _balanced_spec(250)), "train", cache=False, per_class=250)
print(images.shape[0], labels.sum())
"""


def test_decoding_starts_no_process(tmp_path):
    """2 500 images decode in a process whose forked children die at birth (as one may when another
    thread holds a lock at the fork) and whose ``__main__`` is stdin (which a spawned child cannot
    re-import). The forked ``multiprocessing.Pool`` that decoded before waited forever here (the CI
    hang of stop 28); a spawned pool's workers died."""
    import subprocess
    import sys

    script = _NO_PROCESS.format(tests=os.path.dirname(__file__), archive=str(tmp_path / "t.tar.gz"))
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2500", str(250 * sum(range(10)))]


def _make_batches(folder, n_per_batch=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        chw = rng.integers(0, 256, size=(n_per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": chw.reshape(n_per_batch, 3072), b"labels": labels}, fh)
        expected[name] = (chw, labels)
    return expected


def test_batches_folder_chw_to_hwc_sorted_by_class(tmp_path):
    expected = _make_batches(tmp_path / "root" / "cifar-10-batches-py")
    chw = np.concatenate([expected[f"data_batch_{i}"][0] for i in range(1, 6)])
    lab = sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # the archive's order: by class, and within a class as in the files (written here as a plain loop)
    order = [i for c in range(10) for i in range(len(lab)) if lab[i] == c]
    for path in (tmp_path / "root", tmp_path / "root" / "cifar-10-batches-py"):
        images, labels = data.load_cifar10(path, "train")
        assert images.shape == (15, 32, 32, 3) and labels.dtype == np.int64
        assert labels.tolist() == [lab[i] for i in order]
        for k, i in enumerate(order):
            np.testing.assert_array_equal(images[k], chw[i].transpose(1, 2, 0))
        test_images, test_labels = data.load_cifar10(path, "test")
        assert test_images.shape == (3, 32, 32, 3)
        t_chw, t_lab = expected["test_batch"]
        j = sorted(range(3), key=lambda i: t_lab[i])[1]  # the second test image in class order (labels distinct or stable)
        assert int(test_images[1, 5, 7, 2]) == int(t_chw[j, 2, 5, 7])


def _rewrite(file, changes):
    with open(file, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    batch.update(changes)
    with open(file, "wb") as fh:
        pickle.dump(batch, fh)


def test_batches_folder_checks_pixels_names_and_counts(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _make_batches(folder, n_per_batch=10)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in data.CLASSES]}, fh)
    assert data.load_cifar10(folder, "test")[0].shape == (10, 32, 32, 3)
    # an explicit per_class is checked (the random labels are not 1 per class)
    with pytest.raises(ValueError, match=r"test split has 10 images, expected 10 \(1 per class;"):
        data.load_cifar10(folder, "test", per_class=1)
    _rewrite(folder / "test_batch", {b"labels": list(range(10))})
    assert data.load_cifar10(folder, "test", per_class=1)[1].tolist() == list(range(10))
    # pixels that are not uint8 are named, not cast (0..1 floats became 0, 700 became 188)
    for bad, name in ((np.full((10, 3072), 0.5), "float64"), (np.full((10, 3072), 700), "int64")):
        _rewrite(folder / "test_batch", {b"data": bad})
        with pytest.raises(ValueError, match=f"test_batch: data must be a uint8 array .*got {name}"):
            data.load_cifar10(folder, "test")
    # label k must mean CLASSES[k]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in reversed(data.CLASSES)]}, fh)
    with pytest.raises(ValueError, match="batches.meta: label_names .* are not CIFAR-10's"):
        data.load_cifar10(folder, "train")


@pytest.mark.parametrize("where", ["crc", "size"])
def test_damaged_gzip_archive_is_refused(tmp_path, where):
    """tarfile stops at the end-of-archive blocks, before gzip's trailer (CRC-32, then size): a
    damaged stream decoded silently to wrong pixels until the loader read it to its end."""
    path = _make_archive(tmp_path / "c.tar.gz", _balanced_spec(1))
    raw = bytearray(path.read_bytes())
    raw[-8 if where == "crc" else -4] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c\.tar\.gz: damaged or not a readable tar archive \(BadGzipFile"):
        data.load_cifar10(path, "train", per_class=1, cache=False)


def test_an_image_that_is_not_a_32x32_jpeg_is_named(tmp_path):
    def archive(name, blob):
        with tarfile.open(tmp_path / name, "w:gz") as tar:
            for i, b in enumerate([_jpeg((1, 2, 3)), blob]):
                info = tarfile.TarInfo(f"cifar10/train/cat/{i:04d}.jpg")
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
        return tmp_path / name

    with pytest.raises(ValueError, match=r"junk\.tar\.gz: image 1 could not be decoded \(UnidentifiedImageError"):
        data.load_cifar10(archive("junk.tar.gz", b"not a jpeg"), "train", per_class=None)
    big = io.BytesIO()
    Image.fromarray(np.zeros((8, 40, 3), dtype=np.uint8)).save(big, format="JPEG")
    with pytest.raises(ValueError, match=r"image 1 has shape \(8, 40, 3\), expected 32×32×3"):
        data.load_cifar10(archive("big.tar.gz", big.getvalue()), "train", per_class=None)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_cifar10(tmp_path / "nope.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        data.load_cifar10(tmp_path / "empty")
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="damaged or not a readable tar"):
        data.load_cifar10(tmp_path / "junk.tar.gz")
    wrong = _make_archive(tmp_path / "wrong.tar.gz", [("train", "unicorn", "0000.jpg", (1, 2, 3))])
    with pytest.raises(ValueError, match="no images found"):
        data.load_cifar10(wrong, "train")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a cifar10"):
        data.load_cifar10(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_cifar10(tmp_path / "x.csv", split="val")
    bad = tmp_path / "bad" / "cifar-10-batches-py"
    _make_batches(bad)
    (bad / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 pickled batch"):
        data.load_cifar10(bad, "test")


def test_real_archive_test_split(monkeypatch):
    """The real archive (../shared/data beside the checkout, in CI too, or $STABKIT_CIFAR10): its test
    split's shape, class counts and per-channel means (CIFAR-10's published 0.4914/0.4822/0.4465)."""
    assert data.default_path().exists(), f"CIFAR-10 archive missing at {data.default_path()}: set STABKIT_CIFAR10"
    monkeypatch.delenv("STABKIT_DATA_CACHE")  # the real decode is worth caching for the user
    images, labels = data.load_cifar10(split="test")
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    mean = images.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, np.array([0.4913, 0.4821, 0.4465]) * 255, rtol=0.01)


# ---------------------------------------------------------------------------- incomplete data, bad caches
def _balanced_spec(per_class, split="train"):
    """per_class images of every class, each a distinct flat colour."""
    return [(split, cls, f"{i:04d}.jpg", (20 * c, 10 * i, 200 - 15 * c))
            for c, cls in enumerate(data.CLASSES) for i in range(per_class)]


def _truncate_at_member_boundary(path, keep_members):
    """Cut a plain tar right after its ``keep_members``-th member (no end-of-archive blocks):
    tarfile then reads the first members without any error."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    end = members[keep_members].offset  # header of the first member dropped
    with open(path, "r+b") as fh:
        fh.truncate(end)
    with tarfile.open(path) as tar:  # the truncated tar really reads silently
        assert len(tar.getmembers()) == keep_members


def test_truncated_plain_tar_is_detected_by_the_counts(tmp_path):
    path = _make_archive(tmp_path / "c.tar", _balanced_spec(3))
    images, labels = data.load_cifar10(path, "train", per_class=3)
    assert images.shape == (30, 32, 32, 3) and np.bincount(labels).tolist() == [3] * 10
    _truncate_at_member_boundary(path, 25)  # 25 of 30 images: 2 classes short (loaded silently before)
    with pytest.raises(ValueError, match=r"has 25 images, expected 30 \(3 per class; ship 1, truck 0\)"):
        data.load_cifar10(path, "train", per_class=3, cache=False)
    with pytest.raises(ValueError, match="expected 50000"):  # the standard count for the real data set
        data.load_cifar10(path, "train", cache=False)


def test_standard_counts_are_cifar10s():
    assert {split: n * len(data.CLASSES) for split, n in data.PER_CLASS.items()} == {"train": 50_000, "test": 10_000}


def _cache_pair(tmp_path):
    files = sorted((tmp_path / "cache").iterdir())
    return [f for f in files if f.name.endswith("-images.npy")][0], [f for f in files if f.name.endswith("-labels.npy")][0]


@pytest.mark.parametrize("damage", [
    lambda img, lab: np.save(lab, np.array(42)),                                   # labels cache holds 42
    lambda img, lab: np.save(lab, np.full(20, 42, dtype=np.int64)),                # 42s of the right length
    lambda img, lab: np.save(lab, np.zeros(20, dtype=np.int64)),                   # valid labels, wrong counts
    lambda img, lab: open(img, "wb").close(),                                      # zero-length images (EOFError before)
    lambda img, lab: open(lab, "wb").write(b"\x93NUMPY garbage"),                  # damaged header
    lambda img, lab: np.save(img, np.zeros((20, 32, 32), dtype=np.uint8)),         # wrong shape
])
def test_bad_cache_is_decoded_again_and_replaced(tmp_path, damage):
    path = _make_archive(tmp_path / "c.tar.gz", _balanced_spec(2))
    first = data.load_cifar10(path, "train", per_class=2)
    img_file, lab_file = _cache_pair(tmp_path)
    damage(img_file, lab_file)
    again = data.load_cifar10(path, "train", per_class=2)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    assert np.bincount(again[1]).tolist() == [2] * 10
    # …and the cache is whole again
    np.testing.assert_array_equal(np.load(lab_file), first[1])
    np.testing.assert_array_equal(np.load(img_file), first[0])


def test_per_class_argument_is_checked(tmp_path):
    path = _make_archive(tmp_path / "c.tar.gz", _balanced_spec(1))
    for bad in (0, -3, 2.5, True, "lots"):
        with pytest.raises(ValueError, match="per_class"):
            data.load_cifar10(path, "train", per_class=bad)


def _plain_tar(per_class=2):
    """A plain tar of every class's members cifar10/train/<class>/NNNN.jpg with fixed bytes (reading
    fails before any decode, so the bytes need not be JPEGs, and the archive is the same everywhere)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for cls in data.CLASSES:
            for i in range(per_class):
                blob = bytes(range(256)) * 4
                info = tarfile.TarInfo(f"cifar10/train/{cls}/{i:04d}.jpg")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_damaged_compressed_stream_is_refused_by_name(tmp_path):
    """A corrupt deflate block in a .tar.gz raised zlib.error, a corrupt .xz stream lzma.LZMAError, out of
    tarfile: neither an OSError nor a TarError, so a bare traceback instead of the loader's error."""
    import lzma
    import zlib

    plain = _plain_tar()
    co = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    head = co.compress(plain[: len(plain) // 2]) + co.flush(zlib.Z_FULL_FLUSH)  # byte-aligned: a block starts next
    tail = co.compress(plain[len(plain) // 2:]) + co.flush()
    gz = tmp_path / "bad-block.tar.gz"
    gz.write_bytes(head + b"\x07" + tail[1:])  # that block's header: final, type 3 (reserved, invalid)
    with pytest.raises(ValueError, match=r"bad-block\.tar\.gz: damaged or not a readable tar archive"):
        data.load_cifar10(gz, "train", per_class=2, cache=False)
    xz = bytearray(lzma.compress(plain))
    xz[-1] ^= 0xFF  # the stream footer's magic: read only after every member (earlier, tarfile wraps it)
    bad_xz = tmp_path / "bad.tar"
    bad_xz.write_bytes(bytes(xz))
    with pytest.raises(ValueError, match=r"bad\.tar: damaged or not a readable tar archive"):
        data.load_cifar10(bad_xz, "train", per_class=2, cache=False)



@pytest.mark.parametrize("frame_length, error", [(2**62, "MemoryError"), (2**64 - 1, "OverflowError")])
def test_pickled_batch_with_a_damaged_frame_length_is_named(tmp_path, frame_length, error):
    """A pickle's FRAME length (bytes 3..10 of protocol 4) damaged to more than memory holds raised
    MemoryError, or OverflowError past sys.maxsize, out of pickle.load: a bare traceback."""
    import struct

    folder = tmp_path / "cifar-10-batches-py"
    _make_batches(folder)
    raw = bytearray(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=4))
    assert raw[:3] == b"\x80\x04\x95"  # protocol 4, then a frame with its 8-byte length
    raw[3:11] = struct.pack("<Q", frame_length)
    (folder / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"test_batch: not a CIFAR-10 pickled batch \({error}"):
        data.load_cifar10(folder, "test")


def test_label_names_that_are_not_text_are_named(tmp_path):
    """batches.meta's label_names as bytes that are not UTF-8 raised UnicodeDecodeError ('utf-8' codec can't
    decode byte 0xff…), naming neither the file nor the field."""
    folder = tmp_path / "cifar-10-batches-py"
    _make_batches(folder)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"\xff" + c.encode() for c in data.CLASSES]}, fh)
    with pytest.raises(ValueError, match="batches.meta: label_names .* are not CIFAR-10's"):
        data.load_cifar10(folder, "test")


def test_an_image_declaring_a_huge_size_is_named(tmp_path):
    """A JPEG whose header declares 65535×65535 pixels (a damaged or hostile member): PIL refuses it at
    open with DecompressionBombError, which is neither an OSError nor a SyntaxError, so it escaped as a
    bare traceback instead of the loader's error naming the image."""
    blob = bytearray(_jpeg((1, 2, 3)))
    sof = blob.index(b"\xff\xc0")  # baseline start of frame: marker, length (2), precision (1), height (2), width (2)
    blob[sof + 5:sof + 9] = b"\xff\xff\xff\xff"
    with tarfile.open(tmp_path / "huge.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar10/train/cat/0000.jpg")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(bytes(blob)))
    with pytest.raises(ValueError, match=r"huge\.tar\.gz: image 0 could not be decoded \(DecompressionBombError"):
        data.load_cifar10(tmp_path / "huge.tar.gz", "train", per_class=None, cache=False)


@pytest.mark.parametrize("as_array", [False, True])
def test_fractional_labels_are_named_not_truncated(tmp_path, as_array):
    """Labels 1.9 and 9.7 in a pickled batch were cast to int64 by truncation (1 and 9), silently
    moving those images to other classes; whole-valued floats are the same labels and still load."""
    folder = tmp_path / "cifar-10-batches-py"
    _make_batches(folder, n_per_batch=10)
    fractional = [0.0, 1.9, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.7]
    _rewrite(folder / "test_batch", {b"labels": np.array(fractional) if as_array else fractional})
    with pytest.raises(ValueError, match=r"test_batch: labels must be whole numbers 0\.\.9, got 1\.9 \(label 1\)"):
        data.load_cifar10(folder, "test")
    whole = [float(c) for c in range(10)]
    _rewrite(folder / "test_batch", {b"labels": np.array(whole) if as_array else whole})
    assert data.load_cifar10(folder, "test")[1].tolist() == list(range(10))


@pytest.mark.parametrize("mode, fmt, fill", [("L", "JPEG", 100), ("CMYK", "JPEG", (0, 255, 255, 0)), ("RGBA", "PNG", (10, 20, 30, 0))])
def test_an_image_that_is_not_rgb_is_named(tmp_path, mode, fmt, fill):
    """A grayscale, CMYK or RGBA member was converted to RGB without a word (gray 100 became (100, 100,
    100), CMYK (0, 255, 255, 0) became red, a fully transparent pixel opaque): CIFAR-10's images are
    8-bit RGB, and another mode means the archive is not the data set it claims to be."""
    odd = io.BytesIO()
    Image.new(mode, (32, 32), fill).save(odd, format=fmt)
    with tarfile.open(tmp_path / "modes.tar.gz", "w:gz") as tar:
        for i, blob in enumerate([_jpeg((1, 2, 3)), odd.getvalue()]):
            info = tarfile.TarInfo(f"cifar10/train/cat/{i:04d}.jpg")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(ValueError, match=rf"modes\.tar\.gz: image 1 is a {mode} image, expected RGB"):
        data.load_cifar10(tmp_path / "modes.tar.gz", "train", per_class=None, cache=False)


@pytest.mark.parametrize("name, split", [("data_batch_3", "train"), ("test_batch", "test"), ("batches.meta", "test")])
def test_a_batch_that_is_a_folder_is_named(tmp_path, name, split):
    """A data_batch_N (or test_batch, batches.meta) that is a folder raised a bare IsADirectoryError out
    of open(): an OSError, where the loader promises a ValueError for a folder that is not CIFAR-10."""
    folder = tmp_path / "cifar-10-batches-py"
    _make_batches(folder)
    if (folder / name).exists():
        (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(ValueError, match=rf"cifar-10-batches-py/{name}: a folder, not a CIFAR-10 pickled batch file"):
        data.load_cifar10(folder, split)
