"""``bncheck scan``'s work: build the model, find its normalization layers, verify each class
once, run the model-level checks.

>>> from bncheck.onnx.source import model_source
>>> from bncheck.scan import scan_model
>>> src = model_source("tests/data/models.py:mlp_bn1d", input_shapes=[(2, 16)])
>>> report = scan_model(src, properties=["eval_forward"], examples=3)  # doctest: +SKIP
>>> report.ok  # doctest: +SKIP
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bncheck.errors import BNCheckError, TargetError
from bncheck.infra.workers import DEFAULT_TIMEOUT
from bncheck.scan import model_checks as mc
from bncheck.scan.infer import Group, declarations, group_layers, observe, replay_command
from bncheck.scan.inventory import candidates_by_behaviour, find_norm_layers
from bncheck.scan.report import ClassResult, ScanReport

__all__ = ["scan_model", "inspect_model", "verify_classes", "Findings", "CHECK_BATCH"]

#: Rows per batch for the model-level checks: the per-sample check runs each row alone.
CHECK_BATCH = 4


@dataclass
class Findings:
    """What the model showed (built, dry-run, checked): plain data, so a worker process that
    ran the model's code can hand it back."""

    model: str
    order: list[str]
    groups: list[Group]
    checks: list[mc.Check]


def scan_model(source: Any, *, seed: int = 0, checkpoint: str | Path | None = None,
               calibrate: int | None = None, properties: Sequence[str] | None = None,
               profile: str | None = None, examples: int | None = None,
               timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, strict_frozen: bool = False,
               onnx: bool = False,
               on_progress: Callable[[int, int, Group], None] | None = None) -> ScanReport:
    """Scan the model ``source`` builds (a :class:`~bncheck.onnx.source.ModelSource`):
    :func:`inspect_model` then :func:`verify_classes`.

    Args:
        source: the model and its inputs.
        seed: seeds the weights, the calibration, the inputs and Hypothesis.
        checkpoint: a ``state_dict`` to load instead of calibrating.
        calibrate: training-mode forwards that give the layers statistics (default the
            source's).
        properties: the properties each class runs (default: all; a frozen class runs those
            that hold for a frozen layer).
        profile, examples, timeout, jobs: :func:`bncheck.engine.runner.verify`'s.
        strict_frozen: a frozen-looking layer fails ``frozen_layers`` (default: a note).
        onnx: also export the model and verify the file (``onnx_export``).
        on_progress: ``on_progress(i, n, group)`` before class ``i`` of ``n`` is verified.

    Raises:
        TargetError: the model cannot be built (the factory raised).
        InvalidArgument: a bad argument.
    """
    from bncheck.engine.runner import resolve_run

    profile, seed = resolve_run(profile, examples, seed)
    start = time.perf_counter()
    findings = inspect_model(source, seed=seed, checkpoint=checkpoint, calibrate=calibrate,
                             strict_frozen=strict_frozen, onnx=onnx)
    report = ScanReport(findings.model, seed, profile)
    verify_classes(findings, report, properties=properties, examples=examples,
                   timeout=timeout, jobs=jobs, on_progress=on_progress)
    report.seconds = time.perf_counter() - start
    return report


def inspect_model(source: Any, *, seed: int = 0, checkpoint: str | Path | None = None,
                  calibrate: int | None = None, strict_frozen: bool = False,
                  onnx: bool = False) -> Findings:
    """Build the model, find its normalization layers, group them, run the model-level checks
    (everything that runs the model's own code; ``bncheck scan`` runs it in a watched worker).

    Raises:
        TargetError: the model cannot be built (the factory raised).
    """
    model, calibration_error = _build(source, seed=seed, checkpoint=checkpoint,
                                      calibrate=calibrate)
    inputs = source.make_inputs(CHECK_BATCH, seed=seed)
    maybe = candidates_by_behaviour(model)
    first = find_norm_layers(model)
    seen = observe(model, inputs, paths=[lay.path for lay in first] + maybe,
                   probe=[lay.path for lay in first if lay.found_by != "class"] + maybe)
    layers = find_norm_layers(model, confirmed=[p for p in maybe if seen.mode_dependent.get(p)])
    groups = group_layers(model, layers, seen)
    errors = [e for e in (calibration_error, seen.error) if e is not None]
    checks = _model_checks(model, inputs, groups, errors, strict_frozen=strict_frozen)
    if onnx:
        checks.append(_onnx_check(model, source, seed, layers, errors))
    return Findings(source.label, [lay.path for lay in layers], groups, checks)


def verify_classes(findings: Findings, report: ScanReport, *,
                   properties: Sequence[str] | None = None, examples: int | None = None,
                   timeout: float = DEFAULT_TIMEOUT, jobs: int = 1,
                   on_progress: Callable[[int, int, Group], None] | None = None) -> None:
    """Verify each group's class once, loaded by its spec as ``bncheck verify SPEC`` loads it
    (so the replay command reproduces what the scan saw), filling ``report`` as it goes: on
    Ctrl-C it holds every class finished."""
    from bncheck.engine.runner import check_jobs
    from bncheck.infra.validation import check_timeout

    check_timeout(timeout)
    check_jobs(jobs, timeout)
    report.model, report.order = findings.model, findings.order
    report.checks = findings.checks
    report.classes = [ClassResult(g) for g in findings.groups]
    start = time.perf_counter()
    for i, result in enumerate(report.classes):
        if on_progress is not None:
            on_progress(i, len(report.classes), result.group)
        _verify_class(result, properties=properties, profile=report.profile,
                      examples=examples, seed=report.seed, timeout=timeout, jobs=jobs)
        report.seconds += time.perf_counter() - start
        start = time.perf_counter()


def _build(source: Any, *, seed: int, checkpoint: str | Path | None,
           calibrate: int | None) -> tuple[nn.Module, BaseException | None]:
    """The model in eval mode; a calibration forward that raises is kept, not raised (the
    layers are still found and verified; ``model_forward`` fails with it)."""
    from bncheck.onnx.build import calibrate as run_calibration

    model = source.build(seed=seed, checkpoint=checkpoint, calibrate=0)
    if checkpoint is None and calibrate != 0:
        steps, batch = source.calibration
        try:
            run_calibration(model, seed=seed, steps=steps if calibrate is None else calibrate,
                            batch=batch, make=lambda b, s: source.make_inputs(b, seed=s),
                            label=source.label)
        except TargetError as e:
            return model.eval(), e
    return model.eval(), None


def _model_checks(model: nn.Module, inputs: Any, groups: list[Group],
                  errors: list[BaseException], *, strict_frozen: bool) -> list[mc.Check]:
    layers = [lay for g in groups for lay in g.layers]
    if errors:
        why = "; ".join(str(e) for e in errors)
        checks = [mc.Check("model_forward", "failed", f"the model's forward raised: {why}")]
        skipped = ("eval_reaches_norm_layers", "eval_per_sample", "eval_grad_mode_independence",
                   "frozen_layers", "fusion_matches_eval")
        return checks + [mc.Check(n, "skipped", "the model's forward raised (model_forward)")
                         for n in skipped]
    frozen = [lay.path for g in groups if g.frozen for lay in g.layers]
    checks = [mc.Check("model_forward", "passed", "training-mode and eval forwards ran")]
    runs: list[tuple[str, Callable[[], mc.Check]]] = [
        ("eval_reaches_norm_layers", lambda: mc.eval_reaches_norm_layers(model, inputs, layers)),
        ("eval_per_sample", lambda: mc.eval_per_sample(model, inputs)),
        ("eval_grad_mode_independence", lambda: mc.eval_grad_mode_independence(model, inputs)),
        ("frozen_layers", lambda: mc.frozen_layers(model, inputs, layers, frozen_classes=frozen,
                                                   strict=strict_frozen)),
        ("fusion_matches_eval", lambda: mc.fusion_matches_eval(model, inputs)),
    ]
    for name, run in runs:
        try:
            checks.append(run())
        except TargetError as e:  # the model's code raised inside the check: it fails
            checks.append(mc.Check(name, "failed", str(e)))
    return checks


def _onnx_check(model: nn.Module, source: Any, seed: int, layers: Any,
                errors: list[BaseException]) -> mc.Check:
    """Export (dynamo, optimized) and verify on every runtime; a mismatch names the first
    diverging module, and the normalization layer it is or sits in."""
    from bncheck.onnx.export import export_onnx
    from bncheck.onnx.localize import Localization
    from bncheck.onnx.verify import verify_against_torch

    name = "onnx_export"
    if errors:
        return mc.Check(name, "skipped", "the model's forward raised (model_forward)")
    try:
        data = export_onnx(model, source=source)
        result = verify_against_torch(data, model, source=source, seed=seed)
    except BNCheckError as e:
        return mc.Check(name, "failed", str(e))
    if result.ok:
        return mc.Check(name, "passed", "the export matches the eager model on every runtime")
    paths: list[str] = []
    loc = result.localization
    if isinstance(loc, Localization):
        paths = [lay.path for lay in layers
                 if loc.layer == lay.path or loc.layer.startswith(f"{lay.path}.")]
    return mc.Check(name, "failed", result.failure_message(), paths)


def _verify_class(result: ClassResult, *, properties: Sequence[str] | None,
                  profile: str, examples: int | None, seed: int, timeout: float,
                  jobs: int) -> None:
    """Run the catalogue on the group's class with the declarations its instances show."""
    from bncheck.engine.properties import CATALOGUE
    from bncheck.engine.runner import verify
    from bncheck.engine.target import load_target
    from bncheck.errors import UsageError

    group = result.group
    if group.spec is None:
        result.error = (f"cannot verify {group.cls_name} alone: it is defined inside a "
                        f"function (move it to module level)")
        return
    chosen = list(properties) if properties else None
    if group.frozen:
        chosen = [p.name for p in CATALOGUE if not p.trains and (chosen is None
                                                                 or p.name in chosen)]

    def replay(prop: str, s: int) -> str:
        command = replay_command(group, prop, s, profile=profile, examples=examples)
        result.replays[prop] = command
        return command

    try:
        obj = load_target(group.spec)
        result.report = verify(obj, properties=chosen, profile=profile, examples=examples,
                               seed=seed, replay=replay, timeout=timeout, jobs=jobs,
                               label=group.name, declaration=declarations(group))
    except UsageError as e:
        result.error = f"cannot verify {group.name} alone: {e}"
