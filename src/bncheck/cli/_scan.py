"""``bncheck scan``: find every normalization layer in a model, verify each class, check the
model as a whole."""

from __future__ import annotations

import os
import pickle
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.tree import Tree

from bncheck.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    JOBS_ENV,
    console,
    debug_option,
    err,
    handles_errors,
    resolve_jobs,
)
from bncheck.cli._watched import import_watched_first, timeout_option

_STYLE = {"passed": "green", "failed": "red", "skipped": "yellow", "note": "cyan",
          "frozen": "cyan", "not verified": "magenta"}


@click.command()
@click.argument("model_spec", required=False, metavar="[MODEL]")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="A keyword argument for the MODEL factory (repeatable); VALUE is a Python "
                   "literal or a string, e.g. spatial_dims=2.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="N,C,H,W",
              help="An input's shape, batch first (repeatable, one per input); required with "
                   "MODEL.")
@click.option("--bn", "bn", default=None, metavar="scratch|torch|FILE.py:Name",
              help="Without MODEL: LeNet-BN built with this BatchNorm (as in `bncheck export`).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="A state_dict (torch.save) to load instead of calibrating; read with "
                   "weights_only=True.")
@click.option("--calibrate", type=int, default=None, metavar="N",
              help="Training-mode forwards on generated data that give the layers running "
                   "statistics (default: 24 for LeNet-BN, 8 otherwise).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the weights, the calibration, the inputs and Hypothesis.")
@click.option("--property", "properties", multiple=True, metavar="NAME",
              help="Run only this property on each class (repeatable; default all).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]),
              help="Hypothesis profile (default: $HYPOTHESIS_PROFILE, else ci).")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--jobs", "jobs_text", metavar="N|auto", envvar=JOBS_ENV,
              help="Worker processes for each class's properties (default auto: one per CPU, "
                   "at most 4; env BNCHECK_JOBS). The report is the same whatever N is.")
@click.option("--strict-frozen", is_flag=True,
              help="Fail frozen-looking layers (kept in eval by train(), statistics that never "
                   "update, frozen parameters in training) instead of noting them.")
@click.option("--onnx", "onnx", is_flag=True,
              help="Also export the model (dynamo, optimized) and run `bncheck check`'s "
                   "verification on it; a mismatch names the normalization layer behind it.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the report as JSON here (checked before any work; written "
                   "atomically).")
@timeout_option("Seconds each call into the model's code may take (building it, a forward, a "
                "property's example) before it counts as hung and is stopped.")
@debug_option
@handles_errors
def scan(model_spec: str | None, model_args: tuple[str, ...], input_shapes: tuple[str, ...],
         bn: str | None, checkpoint: Path | None, calibrate: int | None, seed: int,
         properties: tuple[str, ...], profile: str | None, examples: int | None,
         jobs_text: str | None, strict_frozen: bool, onnx: bool, json_path: Path | None,
         timeout: float, debug: bool) -> None:
    """Find every BatchNorm in a model, verify each class once, and check the model.

    MODEL is what `bncheck export --model` takes: FILE.py:factory or package.module:factory
    (a function or Module class) called with the --model-arg keyword arguments, with
    --input-shape; without MODEL, LeNet-BN (--bn). The model is built from --seed, given
    running statistics by training-mode forwards (or --checkpoint) and put in eval mode.

    Every normalization layer is listed with its module path (layer3.1.bn2): torch's BatchNorm
    classes and subclasses, SyncBatchNorm, and any module holding running statistics that
    normalizes differently in training and eval. Layers are grouped by class and configuration,
    and each group's class is verified once with the property catalogue, declared as its
    instances are (momentum, eps, affine, track_running_stats, the input ranks it sees). A
    class whose output is the same in training and eval is frozen: only the properties that
    hold for a frozen layer run.

    Model-level checks: model_forward, eval_reaches_norm_layers (a train() override that keeps a
    layer training is named), eval_per_sample, eval_grad_mode_independence, frozen_layers (a
    note unless --strict-frozen), fusion_matches_eval (the model's own fuse()/fuse_model(),
    float32 and float64), onnx_export (--onnx).

    Every failing class gets a `bncheck verify` command that reproduces its failure alone.

    Exit codes: 0 all passed, 1 a layer or a check failed, 2 usage error, 130 interrupted.

    Example: bncheck scan monai.networks.nets:resnet18 --model-arg spatial_dims=2
    --model-arg n_input_channels=3 --input-shape 2,3,64,64
    """
    from bncheck.cli._export import make_source
    from bncheck.engine.properties import get
    from bncheck.engine.runner import check_jobs, resolve_run
    from bncheck.infra.io import check_output_path, write_json_atomic
    from bncheck.infra.validation import check_timeout
    from bncheck.scan import ScanReport
    from bncheck.scan.engine import verify_classes

    check_timeout(timeout)  # click's range lets nan and inf through
    if json_path is not None:
        json_path = check_output_path(json_path, "--json")
    jobs = resolve_jobs(jobs_text)
    profile, seed = resolve_run(profile, examples, seed)
    check_jobs(jobs, timeout)
    for name in properties:
        get(name)
    import_watched_first(lambda: make_source(model_spec, model_args, input_shapes, bn, False),
                         timeout=timeout, debug=debug)
    source = make_source(model_spec, model_args, input_shapes, bn, False)
    command = shlex.join(["bncheck", "scan", *sys.argv[2:]])
    start = time.perf_counter()
    findings = _inspect(source, dict(seed=seed, checkpoint=checkpoint, calibrate=calibrate,
                                     strict_frozen=strict_frozen, onnx=onnx),
                        timeout=timeout, debug=debug)
    report = ScanReport(findings.model, seed, profile)

    def progress(i: int, n: int, group: Any) -> None:
        err_line(f"scan: verifying class {i + 1} of {n}: {group.name} "
                 f"({len(group.layers)} layer(s)) ...")

    try:
        verify_classes(findings, report, properties=list(properties) or None,
                       examples=examples, timeout=timeout, jobs=jobs, on_progress=progress)
    except KeyboardInterrupt:
        report.interrupted = True
        done = [c.group.name for c in report.classes if c.report is not None]
        err(f"interrupted (Ctrl-C) after verifying {len(done)} of {len(report.classes)} "
            f"class(es)" + (f"; partial report written to {json_path}" if json_path else ""))
        if json_path is not None:
            write_json_atomic(json_path, {**report.to_json(), "command": command})
        sys.exit(EXIT_INTERRUPTED)
    report.seconds = time.perf_counter() - start
    console().print(render_tree(report))
    console().print(escape(report.summary()) + f" in {report.seconds:.1f}s")
    if json_path is not None:
        write_json_atomic(json_path, {**report.to_json(), "command": command})
    if not report.ok:
        if not report.classes:
            err("no normalization layer found: nothing was verified")
        sys.exit(EXIT_FAILED)


def _inspect(source: Any, options: dict[str, Any], *, timeout: float, debug: bool) -> Any:
    """:func:`bncheck.scan.engine.inspect_model` (everything that runs the model's code) in a
    watched worker, each call into the model limited to ``timeout`` seconds; in-process with
    ``--debug``. Its errors exit as the command's would (2; 130 on Ctrl-C)."""
    from bncheck.cli._watched import can_watch, run_watched
    from bncheck.scan.engine import inspect_model

    if not can_watch(debug=debug):
        return inspect_model(source, **options)
    fd, name = tempfile.mkstemp(prefix="bncheck-scan-", suffix=".pickle")
    os.close(fd)
    path = Path(name)

    @handles_errors
    def body(debug: bool = False) -> None:
        path.write_bytes(pickle.dumps(inspect_model(source, **options)))

    try:
        code = run_watched(body, timeout=timeout)
        if code:
            sys.exit(code)
        return pickle.loads(path.read_bytes())  # noqa: S301 - written by our own worker
    finally:
        path.unlink(missing_ok=True)


def err_line(text: str) -> None:
    """A progress line on stderr (one per class: a scan may take minutes)."""
    click.echo(text, err=True)


def _styled(verdict: str) -> str:
    return f"[{_STYLE.get(verdict, 'white')}]{verdict}[/]"


def render_tree(report: Any) -> Tree:
    """The report as a tree: each class configuration with its layers, then the model-level
    checks; failures carry their first failing property and the replay command."""
    verdicts = {v.layer.path: v for v in report.verdicts()}
    root = Tree(f"[bold]bncheck scan[/] {escape(report.model)} (seed {report.seed}, profile "
                f"{report.profile})")
    layers = root.add(f"normalization layers: {len(verdicts)} in {len(report.classes)} "
                      f"class configuration(s)")
    for c in report.classes:
        g = c.group
        state = "not verified" if c.error else "passed" if c.ok else "failed"
        summary = c.report.summary() if c.report is not None else c.error or "not run"
        branch = layers.add(
            f"{escape(g.name)} [dim]({escape(g.config.describe())}; dims "
            f"{','.join(map(str, g.dims)) or 'default'}"
            f"{'; frozen' if g.frozen else ''})[/] {_styled(state)} [dim]{escape(summary)}[/]")
        for lay in g.layers:
            v = verdicts[lay.path]
            line = f"{escape(lay.shown)} {_styled(v.verdict)}"
            if v.reason and v.verdict != "passed":
                line += f" [dim]{escape(v.reason)}[/]"
            branch.add(line)
        first = c.first_failure
        if first is not None:
            branch.add(f"[red]first failure[/]: {escape(first.name)}: "
                       f"{escape(_first_line(first.message))}")
            if c.replays.get(first.name):
                branch.add(f"replay: {escape(c.replays[first.name])}")
    checks = root.add("model-level checks")
    for check in report.checks:
        checks.add(f"{escape(check.name)} {_styled(check.status)} "
                   f"[dim]{escape(_first_line(check.message))}[/]")
    return root


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""
