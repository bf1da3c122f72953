"""bncheck.training.data: IDX round trips, every malformed-file case, and the seeded batch
iterator."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from bncheck.errors import InvalidArgument, InvalidArgumentType, UsageError
from bncheck.training.data import (
    IDX_FILES,
    DataError,
    Dataset,
    batches,
    load_fashion_mnist,
    read_idx,
    synthetic_dataset,
    write_idx,
)

TRAIN_IMAGES, TRAIN_LABELS = IDX_FILES["train"]
TEST_IMAGES, TEST_LABELS = IDX_FILES["test"]


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_split(root: Path, split: str, n: int, *, gz: bool = False, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    suffix = ".gz" if gz else ""
    write_idx(root / f"{IDX_FILES[split][0]}{suffix}", images)
    write_idx(root / f"{IDX_FILES[split][1]}{suffix}", labels)
    return Dataset(images.unsqueeze(1).float() / 255, labels.long())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_split(tmp_path, "train", 12)
    write_split(tmp_path, "test", 5, seed=1)
    return tmp_path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i2", "i4", "f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_write_read_idx_round_trip(tmp_path: Path, dtype: str, gz: bool) -> None:
    a = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    b = read_idx(path)
    assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("=")
    np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_write_idx_is_big_endian_with_the_standard_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.array([1, 2, 3], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == idx_bytes(0x08, (3,), b"\1\2\3")


@pytest.mark.parametrize("gz", [False, True])
def test_load_round_trip(tmp_path: Path, gz: bool) -> None:
    want = write_split(tmp_path, "train", 7, gz=gz)
    write_split(tmp_path, "test", 3, gz=gz, seed=1)
    got = load_fashion_mnist(tmp_path, split="train")
    assert got.images.shape == (7, 1, 28, 28) and got.images.dtype == torch.float32
    assert got.labels.shape == (7,) and got.labels.dtype == torch.int64
    torch.testing.assert_close(got.images, want.images, rtol=0, atol=0)
    assert torch.equal(got.labels, want.labels)
    assert got.images.min() >= 0.0 and got.images.max() <= 1.0
    assert len(load_fashion_mnist(str(tmp_path), split="test")) == 3


def test_uncompressed_file_wins_over_gz(root: Path) -> None:
    write_idx(root / f"{TRAIN_LABELS}.gz", np.full(12, 9, dtype=np.uint8))
    assert not torch.equal(load_fashion_mnist(root).labels, torch.full((12,), 9))


def test_head(root: Path) -> None:
    data = load_fashion_mnist(root)
    assert len(data.head(4)) == 4 and len(data.head(100)) == 12
    with pytest.raises(InvalidArgument, match="n=0"):
        data.head(0)


# --------------------------------------------------------------------------- malformed files

U8 = 0x08
GOOD_IMAGES = idx_bytes(U8, (3, 28, 28), bytes(3 * 784))
GOOD_LABELS = idx_bytes(U8, (3,), b"\0\1\2")

# (case, file replaced, its new bytes (None: deleted), expected message fragments)
MALFORMED = [
    ("missing images", TRAIN_IMAGES, None,
     [f"missing {TRAIN_IMAGES} (or {TRAIN_IMAGES}.gz)", "the directory holds", TRAIN_LABELS]),
    ("missing test labels", TEST_LABELS, None, [f"missing {TEST_LABELS}"]),
    ("empty file", TRAIN_IMAGES, b"", ["truncated header", "expected 4 bytes, received 0"]),
    ("bad magic", TRAIN_IMAGES, b"\x12\x34\x08\x03" + GOOD_IMAGES[4:],
     ["not an IDX file", "received 0x12340803"]),
    ("unknown type code", TRAIN_IMAGES, b"\0\0\x07\x03" + GOOD_IMAGES[4:],
     ["not an IDX file", "received 0x00000703"]),
    ("zero dims", TRAIN_LABELS, b"\0\0\x08\0", ["not an IDX file", "0x00000800"]),
    ("labels file as images", TRAIN_IMAGES, GOOD_LABELS,
     ["expected images with 3 dims (IDX magic 0x00000803)", "received magic 0x00000801",
      "1 dim (a labels file's)"]),
    # Issue 11: this was reported as "trailing bytes" (the header's one dim read as the count).
    ("images with the labels magic", TRAIN_IMAGES, b"\0\0\x08\x01" + GOOD_IMAGES[4:],
     ["expected images with 3 dims", "received magic 0x00000801", "a labels file's"]),
    ("images file as labels", TRAIN_LABELS, GOOD_IMAGES,
     ["expected labels with 1 dim", "magic 0x00000803", "3 dims (an images file's)"]),
    ("images of int32", TRAIN_IMAGES, idx_bytes(0x0C, (3, 28, 28), bytes(4 * 3 * 784)),
     ["expected images of unsigned bytes", "received int32", "0x00000c03"]),
    ("wrong image size", TRAIN_IMAGES, idx_bytes(U8, (3, 32, 32), bytes(3 * 1024)),
     ["expected images of shape (N, 28, 28), received shape (3, 32, 32)"]),
    ("labels 2-dim", TRAIN_LABELS, idx_bytes(U8, (3, 1), b"\0\1\2"),
     ["expected labels with 1 dim", "received magic 0x00000802, which says 2 dims;"]),
    ("truncated dims", TRAIN_IMAGES, GOOD_IMAGES[:10],
     ["truncated dimension sizes", "expected 12 bytes, received 6"]),
    ("truncated data", TRAIN_IMAGES, GOOD_IMAGES[:-1],
     ["truncated data", "(3, 28, 28)", "expected 2352 bytes, received 2351"]),
    ("huge header, little data", TRAIN_IMAGES, idx_bytes(U8, (2**31, 28, 28), bytes(100)),
     ["truncated data", "received 100"]),
    ("trailing bytes", TRAIN_LABELS, GOOD_LABELS + b"\0", ["trailing bytes", "holds more"]),
    ("count mismatch", TRAIN_LABELS, idx_bytes(U8, (2,), b"\0\1"),
     ["holds 3 images but", "holds 2 labels"]),
    ("label out of range", TRAIN_LABELS, idx_bytes(U8, (3,), b"\0\x0a\xff"),
     ["expected labels in 0..9", "received 2 outside", "label 10 at index 1"]),
    ("corrupt gzip", f"{TRAIN_IMAGES}.gz", b"\x1f\x8b\x08\0garbage-not-deflate",
     ["not a readable gzip file"]),
    ("truncated gzip", f"{TRAIN_IMAGES}.gz", gzip.compress(GOOD_IMAGES)[:-12],
     ["not a readable gzip file"]),
]


@pytest.mark.parametrize(("case", "name", "content", "fragments"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_data_is_rejected(tmp_path: Path, case: str, name: str,
                                    content: bytes | None, fragments: list[str]) -> None:
    (tmp_path / TRAIN_IMAGES).write_bytes(GOOD_IMAGES)
    (tmp_path / TRAIN_LABELS).write_bytes(GOOD_LABELS)
    (tmp_path / TEST_IMAGES).write_bytes(GOOD_IMAGES)
    (tmp_path / TEST_LABELS).write_bytes(GOOD_LABELS)
    if name.endswith(".gz"):
        (tmp_path / name.removesuffix(".gz")).unlink()
    if content is None:
        (tmp_path / name).unlink()
    else:
        (tmp_path / name).write_bytes(content)
    split: Literal["train", "test"] = "test" if name.startswith("t10k") else "train"
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path, split=split)
    message = str(info.value)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert "\n" not in message
    if content is not None:
        assert name in message  # the message names the offending file
    for fragment in fragments:
        assert fragment in message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope does not exist"):
        load_fashion_mnist(tmp_path / "nope")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(DataError, match="a file, not a directory"):
        load_fashion_mnist(tmp_path / "f")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_split(tmp_path, "train", 2, gz=True)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gzip, "open", denied)  # as chmod 0 would, even when running as root
    with pytest.raises(DataError, match=r"idx3-ubyte\.gz: cannot be opened \(Permission denied"):
        load_fashion_mnist(tmp_path)


def test_missing_file_points_at_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_split(raw, "train", 2, gz=True)
    with pytest.raises(DataError, match=r"the file is in .*FashionMNIST/raw, pass that"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize(("call", "error", "fragment"), [
    (lambda p: load_fashion_mnist(p, split="val"),  # type: ignore[arg-type]
     InvalidArgument, "split='val'"),
    (lambda p: load_fashion_mnist(3),  # type: ignore[arg-type]
     InvalidArgumentType, "root=3"),
    (lambda p: write_idx(p / "x", np.zeros(3, dtype=np.int64)), InvalidArgument, "int64"),
    (lambda p: write_idx(p / "x", np.zeros((), dtype=np.uint8)), InvalidArgument, "1 to 255 dims"),
    (lambda p: write_idx(p / "x", [1, 2]),  # type: ignore[arg-type]
     InvalidArgumentType, "array"),
    (lambda p: read_idx(p / "absent"), DataError, "no such file"),
    (lambda p: write_idx(p / "no" / "x", np.zeros(3, dtype=np.uint8)), InvalidArgument,
     "does not exist"),
    (lambda p: synthetic_dataset(0), InvalidArgument, "num_samples=0"),
])
def test_invalid_arguments(tmp_path: Path, call, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call(tmp_path)


# --------------------------------------------------------------------------- batches


def test_batches_in_order_cover_everything() -> None:
    data = synthetic_dataset(10)
    got = list(batches(data, batch_size=4))
    assert [len(y) for _, y in got] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in got]), data.labels)
    assert [len(y) for _, y in batches(data, batch_size=4, drop_last=True)] == [4, 4]


def test_batches_shuffle_is_seeded_and_leaves_global_rng_alone() -> None:
    data = Dataset(torch.zeros(50, 1, 28, 28), torch.arange(50))
    state = torch.get_rng_state()
    a = torch.cat([y for _, y in batches(data, batch_size=8, shuffle=True, seed=3)])
    b = torch.cat([y for _, y in batches(data, batch_size=8, shuffle=True, seed=3)])
    c = torch.cat([y for _, y in batches(data, batch_size=8, shuffle=True, seed=4)])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, torch.arange(50))  # a permutation


def test_batches_generator_gives_a_new_order_each_pass() -> None:
    data = Dataset(torch.zeros(50, 1, 28, 28), torch.arange(50))
    g = torch.Generator().manual_seed(0)
    first = torch.cat([y for _, y in batches(data, batch_size=50, shuffle=True, generator=g)])
    second = torch.cat([y for _, y in batches(data, batch_size=50, shuffle=True, generator=g)])
    assert not torch.equal(first, second)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": 2, "seed": 1, "generator": torch.Generator()}, "both seed=1 and generator"),
    ({"batch_size": 2, "seed": 1.5}, "seed"),
])
def test_batches_invalid_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        next(batches(synthetic_dataset(4), **kwargs))


@pytest.mark.parametrize(("images", "labels", "error", "fragment"), [
    (torch.zeros(2, 1, 28, 28), torch.zeros(2), InvalidArgument, "labels to be an int64"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, dtype=torch.int64), InvalidArgument,
     "shape=(2, 1)"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
     InvalidArgument, "images to be a floating"),
    (torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.int64), InvalidArgument, "(N, C, H, W)"),
    (torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.int64), InvalidArgument,
     "3 images and 2 labels"),
    (np.zeros((2, 1, 28, 28)), torch.zeros(2, dtype=torch.int64), InvalidArgumentType, "images"),
])
def test_dataset_is_checked_on_creation(images, labels, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        Dataset(images, labels)
    assert fragment in str(info.value)


def test_synthetic_dataset_is_deterministic_and_well_formed() -> None:
    a, b = synthetic_dataset(20, seed=5), synthetic_dataset(20, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (20, 1, 28, 28) and a.labels.dtype == torch.int64
    assert a.images.min() >= 0.0 and a.images.max() <= 1.0
