"""The training loop: the seed notebook's recipe (d2l ``train_ch6``), reproducible and watched.

The recipe: Xavier-uniform init of every Conv/Linear weight (biases keep their default init),
``torch.optim.SGD`` with ``lr=1.0``, cross-entropy, batch 256, 10 epochs, the training set
reshuffled each epoch. Train loss and accuracy are the running averages over the epoch's
batches, in training mode, as d2l reports them; test accuracy is measured after each epoch in
``model.eval()`` mode under ``torch.no_grad()``. Everything random draws from generators seeded by
``seed``; the global RNG is left as it was.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.errors import InvalidArgument, TrainingDiverged
from bncheck.infra.validation import check_finite_float, check_positive_int, check_type
from bncheck.training.data import Dataset, batches

__all__ = [
    "DIVERGENCE_FACTOR",
    "BatchProgress",
    "CurvePoint",
    "EpochStats",
    "TrainingDiverged",
    "TrainingHistory",
    "check_batch_size",
    "evaluate_accuracy",
    "train",
    "xavier_init",
]

#: A batch loss this many times the first batch's (the untrained model's) counts as diverged.
DIVERGENCE_FACTOR = 10.0

#: Train loss and accuracy are recorded this many times per epoch for the curves (as d2l does).
POINTS_PER_EPOCH = 5


@dataclass(frozen=True)
class BatchProgress:
    """Where an epoch is, after each training step (``step`` counts from 1)."""

    epoch: int
    step: int
    num_batches: int
    examples: int
    running_loss: float
    running_acc: float
    seconds: float


@dataclass(frozen=True)
class CurvePoint:
    """Running train loss and accuracy at a fractional epoch (``1.4``: 40 % into epoch 2)."""

    epoch: float
    train_loss: float
    train_acc: float


@dataclass(frozen=True)
class EpochStats:
    """One epoch's numbers (``epoch`` counts from 1; ``seconds`` includes the test pass)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float
    train_seconds: float


@dataclass
class TrainingHistory:
    """The run's settings, one :class:`EpochStats` per finished epoch and the curve points.

    ``dropped_per_epoch`` is 1 when the training set size is 1 more than a multiple of the
    batch size: that last sample (a different one each epoch, as the order is reshuffled) is
    dropped, because BatchNorm cannot train on a batch of one.
    """

    epochs_requested: int
    lr: float
    batch_size: int
    seed: int
    num_train: int
    num_test: int
    dropped_per_epoch: int = 0
    epochs: list[EpochStats] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """A training batch size: an int >= 2 (BatchNorm needs two samples to train)."""
    check_positive_int(batch_size, name)
    if batch_size < 2:
        raise InvalidArgument(f"Expected {name} >= 2 (BatchNorm needs at least 2 samples per "
                              f"batch to train), received {name}={batch_size}")


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
    device = device_of(model)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(data, batch_size=batch_size):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(data)


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
    on_batch: Callable[[BatchProgress], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    history: TrainingHistory | None = None,
) -> TrainingHistory:
    """Train ``model`` in place with the seed notebook's recipe and return its history.

    >>> from bncheck.training.data import synthetic_dataset
    >>> from bncheck.reference.lenet import lenet_bn
    >>> history = train(lenet_bn("torch"), synthetic_dataset(256), synthetic_dataset(64, seed=1),
    ...                 epochs=2, batch_size=32)
    >>> [e.epoch for e in history.epochs], history.epochs[-1].train_loss < 0.5
    ([1, 2], True)

    Args:
        model: a classifier taking ``train_data.images`` batches, returning logits.
        train_data, test_data: :class:`bncheck.training.data.Dataset` (images, int64 labels).
        epochs, lr, batch_size: the recipe's 10, 1.0 and 256 by default (plain SGD).
        seed: seeds the Xavier init and the per-epoch shuffling; same seed, same weights.
        init: apply Xavier-uniform init first, as d2l ``train_ch6`` does.
        on_batch: called after every step with a :class:`BatchProgress` (for progress bars).
        on_epoch: called with each epoch's :class:`EpochStats` as soon as it is measured
            (write the checkpoint there: an interrupted run then keeps the last epoch).
        history: a :class:`TrainingHistory` to fill in (so a caller keeps the finished epochs
            when training is interrupted or diverges); by default a new one.

    Returns the :class:`TrainingHistory`; the model is left in eval mode.

    Raises:
        InvalidArgument: a bad argument (checked before any training).
        TrainingDiverged: a batch loss became NaN or infinite, or more than
            :data:`DIVERGENCE_FACTOR` times the first batch's loss; names the epoch and step.
    """
    check_type(nn.Module, model, "model")
    _check_dataset(train_data, "train_data")
    _check_dataset(test_data, "test_data")
    check_positive_int(epochs, "epochs")
    check_finite_float(lr, "lr", min_value=0.0, exclude_min=True)
    check_batch_size(batch_size)
    check_type(int, seed, "seed")
    check_type(bool, init, "init")
    drop = 1 if len(train_data) % batch_size == 1 else 0
    if len(train_data) - drop < 2:
        raise InvalidArgument(f"Expected train_data to hold at least 2 samples (BatchNorm needs "
                              f"2 to train), received {len(train_data)}")
    if history is None:
        history = TrainingHistory(epochs, float(lr), batch_size, seed, 0, 0)
    check_type(TrainingHistory, history, "history")
    history.num_train, history.num_test = len(train_data), len(test_data)
    history.dropped_per_epoch = drop

    if init:
        xavier_init(model, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    shuffler = torch.Generator().manual_seed(seed)
    step_loop = _StepLoop(model, optimizer, train_data, batch_size, drop == 1, on_batch, lr)
    # Anything in the model that draws from the global CPU RNG (dropout, say) is seeded too,
    # and the caller's RNG state comes back untouched. (torch.manual_seed would also reseed,
    # for good, every CUDA generator.)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss, acc = step_loop.epoch(epoch, shuffler, history.curve)
            train_seconds = time.perf_counter() - start
            test_acc = evaluate_accuracy(model, test_data, batch_size=batch_size)
            stats = EpochStats(epoch, loss, acc, test_acc, time.perf_counter() - start,
                               train_seconds)
            # The epoch is recorded and handed to on_epoch (which writes the checkpoint) as one
            # step: a Ctrl-C in between would leave metrics claiming an epoch the checkpoint
            # does not hold.
            with _ctrl_c_held():
                history.epochs.append(stats)
                if on_epoch is not None:
                    on_epoch(stats)
    return history


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """SIGINT during the block is delivered again when the block ends, to whatever handled it
    before (Python's default: ``KeyboardInterrupt``).

    The handler is swapped rather than the signal masked: any thread may receive a process
    signal, but Python runs its handlers in the main thread only. Elsewhere (where no
    ``KeyboardInterrupt`` is raised anyway), or under a handler Python did not install, the
    block just runs.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


class _StepLoop:
    """One epoch of SGD steps, with the divergence check and the running averages."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Dataset,
                 batch_size: int, drop_last: bool,
                 on_batch: Callable[[BatchProgress], None] | None, lr: float) -> None:
        self.model, self.optimizer, self.data, self.lr = model, optimizer, data, lr
        self.batch_size, self.drop_last, self.on_batch = batch_size, drop_last, on_batch
        self.num_batches = (len(data) - drop_last) // batch_size + (
            (len(data) - drop_last) % batch_size > 0)
        self.device = device_of(model)
        self.loss_fn = nn.CrossEntropyLoss()
        self.first_loss: float | None = None
        marks = {round(k * self.num_batches / POINTS_PER_EPOCH) for k in
                 range(1, POINTS_PER_EPOCH + 1)}
        self.marks = {m for m in marks if m >= 1}

    def epoch(self, epoch: int, shuffler: torch.Generator,
              curve: list[CurvePoint]) -> tuple[float, float]:
        self.model.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(batches(self.data, batch_size=self.batch_size,
                                              shuffle=True, generator=shuffler,
                                              drop_last=self.drop_last), start=1):
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(x)
            loss: Tensor = self.loss_fn(logits, y)
            value = loss.item()
            self._check_divergence(value, epoch, step)
            loss.backward()
            self.optimizer.step()
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if step in self.marks:
                curve.append(CurvePoint(epoch - 1 + step / self.num_batches, loss_sum / seen,
                                        correct / seen))
            if self.on_batch is not None:
                self.on_batch(BatchProgress(epoch, step, self.num_batches, seen, loss_sum / seen,
                                            correct / seen, time.perf_counter() - start))
        return loss_sum / seen, correct / seen

    def _check_divergence(self, value: float, epoch: int, step: int) -> None:
        where = f"epoch {epoch}, step {step}"
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged at {where}: the batch loss is {value}; try a smaller "
                f"learning rate (lr={self.lr:g})", epoch=epoch, step=step)
        if self.first_loss is None:
            self.first_loss = value
        elif value > DIVERGENCE_FACTOR * self.first_loss:
            raise TrainingDiverged(
                f"training diverged at {where}: the batch loss {value:.4g} is more than "
                f"{DIVERGENCE_FACTOR:g}x the first batch's {self.first_loss:.4g} (the untrained "
                f"model's); try a smaller learning rate (lr={self.lr:g})",
                epoch=epoch, step=step)


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_dataset(data: Any, name: str) -> None:
    check_type(Dataset, data, name)
    if len(data) == 0:
        raise InvalidArgument(f"Expected {name} to hold at least one sample, received 0")


