"""Fuzz the IDX loader (bncheck.training.data.read_idx and load_fashion_mnist) with mutated files.

The input's first byte picks how the rest is used: a raw IDX file or a gzip-compressed one,
read as images (3 dims expected), labels (1 dim), or anything; or as the training images of a
Fashion-MNIST folder whose other three files are valid. Seeds (fuzz/corpus/idx/): valid image
and label files, a float64 file, a gzip file.

A crash is: an exception other than ``DataError`` (bncheck's documented error for a bad data
file); an array whose shape is not the header's; a hang (libFuzzer's -timeout); memory beyond
libFuzzer's -rss_limit_mb (a header that claims gigabytes must not be allocated).

    python fuzz/fuzz_idx.py --seconds 300
"""

from __future__ import annotations

import gzip
import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["bncheck"]):
    import numpy as np

    from bncheck.training.data import IDX_FILES, DataError, load_fashion_mnist, read_idx

WORK = Path(tempfile.mkdtemp(prefix="bncheck-fuzz-idx-"))
FOLDER = WORK / "fashion"


def _idx(body: bytes, dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


def _valid_folder() -> None:
    FOLDER.mkdir()
    for split in ("train", "test"):
        images, labels = IDX_FILES[split]
        (FOLDER / images).write_bytes(_idx(bytes(2 * 28 * 28), (2, 28, 28)))
        (FOLDER / labels).write_bytes(_idx(bytes([1, 2]), (2,)))


_valid_folder()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode % 4 == 3:  # as a folder's training images
        name = IDX_FILES["train"][0]
        for stale in FOLDER.glob(f"{name}*"):
            stale.unlink()
        path = FOLDER / (name + (".gz" if mode & 8 else ""))
        path.write_bytes(gzip.compress(body) if mode & 8 else body)
        try:
            ds = load_fashion_mnist(FOLDER, split="train")
        except DataError:
            return
        assert ds.images.shape[1:] == (1, 28, 28) and len(ds.images) == len(ds.labels)
        return
    path = WORK / ("f.gz" if mode & 8 else "f")
    if mode & 16:  # a gzip stream, maybe cut or corrupted by the mutation
        path.write_bytes(gzip.compress(body)[: max(1, len(body))] if mode & 32 else body)
    else:
        path.write_bytes(gzip.compress(body) if mode & 8 else body)
    expect = {0: None, 1: 3, 2: 1}[mode % 4]
    what = {0: None, 1: "images", 2: "labels"}[mode % 4]
    try:
        array = read_idx(path, what=what, ndim=expect)
    except DataError:
        return
    assert isinstance(array, np.ndarray)
    header = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = struct.unpack(f">{header[3]}I", header[4:4 + 4 * header[3]])
    assert array.shape == dims, (array.shape, dims)
    assert expect is None or array.ndim == expect


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _runner import main

    main("idx", test_one_input, timeout=30)
