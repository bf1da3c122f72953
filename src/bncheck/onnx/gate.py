"""The regression gate: re-create the exports from the code and compare with ``exports/``.

>>> from bncheck.onnx.gate import VARIANTS
>>> [v.name for v in VARIANTS]
['lenet_scratch', 'lenet_scratch.keep-bn', 'lenet_torch', 'lenet_torch.keep-bn']

For each BatchNorm (``scratch``, ``torch``) the gate builds and calibrates LeNet-BN (seed 0) and
compares, against ``exports/lenet_<bn>.npz``:

* the eager model's eval outputs on the golden batch, and its BatchNorm buffers
  (catches a change in the reference BatchNorm, the models or the calibration);

and for each graph (optimized, ``--keep-bn``; dynamo exporter, its default opset) it exports
the model and checks, against ``exports/<variant>.json`` and the npz:

* every runtime's outputs on the golden batch (batch 1, 5 and 16) and batch independence;
* the manifest's structure: opset, input/output names and shapes, where each BN went.

Numbers are compared with the tolerances of :data:`~bncheck.onnx.runtimes.TOLERANCES`, never
bytes: the ONNX file's sha256 and the library versions are recorded but not compared, since
they change with onnx/onnxscript/torch releases without any change in behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bncheck.compare import compare, max_errors
from bncheck.errors import InvalidArgument, VerificationFailed
from bncheck.onnx.build import build_model
from bncheck.onnx.export import INPUT_NAME, OUTPUT_NAME, export_onnx, write_atomic
from bncheck.onnx.localize import eager_outputs
from bncheck.onnx.manifest import (
    golden_arrays,
    make_manifest,
    manifest_bytes,
    npz_bytes,
    read_golden,
    read_manifest,
)
from bncheck.onnx.runtimes import TOLERANCES
from bncheck.onnx.verify import Report, Row, verify_against_golden, verify_against_torch

__all__ = ["Variant", "VARIANTS", "GateResult", "run_gate", "STRUCTURE_KEYS"]

#: Manifest entries the gate requires to be unchanged.
STRUCTURE_KEYS = ("opset", "inputs", "outputs", "bn_placement")
GATE_SEED = 0


@dataclass(frozen=True)
class Variant:
    bn: str
    keep_bn: bool

    @property
    def name(self) -> str:
        return f"lenet_{self.bn}" + (".keep-bn" if self.keep_bn else "")

    @property
    def golden(self) -> str:
        return f"lenet_{self.bn}.npz"


VARIANTS = tuple(Variant(bn, keep) for bn in ("scratch", "torch") for keep in (False, True))


@dataclass
class GateResult:
    """Rows of (variant, check, runtime, batch, max abs, max rel, tolerance, verdict), the
    drift reports, and the files written by ``--update``."""

    rows: list[tuple[str, Row]] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


def _errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    return max_errors(np.asarray(actual), np.asarray(expected))


def _compare_eager(result: GateResult, bn: str, model: torch.nn.Module,
                   golden: dict[str, np.ndarray]) -> None:
    tol = TOLERANCES["golden"]
    _, y = eager_outputs(model, torch.from_numpy(golden[INPUT_NAME]), "torch.no_grad()")
    items = [(OUTPUT_NAME, y.numpy(), golden[OUTPUT_NAME])]
    state = model.state_dict()
    for key in sorted(k for k in golden if k.startswith("state/")):
        now = state.get(key.removeprefix("state/"))
        items.append((key, np.full_like(golden[key], np.nan) if now is None
                      else now.detach().numpy(), golden[key]))
    worst, bad = (0.0, 0.0), False
    for name, actual, expected in items:
        worst = max(worst, _errors(actual, expected))
        m = compare(actual, expected, tolerance=tol, check_dtype=False,
                    name=f"lenet_{bn}: eager {name} vs golden")
        if m is not None:
            bad = True
            result.drift.append(str(m))
    result.rows.append((f"lenet_{bn}", Row("eager vs golden", "torch CPU", "eval, no_grad",
                                           len(golden[INPUT_NAME]), worst[0], worst[1], tol,
                                           "FAIL" if bad else "ok",
                                           f"{OUTPUT_NAME} and {len(items) - 1} BN buffers")))


def _compare_structure(result: GateResult, variant: Variant, manifest: dict[str, Any],
                       golden_manifest: dict[str, Any]) -> None:
    for key in STRUCTURE_KEYS:
        now, then = manifest.get(key), golden_manifest.get(key)
        if key == "bn_placement":
            now = [{"layer": p["layer"], "kind": p["kind"], "detail": p["detail"]}
                   for p in now or []]
            then = [{"layer": p["layer"], "kind": p["kind"], "detail": p["detail"]}
                    for p in then or []]
        if now != then:
            result.drift.append(f"{variant.name}: manifest {key!r} changed\n  golden: {then}\n"
                                f"  now:    {now}")


def run_gate(exports: str | Path = "exports", *, update: bool = False,
             progress: Callable[[str], None] | None = None) -> GateResult:
    """Compare fresh exports with the goldens in ``exports`` (or rewrite them with ``update``).

    Raises:
        InvalidArgument: ``exports`` is not a folder, or a golden is missing (without update).
        VerificationFailed: with ``update``, a fresh export fails verification against the
            eager model (goldens are never rewritten from a broken export).
    """
    folder = Path(exports)
    if not folder.is_dir():
        raise InvalidArgument(f"Expected --exports to be a folder with the goldens, received "
                              f"exports={str(folder)!r} (run from the repository root)")
    result = GateResult()
    models: dict[str, torch.nn.Module] = {}
    for variant in VARIANTS:
        if progress:
            progress(variant.name)
        if variant.bn not in models:
            models[variant.bn] = build_model(variant.bn, seed=GATE_SEED)
        model = models[variant.bn]
        data = export_onnx(model, keep_bn=variant.keep_bn)
        source = {"bn": variant.bn, "seed": GATE_SEED, "checkpoint": None,
                  "exporter": "dynamo", "opset_requested": None, "keep_bn": variant.keep_bn}
        if update:
            _update(result, folder, variant, model, data, source)
            continue
        manifest_path = folder / f"{variant.name}.json"
        golden_manifest = read_manifest(manifest_path)
        golden = read_golden(manifest_path, golden_manifest)
        if not variant.keep_bn:
            _compare_eager(result, variant.bn, model, golden)
        report = verify_against_golden(data, golden, seed=GATE_SEED)
        _collect(result, variant, report)
        manifest = make_manifest(data=data, report=report, onnx_file=f"{variant.name}.onnx",
                                 golden_file=variant.golden, source=source)
        _compare_structure(result, variant, manifest, golden_manifest)
    return result


def _collect(result: GateResult, variant: Variant, report: Report) -> None:
    for row in report.rows:
        result.rows.append((variant.name, row))
    result.drift += [f"{variant.name}: {f}" for f in report.failures]


def _update(result: GateResult, folder: Path, variant: Variant, model: torch.nn.Module,
            data: bytes, source: dict[str, Any]) -> None:
    report = verify_against_torch(data, model, seed=GATE_SEED)
    if not report.ok:
        raise VerificationFailed(f"{variant.name}: the fresh export fails verification; "
                                 f"goldens left as they were\n{report.failure_message()}")
    _collect(result, variant, report)
    golden = golden_arrays(model, seed=GATE_SEED, input_name=INPUT_NAME,
                           output_name=OUTPUT_NAME)
    manifest = make_manifest(data=data, report=report, onnx_file=f"{variant.name}.onnx",
                             golden_file=variant.golden, source=source)
    files = {folder / f"{variant.name}.json": manifest_bytes(manifest)}
    if not variant.keep_bn:
        files[folder / variant.golden] = npz_bytes(golden)
    write_atomic(files)
    result.written += list(files)
