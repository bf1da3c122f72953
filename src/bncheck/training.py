"""Train a classifier with the seed notebook's recipe (d2l ``train_ch6``), reproducibly.

>>> from bncheck.data import synthetic_dataset
>>> from bncheck.models import lenet_bn
>>> from bncheck.training import train
>>> model = lenet_bn("torch")
>>> history = train(model, synthetic_dataset(256), synthetic_dataset(64, seed=1),
...                 epochs=2, batch_size=32)
>>> [e.epoch for e in history.epochs], history.epochs[-1].train_loss < 0.5
([1, 2], True)

The recipe: Xavier-uniform init of every Conv/Linear weight (biases keep their default init),
SGD with ``lr=1.0``, cross-entropy, batch 256, 10 epochs, the training set reshuffled each
epoch. Train loss and accuracy are the running averages over the epoch's batches, in training
mode, as d2l reports them; test accuracy is measured after each epoch in ``model.eval()`` mode
under ``torch.no_grad()``. Everything random draws from generators seeded by ``seed``; the
global RNG is left as it was.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bncheck._io import write_atomic
from bncheck._validation import check_finite_float, check_positive_int, check_type
from bncheck.data import Dataset, batches
from bncheck.errors import BNCheckError, InvalidArgument

__all__ = [
    "EpochStats",
    "TrainingDiverged",
    "TrainingHistory",
    "evaluate_accuracy",
    "save_checkpoint",
    "train",
    "xavier_init",
]


class TrainingDiverged(BNCheckError):
    """The training loss became NaN or infinite (usually: the learning rate is too large)."""


@dataclass(frozen=True)
class EpochStats:
    """One epoch's numbers (``epoch`` counts from 1)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float


@dataclass
class TrainingHistory:
    """The run's settings and one :class:`EpochStats` per finished epoch."""

    epochs_requested: int
    lr: float
    batch_size: int
    seed: int
    num_train: int
    num_test: int
    epochs: list[EpochStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def xavier_init(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Re-draw every ``nn.Conv2d``/``nn.Linear`` weight Xavier-uniformly, as d2l ``train_ch6``.

    Biases and BatchNorm parameters are left alone. Returns ``model``.
    """
    check_type(nn.Module, model, "model")
    check_type(int, seed, "seed")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=g)
    return model


def evaluate_accuracy(model: nn.Module, data: Dataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` in eval mode, without gradients.

    The model is left in eval mode.
    """
    check_type(Dataset, data, "data")
    check_positive_int(batch_size, "batch_size")
    device = _device_of(model)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(data, batch_size=batch_size):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(data)


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model.state_dict()`` to ``path`` atomically (temporary file, then ``os.replace``).

    The file loads with ``torch.load(path, weights_only=True)``. Returns the path.
    """
    check_type(nn.Module, model, "model")
    path = _check_writable(path, "checkpoint")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic({path: buffer.getvalue()})
    return path


def train(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    *,
    epochs: int = 10,
    lr: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    init: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainingHistory:
    """Train ``model`` in place with the seed notebook's recipe and return its history.

    Args:
        model: a classifier taking ``train_data.images`` batches, returning logits.
        train_data, test_data: :class:`bncheck.data.Dataset` (images, int64 labels).
        epochs, lr, batch_size: the recipe's 10, 1.0 and 256 by default (plain SGD).
        seed: seeds the Xavier init and the per-epoch shuffling; same seed, same weights.
        init: apply Xavier-uniform init first, as d2l ``train_ch6`` does.
        checkpoint: after each epoch, write the ``state_dict`` there atomically
            (see :func:`save_checkpoint`); its directory must exist.
        on_epoch: called with each epoch's :class:`EpochStats` as soon as it is measured.

    Returns the :class:`TrainingHistory`; the model is left in eval mode.

    Raises:
        InvalidArgument: a bad argument (checked before any training).
        TrainingDiverged: the training loss became NaN or infinite; the checkpoint, if any,
            keeps the last finite epoch.
    """
    check_type(nn.Module, model, "model")
    _check_dataset(train_data, "train_data")
    _check_dataset(test_data, "test_data")
    check_positive_int(epochs, "epochs")
    check_finite_float(lr, "lr", min_value=0.0, exclude_min=True)
    check_positive_int(batch_size, "batch_size")
    check_type(int, seed, "seed")
    check_type(bool, init, "init")
    if checkpoint is not None:
        _check_writable(checkpoint, "checkpoint")

    history = TrainingHistory(epochs, float(lr), batch_size, seed, len(train_data), len(test_data))
    if init:
        xavier_init(model, seed=seed)
    device = _device_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(seed)
    # Anything in the model that draws from the global CPU RNG (dropout, say) is seeded too,
    # and the caller's RNG state comes back untouched. (torch.manual_seed would also reseed,
    # for good, every CUDA generator.)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss_sum, correct = _train_epoch(model, train_data, params, lr, loss_fn, device,
                                             batch_size, shuffler)
            train_loss = loss_sum / len(train_data)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch}: train loss={train_loss}; "
                    f"try a smaller lr (lr={lr!r})"
                )
            test_acc = evaluate_accuracy(model, test_data, batch_size=batch_size)
            stats = EpochStats(epoch, train_loss, correct / len(train_data), test_acc,
                               time.perf_counter() - start)
            history.epochs.append(stats)
            if checkpoint is not None:
                save_checkpoint(model, checkpoint)
            if on_epoch is not None:
                on_epoch(stats)
    return history


def _train_epoch(model: nn.Module, data: Dataset, params: list[nn.Parameter], lr: float,
                 loss_fn: nn.Module, device: torch.device, batch_size: int,
                 shuffler: torch.Generator) -> tuple[float, int]:
    # Plain SGD (no momentum, no weight decay), the same update as torch.optim.SGD(lr=lr),
    # written out because importing torch.optim costs seconds per process.
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    for x, y in batches(data, batch_size=batch_size, shuffle=True, generator=shuffler):
        x, y = x.to(device), y.to(device)
        for p in params:
            p.grad = None
        logits = model(x)
        loss: Tensor = loss_fn(logits, y)
        loss.backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
            loss_sum += loss.detach().double().cpu() * len(y)
            correct += int((logits.argmax(1) == y).sum())
    return float(loss_sum), correct


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_dataset(data: Any, name: str) -> None:
    check_type(Dataset, data, name)
    if len(data) == 0:
        raise InvalidArgument(f"Expected {name} to hold at least one sample, received 0")


def _check_writable(path: Any, name: str) -> Path:
    check_type((str, os.PathLike), path, name)
    path = Path(path)
    if path.is_dir():
        raise InvalidArgument(f"Expected {name} to be a file path, received {name}={str(path)!r} "
                              f"(a directory)")
    if not path.parent.is_dir():
        raise InvalidArgument(f"Expected {name}'s directory to exist, received "
                              f"{name}={str(path)!r} ({path.parent} does not exist)")
    return path
