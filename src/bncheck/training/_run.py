"""A whole training run and its output folder: checkpoint, metrics JSON, plot, command.

>>> import tempfile
>>> from bncheck.training.data import synthetic_dataset
>>> from bncheck.training import DataSource, RunSettings, plan_outputs, run_training
>>> source = DataSource(synthetic_dataset(64), synthetic_dataset(16, seed=1), "synthetic",
...                     "memory", stand_in=True)
>>> outputs = plan_outputs(tempfile.mkdtemp() + "/run")
>>> result = run_training(RunSettings(bn="torch", epochs=1, batch_size=16), source, outputs,
...                       command="bncheck train --epochs 1")
>>> result.status, sorted(p.name for p in outputs.directory.iterdir())  # doctest: +ELLIPSIS
('completed', ['checkpoint.pt', 'command.txt', 'curves.png', 'metrics.json'])

Every path is checked before any work (:func:`plan_outputs`); the folder is created when the
first file is written. The checkpoint is rewritten after every epoch and the metrics JSON too, so
a run stopped by Ctrl-C or by divergence keeps its finished epochs (``status`` says which).
Files get the user's umask (``bncheck.infra.io``). A stand-in run says so in every file: the JSON's
``data`` entry, the plot's red banner, the command file's first line, the checkpoint's note.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bncheck.errors import OutputError, TargetError
from bncheck.infra.io import (
    check_distinct,
    check_output_path,
    ctrl_c_deferred,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from bncheck.infra.validation import check_finite_float, check_positive_int, check_type
from bncheck.reference.lenet import BUILTIN_BN, BNFactory, lenet_bn
from bncheck.training._checkpoint import save_checkpoint
from bncheck.training._loop import (
    BatchProgress,
    EpochStats,
    TrainingDiverged,
    TrainingHistory,
    check_batch_size,
    train,
)
from bncheck.training._plot import plot_curves, plotting_available
from bncheck.training._population import PopulationGap, population_gaps
from bncheck.training._sources import DataSource, how_to_get_fashion_mnist

__all__ = ["RunOutputs", "RunResult", "RunSettings", "default_run_dir", "plan_outputs",
           "run_training", "write_metrics"]

_VERSIONED = ("torch", "numpy", "bncheck", "matplotlib", "mlxtend")


@dataclass(frozen=True)
class RunSettings:
    """What to train: the BatchNorm (``bn``: a name or TARGET, ``factory``: what builds it) and
    the recipe."""

    bn: str = "scratch"
    factory: str | BNFactory | None = None
    epochs: int = 10
    lr: float = 1.0
    batch_size: int = 256
    seed: int = 0
    limit: int | None = None

    def check(self) -> None:
        """Raise :class:`~bncheck.errors.InvalidArgument` for a bad setting."""
        check_positive_int(self.epochs, "epochs")
        check_finite_float(self.lr, "lr", min_value=0.0, exclude_min=True)
        check_batch_size(self.batch_size)
        check_type(int, self.seed, "seed")
        if self.limit is not None:
            check_positive_int(self.limit, "limit")


@dataclass(frozen=True)
class RunOutputs:
    """The files of a run; ``plot`` is ``None`` when matplotlib is not installed."""

    directory: Path
    checkpoint: Path
    metrics: Path
    plot: Path | None
    command: Path

    def files(self) -> list[Path]:
        return [p for p in (self.checkpoint, self.metrics, self.plot, self.command)
                if p is not None]


@dataclass
class RunResult:
    """How a run ended (``"completed"``, ``"interrupted"``, ``"diverged"``) and what it wrote;
    ``steps`` records the steps around the training (``bncheck train``'s ``verify`` and
    ``export``), written into the metrics JSON under their names."""

    status: str
    history: TrainingHistory
    outputs: RunOutputs
    gaps: list[PopulationGap] = field(default_factory=list)
    message: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)


def default_run_dir(now: datetime.datetime | None = None, root: Path = Path("runs")) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``, ... if that exists already)."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate, k = root / stamp, 2
    while candidate.exists():
        candidate, k = root / f"{stamp}-{k}", k + 1
    return candidate


def plan_outputs(out: str | os.PathLike[str] | None = None, *,
                 checkpoint: str | os.PathLike[str] | None = None,
                 metrics: str | os.PathLike[str] | None = None,
                 names: tuple[str, str] = ("--checkpoint", "--json")) -> RunOutputs:
    """Decide and check every output path before any work; creates nothing.

    ``out`` (default :func:`default_run_dir`) may not exist yet, but its parent must (``runs/``
    itself is created for the default). ``checkpoint`` and ``metrics`` put those two files
    elsewhere; ``names`` are the option names errors use for them.

    Raises:
        OutputError: a path cannot be written (missing or read-only folder, a directory).
    """
    if out is not None:
        check_type((str, os.PathLike), out, "--out")
    directory = Path(out) if out is not None else default_run_dir()
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"Expected --out to be a directory, received --out={str(directory)!r}, "
                          f"which is a file")
    if directory.is_dir():
        check_output_path(directory / "metrics.json", "--out")
    else:
        parent = directory.parent
        if out is None and not parent.exists():
            parent = parent.parent  # runs/ is created with the run's folder
        check_output_path(parent / f"{directory.name}.probe", "--out")
    ckpt = Path(checkpoint) if checkpoint is not None else directory / "checkpoint.pt"
    json = Path(metrics) if metrics is not None else directory / "metrics.json"
    for path, name in ((checkpoint, names[0]), (metrics, names[1])):
        if path is not None:
            check_output_path(path, name)
    plot = directory / "curves.png" if plotting_available() else None
    planned = RunOutputs(directory, ckpt, json, plot, directory / "command.txt")
    check_distinct({names[0]: ckpt, names[1]: json, "the plot": plot,
                    "the command file": planned.command})
    return planned


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages a run depends on."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_training(settings: RunSettings, source: DataSource, outputs: RunOutputs, *,
                 command: str, on_batch: Callable[[BatchProgress], None] | None = None,
                 on_epoch: Callable[[EpochStats], None] | None = None,
                 steps: Mapping[str, Any] | None = None) -> RunResult:
    """Train LeNet-BN on ``source`` as ``settings`` say and write ``outputs``.

    Returns the :class:`RunResult`. A diverged run writes its files and raises; so does an
    interrupted one. ``steps``: records of steps before the training (e.g. ``{"verify":
    {...}}``), kept in :attr:`RunResult.steps` and the metrics JSON.

    Raises:
        TrainingDiverged: after writing the metrics (``status: diverged``) and the plot.
        TargetError: ``bn`` is a TARGET whose code raised, after writing the metrics
            (``status: failed``).
        KeyboardInterrupt: after writing the metrics of the finished epochs
            (``status: interrupted``) and the plot.
        OutputError: a file cannot be written.
    """
    from bncheck.engine.target import user_code

    settings.check()
    train_data = source.train if settings.limit is None else source.train.head(settings.limit)
    # A user's BatchNorm (a TARGET): what it raises is reported as its error, with its line.
    def theirs() -> contextlib.AbstractContextManager[None]:
        if settings.bn in BUILTIN_BN:
            return contextlib.nullcontext()
        return user_code(f"training LeNet-BN with bn={settings.bn}")

    with theirs():
        model = lenet_bn(settings.factory if settings.factory is not None else settings.bn,
                         seed=settings.seed)
    history = TrainingHistory(settings.epochs, float(settings.lr), settings.batch_size,
                              settings.seed, len(train_data), len(source.test))
    result = RunResult("running", history, outputs, steps=dict(steps or {}))
    note = f"LeNet-BN (bn={settings.bn}) trained on {source.label}"

    def finished(stats: EpochStats) -> None:
        # The files and the caller's report of the epoch agree even when Ctrl-C comes now.
        with ctrl_c_deferred():
            outputs.directory.mkdir(parents=True, exist_ok=True)
            save_checkpoint(model, outputs.checkpoint, note=note)
            write_metrics(result, settings, source, command)
            if on_epoch is not None:
                on_epoch(stats)

    try:
        with theirs():
            train(model, train_data, source.test, epochs=settings.epochs, lr=settings.lr,
                  batch_size=settings.batch_size, seed=settings.seed, on_batch=on_batch,
                  on_epoch=finished, history=history)
    except TrainingDiverged as e:
        result.status, result.message = "diverged", str(e)
        _write_all(result, settings, source, command)
        raise
    except TargetError as e:  # the user's BatchNorm raised
        result.status, result.message = "failed", str(e)
        _write_all(result, settings, source, command)
        raise
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.message = f"interrupted after {len(history.epochs)} of {settings.epochs} epochs"
        _write_all(result, settings, source, command)
        raise
    result.status = "completed"
    result.gaps = population_gaps(model, train_data, batch_size=settings.batch_size)
    _write_all(result, settings, source, command)
    return result


def _write_all(result: RunResult, settings: RunSettings, source: DataSource,
               command: str) -> None:
    outputs = result.outputs
    outputs.directory.mkdir(parents=True, exist_ok=True)
    write_metrics(result, settings, source, command)
    header = f"# {source.label}\n" if source.stand_in else ""
    lines = [f"# {k}: {v}" for k, v in versions().items()]
    write_text_atomic(outputs.command, header + command + "\n" + "\n".join(lines) + "\n")
    if outputs.plot is not None and result.history.curve:
        status = None if result.status == "completed" else result.status
        title = (f"LeNet-BN (bn={settings.bn}), lr {settings.lr:g}, batch {settings.batch_size}"
                 f", {len(result.history.epochs)} of {settings.epochs} epochs on "
                 f"{'stand-in data' if source.stand_in else source.label}")
        png = plot_curves(result.history, title=title,
                          banner=source.label if source.stand_in else None, status=status)
        write_atomic({outputs.plot: png})


def write_metrics(result: RunResult, settings: RunSettings, source: DataSource,
                  command: str) -> None:
    """(Re)write the metrics JSON of ``result``: e.g. after a step that follows the training
    added its record to :attr:`RunResult.steps`."""
    data: dict[str, Any] = {"label": source.label, "stand_in": source.stand_in,
                            "where": source.where, "searched": list(source.searched)}
    if source.stand_in:
        data["how_to_get_fashion_mnist"] = how_to_get_fashion_mnist()
    record = {
        "status": result.status,
        "message": result.message,
        "stand_in": source.stand_in,
        "data": data,
        "bn": settings.bn,
        "limit": settings.limit,
        **result.history.to_dict(),
        "population_gaps": [asdict(g) for g in result.gaps],
        **result.steps,
        "command": command,
        "argv": sys.argv,
        "versions": versions(),
        "files": {k: str(v) for k, v in asdict(result.outputs).items() if v is not None},
    }
    write_json_atomic(result.outputs.metrics, record)
