"""bncheck.training: the seed's recipe learns, is reproducible, and checkpoints atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bncheck.data import Dataset, batches, synthetic_dataset
from bncheck.errors import BNCheckError, InvalidArgument, InvalidArgumentType
from bncheck.models import lenet_bn
from bncheck.training import (
    EpochStats,
    TrainingDiverged,
    evaluate_accuracy,
    save_checkpoint,
    train,
    xavier_init,
)

TRAIN = synthetic_dataset(256, seed=0)
TEST = synthetic_dataset(128, seed=1)
FAST: dict[str, Any] = {"epochs": 2, "batch_size": 16}  # 16 SGD steps per epoch


@pytest.fixture(scope="module", params=["scratch", "torch"])
def trained(request: pytest.FixtureRequest) -> tuple[str, nn.Module, object]:
    model = lenet_bn(request.param)
    return request.param, model, train(model, TRAIN, TEST, seed=0, **FAST)


def test_learns_the_synthetic_task(trained) -> None:  # type: ignore[no-untyped-def]
    _, model, history = trained
    first, last = history.epochs[0], history.epochs[-1]
    assert last.train_loss < 0.5 * first.train_loss
    assert last.train_loss < 0.1 * math.log(10)  # ln 10: the loss of a uniform guess
    assert last.train_acc > 0.9
    assert last.test_acc > 0.9  # measured in eval mode, with the running statistics
    assert not model.training
    assert evaluate_accuracy(model, TEST) == last.test_acc


def test_history_records_settings_and_epochs(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, history = trained
    d = history.to_dict()
    assert (d["epochs_requested"], d["lr"], d["batch_size"], d["seed"]) == (2, 1.0, 16, 0)
    assert (d["num_train"], d["num_test"]) == (256, 128)
    assert [e["epoch"] for e in d["epochs"]] == [1, 2]
    assert all(e["seconds"] > 0 for e in d["epochs"])


@pytest.mark.parametrize("bn", ["scratch", "torch"])
def test_same_seed_same_weights_and_global_rng_untouched(bn: str) -> None:
    data = TRAIN.head(64)
    state = torch.get_rng_state()
    a, b, c = lenet_bn(bn), lenet_bn(bn), lenet_bn(bn)
    ha = train(a, data, TEST, seed=7, **FAST)
    hb = train(b, data, TEST, seed=7, **FAST)
    train(c, data, TEST, seed=8, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # running statistics included
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [e.train_loss for e in ha.epochs] == [e.train_loss for e in hb.epochs]


def test_both_bn_variants_train_the_same() -> None:
    """Same seed, same data: the reference BN and torch's follow the same trajectory."""
    a, b = lenet_bn("scratch"), lenet_bn("torch")
    ha = train(a, TRAIN.head(128), TEST, seed=0, epochs=2, batch_size=32)
    hb = train(b, TRAIN.head(128), TEST, seed=0, epochs=2, batch_size=32)
    # The two compute BN in a different float32 order; lr=1.0 amplifies the rounding step by
    # step (measured here: 1.1e-4 relative after 8 steps), so allow 1e-3.
    for ea, eb in zip(ha.epochs, hb.epochs, strict=True):
        assert ea.train_loss == pytest.approx(eb.train_loss, rel=1e-3)


def test_sgd_step_equals_torch_optim_sgd() -> None:
    """The written-out update is torch.optim.SGD(lr) exactly (same data order, same init)."""
    data = TRAIN.head(64)
    ours, ref = lenet_bn("torch"), lenet_bn("torch")
    train(ours, data, TEST.head(8), epochs=1, batch_size=32, seed=5)
    xavier_init(ref, seed=5)
    opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    ref.train()
    order = torch.Generator().manual_seed(5)  # what train(seed=5) shuffles with
    for x, y in batches(data, batch_size=32, shuffle=True, generator=order):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    so, sr = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(so[k], sr[k]) for k in so)


def test_xavier_init_redraws_conv_and_linear_weights_only() -> None:
    a, b = lenet_bn("torch", seed=0), lenet_bn("torch", seed=0)
    xavier_init(b, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert changed == {"0.weight", "4.weight", "9.weight", "12.weight", "15.weight"}
    bound = math.sqrt(6 / (6 * 25 + 16 * 25))  # xavier-uniform bound of the 6->16 5x5 conv
    assert sb["4.weight"].abs().max() <= bound


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    seen: list[EpochStats] = []
    model = lenet_bn("scratch")
    train(model, TRAIN.head(64), TEST.head(16), epochs=1, batch_size=32, checkpoint=path,
          on_epoch=seen.append)
    assert [e.epoch for e in seen] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary left
    state = torch.load(path, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    for bn in ("scratch", "torch"):  # the state_dict keys are shared by both variants
        fresh = lenet_bn(bn)
        fresh.load_state_dict(state)
        assert evaluate_accuracy(fresh, TEST.head(16)) == evaluate_accuracy(model, TEST.head(16))


def test_save_checkpoint_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"old")
    save_checkpoint(lenet_bn("torch"), str(path))
    assert "0.weight" in torch.load(path, weights_only=True)


def test_divergence_raises_and_names_the_epoch() -> None:
    bad = Dataset(torch.full((8, 1, 28, 28), math.inf), torch.zeros(8, dtype=torch.int64))
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1") as info:
        train(lenet_bn("torch"), bad, bad, epochs=1, batch_size=4)
    assert isinstance(info.value, BNCheckError)


IMAGES = torch.zeros(4, 1, 28, 28)
LABELS = torch.zeros(4, dtype=torch.int64)


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"epochs": 0}, InvalidArgument, "epochs=0"),
    ({"lr": 0.0}, InvalidArgument, "lr=0.0"),
    ({"lr": math.nan}, InvalidArgument, "lr=nan"),
    ({"batch_size": -1}, InvalidArgument, "batch_size=-1"),
    ({"seed": 1.5}, InvalidArgumentType, "seed=1.5"),
    ({"init": 1}, InvalidArgumentType, "init"),
    ({"train_data": (IMAGES, LABELS)}, InvalidArgumentType, "train_data"),
    ({"test_data": Dataset(IMAGES[:0], LABELS[:0])}, InvalidArgument, "test_data to hold"),
    ({"checkpoint": "/no/such/dir/c.pt"}, InvalidArgument, "does not exist"),
    ({"model": "lenet"}, InvalidArgumentType, "model"),
])
def test_invalid_arguments_fail_before_training(tmp_path: Path, kwargs: dict, error: type,
                                                fragment: str) -> None:
    model = lenet_bn("torch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"model": model, "train_data": Dataset(IMAGES, LABELS),
            "test_data": Dataset(IMAGES, LABELS), **kwargs}
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        train(args.pop("model"), args.pop("train_data"), args.pop("test_data"), **args)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
