"""Fashion-MNIST from the four standard IDX files, validated strictly, and a seeded batch iterator.

>>> import tempfile, torch
>>> from bncheck.training.data import Dataset, batches, load_fashion_mnist, write_idx, IDX_FILES
>>> root = tempfile.mkdtemp()
>>> for split, n in (("train", 8), ("test", 4)):
...     write_idx(f"{root}/{IDX_FILES[split][0]}", torch.zeros(n, 28, 28, dtype=torch.uint8))
...     write_idx(f"{root}/{IDX_FILES[split][1]}", torch.arange(n, dtype=torch.uint8) % 10)
>>> train = load_fashion_mnist(root, split="train")
>>> train.images.shape, train.images.dtype, train.labels.dtype
(torch.Size([8, 1, 28, 28]), torch.float32, torch.int64)
>>> [tuple(x.shape) for x, y in batches(train, batch_size=3, shuffle=True, seed=0)]
[(3, 1, 28, 28), (3, 1, 28, 28), (2, 1, 28, 28)]

The files are read as downloaded (``train-images-idx3-ubyte`` ...), each optionally gzipped
(``.gz``). Every check failure raises :class:`DataError` naming the file, what was expected and
what was received; nothing is truncated, padded or guessed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch import Tensor

from bncheck.errors import DataError, InvalidArgument
from bncheck.infra.io import write_atomic
from bncheck.infra.validation import check_positive_int, check_type, describe

__all__ = [
    "DataError",
    "Dataset",
    "IDX_FILES",
    "NUM_CLASSES",
    "batches",
    "load_fashion_mnist",
    "read_idx",
    "synthetic_dataset",
    "write_fashion_mnist",
    "write_idx",
]

#: File names (images, labels) of each split, as distributed; each may also end in ``.gz``.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Fashion-MNIST's classes (T-shirt/top ... ankle boot) are labelled 0..9.
NUM_CLASSES = 10

_IMAGE_SIZE = (28, 28)

# IDX type codes (third magic byte) and their big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_TYPE_CODES = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
# What a Fashion-MNIST file with this many dims is.
_KIND = {1: " (a labels file's)", 3: " (an images file's)"}
_CHUNK = 1 << 24


@dataclass(frozen=True)
class Dataset:
    """Images ``(N, C, H, W)`` of a floating dtype and labels ``(N,)`` int64, checked on creation.

    The loader gives ``(N, 1, 28, 28)`` float32 in [0, 1]. ``len(dataset)`` is ``N``.

    Raises:
        InvalidArgumentType: ``images`` or ``labels`` is not a tensor.
        InvalidArgument: wrong dtype or dims, or different counts.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        check_type(Tensor, self.images, "images")
        check_type(Tensor, self.labels, "labels")
        if not self.images.is_floating_point() or self.images.dim() != 4:
            raise InvalidArgument(f"Expected images to be a floating (N, C, H, W) tensor, "
                                  f"received images={describe(self.images)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise InvalidArgument(f"Expected labels to be an int64 (N,) tensor, "
                                  f"received labels={describe(self.labels)}")
        if len(self.images) != len(self.labels):
            raise InvalidArgument(f"Expected as many images as labels, received "
                                  f"{len(self.images)} images and {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them if there are fewer)."""
        check_positive_int(n, "n")
        return Dataset(self.images[:n], self.labels[:n])


# --------------------------------------------------------------------------- IDX files


def _open(path: Path) -> IO[bytes]:
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot be opened ({e.strerror or e})") from None


def _read_exact(f: IO[bytes], n: int, path: Path, what: str) -> bytes:
    """Read exactly ``n`` bytes, in chunks, so a corrupt header cannot demand a huge buffer."""
    chunks, got = [], 0
    try:
        while got < n:
            chunk = f.read(min(n - got, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except _GZIP_ERRORS as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if got != n:
        raise DataError(f"{path}: truncated {what}: expected {n} bytes, received {got}")
    return b"".join(chunks)


def read_idx(path: str | os.PathLike[str], *, what: str | None = None,
             ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a native-endian numpy array.

    ``ndim``: the number of dims the caller expects (3 for images, 1 for labels); a header
    with another count is reported at once, naming what the magic number says the file holds
    (``what`` names what was expected, e.g. ``"images"``).

    Raises:
        DataError: the file is missing, unreadable, has a bad magic number (or one with the
            wrong number of dims), is truncated, or has bytes after the data.
    """
    path = Path(path)
    expected = ndim
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with _open(path) as f:
        magic = _read_exact(f, 4, path, "header")
        zero, code, ndim = magic[:2], magic[2], magic[3]
        if zero != b"\0\0" or code not in _IDX_DTYPES or ndim == 0:
            raise DataError(
                f"{path}: not an IDX file: expected a magic number 0x0000TTDD (TT a type code in "
                f"{_TYPE_CODES}, DD >= 1 dims), received 0x{magic.hex()}"
            )
        if expected is not None and ndim != expected:
            raise DataError(
                f"{path}: expected {what or 'data'} with {expected} dims (IDX magic "
                f"0x0000{code:02x}{expected:02x}), received magic 0x{magic.hex()}, which says "
                f"{ndim} dim{'' if ndim == 1 else 's'}{_KIND.get(ndim, '')}; is this the right "
                f"file?")
        dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "dimension sizes"))
        dtype = _IDX_DTYPES[code]
        nbytes = math.prod(dims) * dtype.itemsize
        if math.prod(d for d in dims if d) * dtype.itemsize >= 2**62:  # numpy's limit
            raise DataError(f"{path}: the header's shape {dims} is not a possible array (more "
                            f"than 2**62 bytes); is this an IDX file?")
        body = _read_exact(f, nbytes, path, f"data (header says shape {dims})")
        try:
            extra = f.read(1)
        except _GZIP_ERRORS as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
        if extra:
            raise DataError(
                f"{path}: trailing bytes: expected {nbytes} data bytes for the header's shape "
                f"{dims}, but the file holds more"
            )
    return np.frombuffer(body, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(dims)


def write_idx(path: str | os.PathLike[str], array: np.ndarray | Tensor) -> None:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX type codes).
    The file is written to a temporary name and moved into place, so readers never see half.

    Raises:
        InvalidArgumentType: ``array`` is not an array or tensor.
        InvalidArgument: its dtype has no IDX type code, or it has no dims.
    """
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    check_type(np.ndarray, array, "array")
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise InvalidArgument(
            f"Expected array with an IDX dtype (uint8, int8, int16, int32, float32, float64), "
            f"received array={describe(array)}"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise InvalidArgument(
            f"Expected array with 1 to 255 dims, received array={describe(array)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidArgument(f"Expected path's directory to exist, received path={str(path)!r} "
                              f"({path.parent} does not exist)")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    write_atomic({path: payload})


def write_fashion_mnist(root: str | os.PathLike[str], train: Dataset, test: Dataset, *,
                        gz: bool = False) -> Path:
    """Write ``train`` and ``test`` (images in [0, 1]) as the four Fashion-MNIST IDX files.

    Images are rounded to bytes. ``root`` must exist. Returns it as a ``Path``.

    Raises:
        InvalidArgument: an image is not ``(1, 28, 28)`` or a label is outside 0..9.
    """
    root = Path(root)
    for split, data in (("train", train), ("test", test)):
        check_type(Dataset, data, split)
        if data.images.shape[1:] != (1, *_IMAGE_SIZE) or data.labels.min() < 0 or \
                data.labels.max() >= NUM_CLASSES:
            raise InvalidArgument(f"Expected {split} images of shape (N, 1, 28, 28) and labels "
                                  f"in 0..9, received images={describe(data.images)}")
        images, labels = IDX_FILES[split]
        suffix = ".gz" if gz else ""
        pixels = (data.images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
        write_idx(root / f"{images}{suffix}", pixels)
        write_idx(root / f"{labels}{suffix}", data.labels.to(torch.uint8))
    return root


# --------------------------------------------------------------------------- Fashion-MNIST


def _find(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz`` (the uncompressed file wins if both are there)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in root.iterdir())
    shown = ", ".join(present[:10])
    if len(present) > 10:
        shown += f", ... ({len(present)} in all)"
    hint = ""
    for sub in ("FashionMNIST/raw", "fashion-mnist", "raw"):
        if (root / sub / name).is_file() or (root / sub / f"{name}.gz").is_file():
            hint = f"; the file is in {root / sub}, pass that directory instead"
            break
    raise DataError(
        f"{root}: missing {name} (or {name}.gz); the directory holds {shown or 'nothing'}{hint}"
    )


def load_fashion_mnist(root: str | os.PathLike[str], *,
                       split: Literal["train", "test"] = "train") -> Dataset:
    """Load one split of Fashion-MNIST from the directory ``root`` holding the IDX files.

    Returns images as float32 in [0, 1] of shape ``(N, 1, 28, 28)`` and labels as int64 in 0..9.

    Raises:
        DataError: ``root`` is not a directory, a file is missing (the message lists what is
            there) or malformed: wrong magic number, dtype or dims, truncated, trailing bytes,
            image/label counts that differ, or a label outside 0..9.
        InvalidArgument: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in IDX_FILES:
        raise InvalidArgument(f"Expected split to be 'train' or 'test', received split={split!r}")
    check_type((str, os.PathLike), root, "root")
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise DataError(f"Expected the data directory to hold the Fashion-MNIST IDX files, "
                        f"but {root} {what}")
    image_path, label_path = (_find(root, name) for name in IDX_FILES[split])

    images = read_idx(image_path, what="images", ndim=3)
    _check_array(images, image_path, "images", (None, *_IMAGE_SIZE), "(N, 28, 28)")
    labels = read_idx(label_path, what="labels", ndim=1)
    _check_array(labels, label_path, "labels", (None,), "(N,)")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            f"labels; expected the same count"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{label_path}: expected labels in 0..{NUM_CLASSES - 1}, received {bad.size} outside "
            f"that range (first: label {int(labels[bad[0]])} at index {int(bad[0])})"
        )
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    return Dataset(x, torch.from_numpy(labels).to(torch.int64))


def _check_array(a: np.ndarray, path: Path, what: str, shape: tuple[int | None, ...],
                 shape_text: str) -> None:
    magic = f"0x000008{len(shape):02x}"
    if a.dtype != np.uint8 or a.ndim != len(shape):
        raise DataError(
            f"{path}: expected {what} of unsigned bytes with shape {shape_text} (IDX magic "
            f"{magic}), received {a.dtype} with shape {a.shape} "
            f"(magic 0x0000{_IDX_CODES[a.dtype]:02x}{a.ndim:02x})"
        )
    if any(w is not None and w != d for w, d in zip(shape, a.shape, strict=True)):
        raise DataError(f"{path}: expected {what} of shape {shape_text}, received shape {a.shape}")


# --------------------------------------------------------------------------- batching


def batches(data: Dataset, *, batch_size: int, shuffle: bool = False, seed: int | None = None,
            generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches of ``data`` in order, or shuffled reproducibly.

    Args:
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: visit the samples in a random order drawn from ``generator`` or ``seed``.
        seed: seeds a fresh generator for this pass (``None`` with no generator: 0).
        generator: a ``torch.Generator`` to draw the order from (advances it; pass one
            generator across epochs to get a new order each epoch). Not with ``seed``.
        drop_last: drop a final batch smaller than ``batch_size``.

    The global RNG is never used.
    """
    check_type(Dataset, data, "data")
    check_positive_int(batch_size, "batch_size")
    if seed is not None and generator is not None:
        raise InvalidArgument(f"Cannot give both seed={seed!r} and generator; pass one")
    if seed is not None:
        check_type(int, seed, "seed")
    if generator is not None:
        check_type(torch.Generator, generator, "generator")
    n = len(data)
    if shuffle:
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        order: Tensor | None = torch.randperm(n, generator=generator)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield data.images[start:start + batch_size], data.labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield data.images[idx], data.labels[idx]


def synthetic_dataset(num_samples: int, *, seed: int = 0, noise: float = 0.3) -> Dataset:
    """A learnable stand-in with Fashion-MNIST's shapes and dtypes (not Fashion-MNIST).

    Class ``k`` is a bright 8x8 square at one of ten fixed places plus uniform noise of
    amplitude ``noise``, clipped to [0, 1]. For tests and timing, never for accuracy claims.
    """
    check_positive_int(num_samples, "num_samples")
    check_type(int, seed, "seed")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=g)
    images = torch.rand(num_samples, 1, 28, 28, generator=g) * noise
    for k in range(NUM_CLASSES):
        r, c = 2 + 9 * (k // 4), 2 + 6 * (k % 4)
        images[labels == k, :, r:r + 8, c:c + 8] += 1.0 - noise
    return Dataset(images.clamp_(0.0, 1.0), labels)
