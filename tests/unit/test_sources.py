"""Where `bncheck train` finds its data: --data, $BNCHECK_DATA, the cache, torchvision's
layout, else the labelled stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bncheck.training import STAND_IN_LABEL, find_data, stand_in_datasets, user_cache_dir
from bncheck.training.data import DataError, synthetic_dataset, write_fashion_mnist

SMALL = synthetic_dataset(8)


def fmnist(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_fashion_mnist(root, SMALL, SMALL.head(4))


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A fresh machine: an empty home, no $BNCHECK_DATA, no XDG_CACHE_HOME."""
    return {"HOME": str(tmp_path / "home")}


def test_search_order(tmp_path: Path, home: dict[str, str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # 4. torchvision/d2l's ../data/FashionMNIST/raw
    fmnist(tmp_path / "data" / "FashionMNIST" / "raw")
    found = find_data(environ=home, cwd=work)
    assert found.where == str(tmp_path / "data" / "FashionMNIST" / "raw") and not found.stand_in
    # 3. the user cache (torchvision's layout inside it counts too)
    cache = user_cache_dir(home)
    assert cache == tmp_path / "home" / ".cache" / "bncheck" / "fashion-mnist"
    fmnist(cache / "FashionMNIST" / "raw")
    assert find_data(environ=home, cwd=work).where == str(cache / "FashionMNIST" / "raw")
    fmnist(cache)
    assert find_data(environ=home, cwd=work).where == str(cache)
    # 2. $BNCHECK_DATA, and 1. --data, each also as torchvision's root
    env_dir, explicit = fmnist(tmp_path / "env"), tmp_path / "explicit"
    fmnist(explicit / "FashionMNIST" / "raw")
    environ = {**home, "BNCHECK_DATA": str(env_dir)}
    assert find_data(environ=environ, cwd=work).where == str(env_dir)
    found = find_data(explicit, environ=environ, cwd=work)
    assert found.where == str(explicit / "FashionMNIST" / "raw")
    assert len(found.train) == 8 and len(found.test) == 4 and found.label == "Fashion-MNIST"


def test_an_explicit_place_without_the_files_is_an_error(tmp_path: Path,
                                                         home: dict[str, str]) -> None:
    with pytest.raises(DataError, match=r"\$BNCHECK_DATA=.*does not exist"):
        find_data(environ={**home, "BNCHECK_DATA": str(tmp_path / "nope")}, cwd=tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.*notes.txt"):
        find_data(tmp_path, environ=home, cwd=tmp_path)


def test_nothing_found_gives_the_labelled_stand_in(tmp_path: Path,
                                                   home: dict[str, str]) -> None:
    source = find_data(environ=home, cwd=tmp_path)
    assert source.stand_in and source.label == STAND_IN_LABEL
    assert "not Fashion-MNIST" in source.label
    assert str(user_cache_dir(home)) in source.searched
    with pytest.raises(DataError, match="No Fashion-MNIST found.*To train on Fashion-MNIST, put "
                                        "its four IDX files"):
        find_data(environ=home, cwd=tmp_path, allow_stand_in=False)


def test_stand_in_is_real_mnist_in_fashion_mnist_format() -> None:
    train, test, where = stand_in_datasets()
    assert "mnist_5k" in where
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.float32
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) == 1.0
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 100))
    # Real digits: pixels are mostly background, with grey levels between (not synthetic blocks).
    assert 0.1 < float(train.images.mean()) < 0.2
    assert len(torch.unique(train.images[:50])) > 200
