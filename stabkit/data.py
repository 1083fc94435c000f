"""CIFAR-10 loading: ``load_cifar10(path=None, split="train") -> (images, labels)``.

``images`` is a uint8 array (N, 32, 32, 3) (HWC, RGB), ``labels`` an int64 array (N,) with the
standard class order airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck → 0..9.

Two on-disk forms are accepted:

(a) a JPEG archive ``*.tar.gz`` laid out as ``cifar10/{train,test}/<class>/NNNN.jpg`` — the
    project's shared copy. Reading and decoding its 50 000 training JPEGs takes ~10 s (one core of
    a 2-core x86 machine), so the decoded arrays are cached as ``.npy`` files in
    ``$STABKIT_DATA_CACHE`` (default ``~/.cache/stabkit/cifar10``), keyed by the archive's path,
    size and mtime: a changed archive is decoded afresh.
(b) torchvision's ``cifar-10-batches-py`` folder (pickled ``data_batch_1..5`` / ``test_batch``,
    rows of 3072 uint8 in CHW order) — either that folder or its parent. Its images are stably
    sorted by class, as the archive's are (class, then file name).

Default path: ``$STABKIT_CIFAR10`` or ``<repo>/../shared/data/cifar10-jpeg.tar.gz`` (see ``default_path``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ._io import replace_atomic

try:
    from lzma import LZMAError
except ImportError:  # a Python without lzma: tarfile cannot open .xz either
    LZMAError = OSError

#: what reading a damaged archive raises: tarfile's own errors, and those of the decompressors it
#: does not wrap (a corrupt deflate block is a zlib.error, a corrupt .xz stream an LZMAError)
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, LZMAError)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
#: Per-channel mean / std of the CIFAR-10 training set (RGB, in [0, 1]).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

#: Images per class in each split of CIFAR-10 (so 50 000 train, 10 000 test). A JPEG archive must
#: hold exactly these: a plain ``.tar`` cut at a member boundary reads without any error, and only
#: the count tells.
PER_CLASS = {"train": 5000, "test": 1000}

_REPO = Path(__file__).resolve().parent.parent


def default_path() -> Path:
    """``$STABKIT_CIFAR10``, else ``<repo>/../shared/data/cifar10-jpeg.tar.gz`` (or, where a machine
    places ``shared/`` inside the checkout, ``<repo>/shared/data/…``)."""
    env = os.environ.get("STABKIT_CIFAR10")
    if env:
        return Path(env)
    candidates = [base / "shared" / "data" / "cifar10-jpeg.tar.gz" for base in (_REPO.parent, _REPO)]
    return next((c for c in candidates if c.exists()), candidates[0])


def check_path(key: str, path) -> None:
    """Before a study's cells start: a ValueError naming ``key`` when an explicitly given ``path``
    does not exist ("" or None is the default location, checked when the data is loaded)."""
    if path and not os.path.exists(path):
        raise ValueError(f"{key}: no such file or folder: {path}")


def check_loads(key: str, path, splits: tuple[str, ...] = SPLITS) -> None:
    """Before a study's cells start: the ``splits`` its cells read (a training study both, the gap study
    only "train") of ``path`` ("" or None: the default location) load (:func:`load_cifar10`, so an
    archive is decoded once and its cells read the cache), else a ValueError naming ``key`` and what is
    wrong — a damaged archive is one line and exit 2 before any cell, not the same failure of every cell."""
    for split in splits:
        try:
            load_cifar10(path or None, split)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from None


def cache_dir() -> Path:
    env = os.environ.get("STABKIT_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stabkit" / "cifar10"


def load_cifar10(path=None, split: str = "train", *, cache: bool = True, per_class: int | None | str = "standard"):
    """CIFAR-10 ``split`` ("train": 50 000 images, "test": 10 000) from ``path`` (see module doc).

    Raises FileNotFoundError for a missing path, ValueError for an unknown split or a file or
    folder that is not one of the two accepted forms (the message names what is wrong). A JPEG
    archive must hold ``per_class`` images of every class ("standard": 5 000 train / 1 000 test,
    ``PER_CLASS``; an int for small synthetic archives; None: no count check). A batches folder is
    count-checked only for an int ``per_class``: a pickle cut short does not load at all (a tar cut
    at a member boundary does), and the tests train on small synthetic folders. A cached decode that
    does not pass the same checks (wrong shape, dtype, labels, counts; an empty or damaged file) is
    decoded again and replaced. JPEGs are decoded in this process (:func:`_decode_all` says why).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose 'train' or 'test'")
    path = Path(path) if path is not None else default_path()
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 not found at {path} (set STABKIT_CIFAR10 or pass a path to a cifar10 JPEG .tar.gz or a cifar-10-batches-py folder)")
    expected = PER_CLASS[split] if per_class == "standard" else per_class
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 1):
        raise ValueError(f"per_class must be a positive int, None or 'standard', got {per_class!r}")
    if path.is_dir():
        folder = path if (path / "test_batch").exists() else path / "cifar-10-batches-py"
        if not (folder / "test_batch").exists():
            raise ValueError(f"{path} is a folder but not a cifar-10-batches-py folder (no test_batch file in it or in cifar-10-batches-py/ under it)")
        return _load_batches(folder, split, None if per_class == "standard" else expected)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _load_archive(path, split, cache, expected)
    raise ValueError(f"{path}: expected a cifar10 JPEG .tar.gz archive or a cifar-10-batches-py folder")


# ---------------------------------------------------------------------------- pickled batches
def _load_batches(folder: Path, split: str, per_class: int | None):
    """The pickled batches of ``split``, checked like an archive (uint8 rows of 3072, labels 0..9 named
    as :data:`CLASSES` in ``batches.meta``, ``per_class`` images of each class) and stably sorted by
    class — the archive's order (class, then file name), so that a ``limit_images`` prefix of the
    shuffled set picks the same images from both forms when the archive numbers each class's
    images in the batches' order."""
    _check_label_names(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        file = folder / name
        if not file.exists():
            raise FileNotFoundError(f"{folder}: missing {name}")
        batch = _unpickle(file)
        try:
            data, given = batch[b"data"], np.asarray(batch[b"labels"])
            with np.errstate(invalid="ignore"):  # a NaN label: refused just below, as not whole
                lab = given.astype(np.int64)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{file}: not a CIFAR-10 pickled batch ({type(exc).__name__}: {exc})") from None
        _check_whole(file, given, lab)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise ValueError(f"{file}: data must be a uint8 array (pixels 0..255), got "
                             f"{getattr(data, 'dtype', type(data).__name__)}")
        if data.ndim != 2 or data.shape[1] != 3072 or lab.shape != (len(data),):
            raise ValueError(f"{file}: expected data rows of 3072 bytes and one label each, got data {data.shape}, {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    images, labels = np.concatenate(images), np.concatenate(labels)
    problem = _check_arrays(images, labels, per_class)  # the checks of a decoded cache, once for all files
    if problem:
        raise ValueError(f"{folder}: {split} split {problem} — the folder is incomplete or not CIFAR-10")
    order = np.argsort(labels, kind="stable")
    return np.ascontiguousarray(images[order]), labels[order]


def _check_whole(file: Path, given: np.ndarray, labels: np.ndarray) -> None:
    """A ValueError naming the first label that its int64 cast ``labels`` changed: a fractional one
    (the cast truncates: 1.9 became class 1) or NaN. Whole-valued floats are the same labels and pass."""
    if given.dtype.kind not in "fO":  # integers (or text, which the cast parses or refuses)
        return
    changed = np.flatnonzero(labels != given)
    if changed.size:
        i = int(changed[0])
        raise ValueError(f"{file}: labels must be whole numbers 0..9, got {given[i]} (label {i})")


def _unpickle(file: Path) -> dict:
    if file.is_dir():  # open() would raise IsADirectoryError, an OSError, not the loader's ValueError
        raise ValueError(f"{file}: a folder, not a CIFAR-10 pickled batch file")
    with open(file, "rb") as fh:
        try:
            batch = pickle.load(fh, encoding="bytes")
        except Exception as exc:  # noqa: BLE001 — a damaged pickle raises whatever its opcodes reach: a frame length
            # past memory MemoryError, past sys.maxsize OverflowError, a damaged numpy dtype SystemError, …
            raise ValueError(f"{file}: not a CIFAR-10 pickled batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{file}: not a CIFAR-10 pickled batch (a {type(batch).__name__}, not a dict)")
    return batch


def _check_label_names(folder: Path) -> None:
    """Label k must mean CLASSES[k]: ``batches.meta``'s ``label_names``, where that file exists."""
    meta = folder / "batches.meta"
    if not meta.exists():
        return
    names = _unpickle(meta).get(b"label_names")
    decoded = tuple(n.decode(errors="replace") if isinstance(n, bytes) else n for n in names) if isinstance(names, (list, tuple)) else names
    if decoded != CLASSES:
        raise ValueError(f"{meta}: label_names {decoded!r} are not CIFAR-10's {CLASSES!r} in that order")


# ---------------------------------------------------------------------------- JPEG archive
def _cache_files(path: Path, split: str):
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    base = cache_dir() / f"{path.name.split('.')[0]}-{st.st_size}-{key}-{split}"
    return Path(f"{base}-images.npy"), Path(f"{base}-labels.npy")


def _load_archive(path: Path, split: str, cache: bool, per_class: int | None):
    img_file, lab_file = _cache_files(path, split)
    if cache and img_file.exists() and lab_file.exists():
        try:
            images, labels = np.load(img_file, allow_pickle=False), np.load(lab_file, allow_pickle=False)
            if _check_arrays(images, labels, per_class) is None:
                return images, labels
        except (OSError, ValueError, EOFError):
            pass  # an empty or damaged cache file: decode again
    blobs, labels = _read_members(path, split)
    problem = _check_counts(labels, per_class)
    if problem:
        raise ValueError(f"{path}: {split} split {problem} — the archive is incomplete (truncated?) or not CIFAR-10")
    images = _decode_all(blobs, path)
    if cache:
        _save_atomic(img_file, images)
        _save_atomic(lab_file, labels)
    return images, labels


def _check_arrays(images, labels, per_class: int | None) -> str | None:
    """What is wrong with decoded (images, labels), or None: uint8 (N, 32, 32, 3), int64 (N,) in 0..9."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        return f"images {images.dtype} {images.shape}, expected uint8 (N, 32, 32, 3)"
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        return f"labels {labels.dtype} {labels.shape}, expected int64 ({len(images)},)"
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        return "labels outside 0..9"
    return _check_counts(labels, per_class)


def _check_counts(labels, per_class: int | None) -> str | None:
    """None when every class has ``per_class`` images (or per_class is None), else what differs."""
    if per_class is None:
        return None
    counts = np.bincount(labels, minlength=len(CLASSES))
    if len(counts) == len(CLASSES) and (counts == per_class).all():
        return None
    short = ", ".join(f"{CLASSES[i]} {n}" for i, n in enumerate(counts[:len(CLASSES)]) if n != per_class)
    return f"has {int(counts.sum())} images, expected {per_class * len(CLASSES)} ({per_class} per class; {short})"


def _read_members(path: Path, split: str):
    entries = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3 or parts[-3] != split or parts[-2] not in CLASSES:
                    continue
                if not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                    continue
                entries.append((CLASSES.index(parts[-2]), parts[-1], tar.extractfile(member).read()))
            # tarfile stops at the end-of-archive blocks: read the compressed stream to its end, so that
            # gzip/bz2/xz check their CRC (a damaged archive otherwise decodes to wrong pixels silently)
            while tar.fileobj.read(1 << 20):
                pass
    except _ARCHIVE_ERRORS as exc:
        raise ValueError(f"{path}: damaged or not a readable tar archive ({type(exc).__name__}: {exc})") from None
    if not entries:
        raise ValueError(f"{path}: no images found for split {split!r} (expected members cifar10/{split}/<class>/NNNN.jpg with class in {', '.join(CLASSES)})")
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries], np.array([e[0] for e in entries], dtype=np.int64)


def _decode_all(blobs, path):
    """Decode JPEG ``blobs`` to (N, 32, 32, 3) uint8, in this process. A worker pool halved the decode
    on 2 cores (6.2 → 3.7 s for the training split; the result is cached) but cost more than it
    saved: forked workers of a process with threads hung CI (a worker died, ``Pool.map`` waited
    forever), and spawned ones re-run the caller's ``__main__`` (an unguarded script, ``python -``:
    the workers die)."""
    from PIL import Image

    out = np.empty((len(blobs), 32, 32, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                mode = im.mode
                arr = np.asarray(im) if mode == "RGB" else None
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError (an OSError): junk;
            # DecompressionBombError: a header declaring more than PIL's pixel limit
            raise ValueError(f"{path}: image {i} could not be decoded ({type(exc).__name__}: {exc})") from None
        if arr is None:  # converting would invent colours (gray, CMYK) or drop a channel (alpha)
            raise ValueError(f"{path}: image {i} is a {mode} image, expected RGB (CIFAR-10's images are 8-bit RGB)")
        if arr.shape != (32, 32, 3):
            raise ValueError(f"{path}: image {i} has shape {arr.shape}, expected 32×32×3")
        out[i] = arr
    return out


def _save_atomic(file: Path, array: np.ndarray):
    """Cache ``array`` in ``file`` (:func:`stabkit._io.replace_atomic`; a cache need not survive a crash)."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        replace_atomic(file, write, durable=False)
    except OSError:
        pass  # an unwritable cache only costs time
