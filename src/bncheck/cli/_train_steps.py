"""The loop around ``bncheck train --bn FILE.py:Name``: verify the layer before training, export
the trained model after, each through the code its own command runs.

* :func:`verify_step`: :func:`bncheck.engine.runner.verify` on the layer as ``bncheck verify
  FILE.py:Name`` runs it (profile ``ci``, ``--timeout``, ``--jobs``' default); a failing
  property stops the run with exit 1 before any training, naming the properties and the command
  that shows the whole report. A layer that hangs fails ``preflight`` within the timeout.
* :func:`export_step`: ``bncheck export DIR/lenet.onnx --checkpoint CKPT --bn FILE.py:Name``'s
  work (:func:`bncheck.cli._export.export_verified`), in a watched worker whose calls into the
  layer may take ``--timeout`` seconds each; its exit code.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bncheck.cli._common import EXIT_FAILED, JOBS_ENV, handles_errors, interrupted, resolve_jobs

if TYPE_CHECKING:
    from bncheck.cli._train import _Screen
    from bncheck.engine.declaration import Declaration
    from bncheck.training import RunOutputs

#: The Hypothesis profile of the verify step (``bncheck verify``'s default).
PROFILE = "ci"
#: Failed properties whose first line the verify step shows (the rest are named).
_SHOWN = 3
#: The file the export step writes in the run's folder (with its manifest and goldens).
ONNX_NAME = "lenet.onnx"


def _timeout_args(timeout: float) -> list[str]:
    from bncheck.infra.workers import DEFAULT_TIMEOUT

    return [] if timeout == DEFAULT_TIMEOUT else ["--timeout", f"{timeout:g}"]


def verify_command(spec: str, *, declaration: Declaration, timeout: float) -> str:
    """The ``bncheck verify`` command whose report the verify step's is."""
    from bncheck.engine.runner import resolve_profile

    profile = [] if resolve_profile(None) == PROFILE else ["--profile", PROFILE]
    return shlex.join(["bncheck", "verify", spec, *declaration.cli_args(),
                       *_timeout_args(timeout), *profile])


def verify_step(screen: _Screen, spec: str, *, declaration: Declaration,
                timeout: float) -> dict[str, Any]:
    """Verify the layer ``spec`` names; its record for the metrics JSON when every property
    passes, else exit 1 (nothing written). Progress lines on a terminal only."""
    from bncheck.engine.runner import PropertyResult, Status, verify
    from bncheck.engine.target import load_target

    jobs = resolve_jobs(os.environ.get(JOBS_ENV), JOBS_ENV)
    command = verify_command(spec, declaration=declaration, timeout=timeout)
    screen.line(f"verify: {command} (profile {PROFILE}, before any training)")

    def finished(r: PropertyResult) -> None:
        if screen.out.is_terminal:
            screen.line(f"  {r.status:7} {r.name} ({r.seconds:.1f}s)")

    start = time.perf_counter()
    try:
        report = verify(load_target(spec), label=spec, declaration=declaration,
                        profile=PROFILE, timeout=timeout, jobs=jobs, on_result=finished)
    except KeyboardInterrupt:
        interrupted(f"while verifying {spec}; nothing written (training had not started)")
    wall = time.perf_counter() - start
    record = {"status": "passed" if report.ok else "failed", "summary": report.summary(),
              "failed": [r.name for r in report.failed], "profile": report.profile,
              "seed": report.seed, "convention": report.convention,
              "declaration": report.declaration, "timeout": timeout,
              "seconds": round(wall, 3), "command": command}
    if report.ok:
        skipped = report.count(Status.SKIPPED)
        passed = report.count(Status.PASSED)
        screen.line(f"verify: {passed} passed" + (f", {skipped} skipped" if skipped else "")
                    + f" in {wall:.1f}s")
        return record
    names = [r.name for r in report.failed]
    screen.line(f"verify: {len(names)} failed: {', '.join(names)} ({report.summary()})",
                style="red")
    for r in report.failed[:_SHOWN]:
        first = r.message.splitlines()[0] if r.message else r.status
        screen.line(f"  {r.name}: {first}", style="red")
    if len(names) > _SHOWN:
        screen.line(f"  ... and {len(names) - _SHOWN} more", style="red")
    screen.error(f"{spec} failed verification ({', '.join(names)}), so it was not trained and "
                 f"nothing was written. The full report: {command} (--no-verify trains it "
                 f"anyway)")
    sys.exit(EXIT_FAILED)


def export_command(onnx: Path, checkpoint: Path, spec: str, *, seed: int,
                   timeout: float) -> str:
    """The ``bncheck export`` command the export step does the work of."""
    seeded = ["--seed", str(seed)] if seed else []
    return shlex.join(["bncheck", "export", str(onnx), "--checkpoint", str(checkpoint), "--bn",
                       spec, *seeded, *_timeout_args(timeout)])


def export_step(screen: _Screen, spec: str, outputs: RunOutputs, *, seed: int, timeout: float,
                debug: bool) -> tuple[int, dict[str, Any]]:
    """Export the trained model to ``DIR/lenet.onnx`` as ``bncheck export --checkpoint
    --bn spec`` does, and check it on every runtime; its exit code and record."""
    from bncheck.cli._export import export_verified, make_source, plan_export
    from bncheck.cli._watched import can_watch, run_watched

    onnx = outputs.directory / ONNX_NAME
    command = export_command(onnx, outputs.checkpoint, spec, seed=seed, timeout=timeout)
    screen.line(f"export: {command}")
    unwritten = f"{onnx} not written; the training's files are kept"

    @handles_errors
    def body(debug: bool) -> None:
        paths = plan_export(onnx, name=f"--out (its {ONNX_NAME})")
        source = make_source(None, (), (), spec, False)
        export_verified(paths, source, seed=seed, checkpoint=outputs.checkpoint,
                        calibrate=None, unwritten=unwritten)

    start = time.perf_counter()
    if can_watch(debug=debug):
        code = run_watched(lambda: body(debug=False), timeout=timeout)
    else:  # --debug: in-process, errors as tracebacks
        try:
            body(debug=debug)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    files = [str(onnx.with_suffix(s)) for s in (".onnx", ".json", ".npz")]
    status = {0: "verified", 130: "interrupted"}.get(code, "failed")
    return code, {"status": status, "exit_code": code, "command": command,
                  "seconds": round(time.perf_counter() - start, 3),
                  "files": files if code == 0 else []}
