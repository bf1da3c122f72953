"""``bncheck train``: train LeNet-BN on Fashion-MNIST with the seed notebook's recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from bncheck._io import write_json_atomic
from bncheck._validation import check_finite_float, check_positive_int
from bncheck.cli._common import EXIT_INTERRUPTED, console, debug_option, err, handles_errors
from bncheck.errors import InvalidArgument

# (header, width) of each column of the per-epoch table.
_COLUMNS = (("epoch", 5), ("train loss", 10), ("train acc", 9), ("test acc", 8), ("seconds", 7))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", required=True, metavar="DIR",
              help="Directory with the four Fashion-MNIST IDX files (each may be .gz).")
@click.option("--bn", type=click.Choice(["scratch", "torch"]), default="scratch",
              show_default=True, help="bncheck's reference BatchNorm or torch.nn's.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=1.0, show_default=True, help="SGD learning rate.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initial weights and the shuffling; same seed, same weights.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Train on the first N training samples only (the test set stays whole).")
@click.option("--checkpoint", type=str, default=None, metavar="OUT.pt",
              help="Write the state_dict here after every epoch (atomically).")
@click.option("--json", "json_out", type=str, default=None, metavar="OUT.json",
              help="Write the settings and per-epoch numbers here as JSON.")
@debug_option
@handles_errors
def train(data_dir: str, bn: str, epochs: int, lr: float, batch_size: int, seed: int,
          limit: int | None, checkpoint: str | None, json_out: str | None, debug: bool) -> None:
    """Train LeNet-BN on Fashion-MNIST as the seed notebook does.

    The recipe: Xavier-uniform init, plain SGD with lr 1.0, cross-entropy, batch 256,
    10 epochs, the training set reshuffled every epoch. Test accuracy is measured in eval
    mode (running statistics) after each epoch. Everything is seeded by --seed.

    \b
    Example:
        bncheck train --data ~/data/FashionMNIST/raw --epochs 10 --checkpoint lenet.pt
        bncheck export lenet.onnx --checkpoint lenet.pt

    The checkpoint is a plain state_dict: torch.load(path, weights_only=True) reads it, and
    it loads into bncheck.models.lenet_bn(bn="scratch") and lenet_bn(bn="torch") alike.
    It is rewritten after every epoch, so an interrupted run keeps the last finished one.

    Exit codes: 0 trained, 2 bad option, bad data or diverged training, 130 interrupted.
    """
    from bncheck.data import load_fashion_mnist
    from bncheck.models import lenet_bn
    from bncheck.training import EpochStats
    from bncheck.training import train as run_training

    # Options are checked before the data is read, with the names the user typed.
    for value, name in ((epochs, "--epochs"), (batch_size, "--batch-size"), (limit, "--limit")):
        if value is not None:
            check_positive_int(value, name)
    check_finite_float(lr, "--lr", min_value=0.0, exclude_min=True)
    for path, name in ((checkpoint, "--checkpoint"), (json_out, "--json")):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise InvalidArgument(f"Expected {name}'s directory to exist, received "
                                  f"{name}={path} ({Path(path).parent} does not exist)")
    train_data = load_fashion_mnist(data_dir, split="train")
    test_data = load_fashion_mnist(data_dir, split="test")
    available = len(train_data)
    if limit is not None:
        train_data = train_data.head(limit)

    out = console()
    used = f"{len(train_data)} of {available}" if len(train_data) < available else str(available)
    out.print(f"LeNet-BN (bn={bn}) on {used} training samples, {len(test_data)} test samples: "
              f"epochs={epochs}, lr={lr}, batch_size={batch_size}, seed={seed}")

    finished: list[EpochStats] = []

    def show(stats: EpochStats) -> None:
        finished.append(stats)
        out.print(_row_table(
            [str(stats.epoch), _loss(stats.train_loss), f"{stats.train_acc:.4f}",
             f"{stats.test_acc:.4f}", f"{stats.seconds:.1f}"],
            header=stats.epoch == 1,
        ))

    try:
        history = run_training(lenet_bn(bn, seed=seed), train_data, test_data, epochs=epochs,
                               lr=lr, batch_size=batch_size, seed=seed, checkpoint=checkpoint,
                               on_epoch=show)
    except KeyboardInterrupt:
        saved = (f"; {checkpoint} holds epoch {finished[-1].epoch}"
                 if checkpoint is not None and finished else "")
        err(f"interrupted after {len(finished)} of {epochs} epochs{saved}")
        sys.exit(EXIT_INTERRUPTED)
    final = history.epochs[-1]
    out.print(f"Final: train loss {_loss(final.train_loss)}, train acc {final.train_acc:.4f}, "
              f"test acc {final.test_acc:.4f}")
    if checkpoint is not None:
        out.print(f"Checkpoint (state_dict) written to {checkpoint}")
    if json_out is not None:
        record = {"data": str(data_dir), "bn": bn, "limit": limit, **history.to_dict()}
        write_json_atomic(Path(json_out), record)
        out.print(f"History written to {json_out}")


def _loss(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"


def _row_table(cells: list[str], *, header: bool) -> Table:
    """One row as a table with fixed column widths, so rows printed one by one line up."""
    table = Table(box=None, show_header=header, pad_edge=False, padding=(0, 2, 0, 0))
    for name, width in _COLUMNS:
        table.add_column(name, justify="right", width=max(width, len(name)), no_wrap=True)
    table.add_row(*cells)
    return table
