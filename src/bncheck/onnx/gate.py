"""The regression gate: re-create the exports from the code and compare with ``exports/``.

>>> from bncheck.onnx.gate import VARIANTS
>>> [v.name for v in VARIANTS][3:]
['lenet_torch.keep-bn', 'monai_resnet18_2d']

LeNet-BN, for each BatchNorm (``scratch``, ``torch``; seed 0), against
``exports/lenet_<bn>.npz``: the eager model's eval outputs on the golden batch and its BatchNorm
buffers (a change in the reference BatchNorm, the models or the calibration); and for each graph
(optimized, ``--keep-bn``; dynamo exporter, its default opset): every runtime's outputs on the
golden batch (batch 1, 5 and 16), batch independence, and the manifest's structure (opset,
input/output names and shapes, where each BN went).

One model nobody here wrote, MONAI's ``resnet18`` (2D, 3 channels, 32 x 32, random init,
calibrated; TorchScript exporter, optimized): its golden inputs are rebuilt from the code, not
committed (the repository stays small), and its manifest ``exports/monai_resnet18_2d.json``
holds the structure and a fingerprint: the eager outputs on 2 golden rows. The gate verifies a
fresh export against the eager model on every runtime, compares the fingerprint and the
structure. Without MONAI installed the variant is reported skipped.

Numbers are compared with the tolerances of :data:`~bncheck.onnx.runtimes.TOLERANCES`, never
bytes: the ONNX file's sha256 and the library versions are recorded but not compared, since
they change with onnx/onnxscript/torch releases without any change in behaviour.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bncheck.engine.compare import compare, max_errors
from bncheck.errors import InvalidArgument, VerificationFailed
from bncheck.onnx.export import export_onnx, write_atomic
from bncheck.onnx.localize import eager_outputs
from bncheck.onnx.manifest import (
    golden_arrays,
    golden_batch,
    layers_from_manifest,
    make_manifest,
    manifest_bytes,
    npz_bytes,
    read_golden,
    read_manifest,
)
from bncheck.onnx.runtimes import TOLERANCES
from bncheck.onnx.source import ModelSource, lenet_source, model_source
from bncheck.onnx.verify import Report, Row, verify_against_golden, verify_against_torch

__all__ = ["Variant", "VARIANTS", "GateResult", "run_gate", "STRUCTURE_KEYS"]

#: Manifest entries the gate requires to be unchanged.
STRUCTURE_KEYS = ("opset", "inputs", "outputs", "bn_placement")
GATE_SEED = 0
#: Golden rows whose eager outputs a fingerprint manifest keeps.
FINGERPRINT_ROWS = 2


def _monai_resnet18() -> ModelSource:
    return model_source("monai.networks.nets:resnet18",
                        model_args={"spatial_dims": 2, "n_input_channels": 3,
                                    "num_classes": 10},
                        input_shapes=[(2, 3, 32, 32)])


@dataclass(frozen=True)
class Variant:
    """One export the gate re-creates: its source, graph kind, and where its golden lives."""

    name: str
    source: Callable[[], ModelSource] = field(repr=False, compare=False)
    keep_bn: bool = False
    golden: str | None = None  # the npz (LeNet-BN); None: a fingerprint in the manifest
    exporter: str = "dynamo"
    requires: str | None = None  # an optional package the source needs

    @property
    def group(self) -> str:
        return self.name.split(".")[0]


VARIANTS: tuple[Variant, ...] = (
    *(Variant(f"lenet_{bn}" + (".keep-bn" if keep else ""),
              lambda bn=bn: lenet_source(bn), keep, f"lenet_{bn}.npz")  # type: ignore[misc]
      for bn in ("scratch", "torch") for keep in (False, True)),
    Variant("monai_resnet18_2d", _monai_resnet18, exporter="torchscript", requires="monai"),
)


@dataclass
class GateResult:
    """Rows of (variant, row), the drift reports, variants skipped, and the files written by
    ``--update``."""

    rows: list[tuple[str, Row]] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No drift, and at least one output compared (:func:`bncheck.engine.evidence.verdict`);
        ``--update`` (which compares nothing) is judged by what it wrote."""
        return self.verdict().ok

    def verdict(self) -> Any:
        from bncheck.engine.evidence import verdict

        compared = sum(row.verdict == "ok" for _, row in self.rows) or len(self.written)
        return verdict(passed=compared, failed=len(self.drift),
                       skipped="; ".join(self.skipped))


def _compare_eager(result: GateResult, group: str, items: list[tuple[str, Any, np.ndarray]],
                   rows: int, what: str) -> None:
    tol = TOLERANCES["golden"]
    worst, bad = (0.0, 0.0), False
    for name, actual, expected in items:
        worst = max(worst, max_errors(np.asarray(actual), expected))
        m = compare(actual, expected, tolerance=tol, check_dtype=False,
                    name=f"{group}: eager {name} vs golden")
        if m is not None:
            bad = True
            result.drift.append(str(m))
    result.rows.append((group, Row("eager vs golden", "torch CPU", "eval, no_grad", rows,
                                   worst[0], worst[1], tol, "FAIL" if bad else "ok", what)))


def _lenet_eager(result: GateResult, group: str, model: torch.nn.Module, source: ModelSource,
                 golden: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(golden["input"])
    y = eager_outputs(model, x)[0].numpy()
    items: list[tuple[str, Any, np.ndarray]] = [("logits", y, golden["logits"])]
    state = model.state_dict()
    for key in sorted(k for k in golden if k.startswith("state/")):
        now = state.get(key.removeprefix("state/"))
        items.append((key, np.full_like(golden[key], np.nan) if now is None
                      else now.detach().numpy(), golden[key]))
    _compare_eager(result, group, items, len(x), f"logits and {len(items) - 1} BN buffers")


def _fingerprint(model: torch.nn.Module, source: ModelSource) -> list[list[float]]:
    xs = source.make_inputs(golden_batch(source), seed=GATE_SEED * 1000 + 999)
    y = eager_outputs(model, xs)[0][:FINGERPRINT_ROWS]
    return [[float(v) for v in row.flatten()] for row in y]


def _compare_structure(result: GateResult, variant: Variant, manifest: dict[str, Any],
                       golden_manifest: dict[str, Any]) -> None:
    for key in STRUCTURE_KEYS:
        now, then = manifest.get(key), golden_manifest.get(key)
        if key == "bn_placement":
            # Manifests before named modules stored LeNet-BN's layer as an int.
            now = [{"layer": str(p["layer"]), "kind": p["kind"], "detail": p["detail"]}
                   for p in now or []]
            then = [{"layer": str(p["layer"]), "kind": p["kind"], "detail": p["detail"]}
                    for p in then or []]
        if now != then:
            result.drift.append(f"{variant.name}: manifest {key!r} changed\n  golden: {then}\n"
                                f"  now:    {now}")


def _source_json(variant: Variant, source: ModelSource) -> dict[str, Any]:
    return {**source.to_json(), "seed": GATE_SEED, "checkpoint": None,
            "exporter": variant.exporter, "opset_requested": None, "keep_bn": variant.keep_bn}


def run_gate(exports: str | Path = "exports", *, update: bool = False,
             only: Sequence[str] = (),
             progress: Callable[[str], None] | None = None) -> GateResult:
    """Compare fresh exports with the goldens in ``exports`` (or rewrite them with ``update``).

    Args:
        exports: the folder of goldens.
        update: rewrite the goldens instead of comparing.
        only: the variants to run (names of :data:`VARIANTS`; default all).
        progress: called with each variant's name as it starts.

    Raises:
        InvalidArgument: ``exports`` is not a folder, an unknown name in ``only``, or a golden
            is missing (without update).
        VerificationFailed: with ``update``, a fresh export fails verification against the
            eager model (goldens are never rewritten from a broken export).
    """
    folder = Path(exports)
    if not folder.is_dir():
        raise InvalidArgument(f"Expected --exports to be a folder with the goldens, received "
                              f"exports={str(folder)!r} (run from the repository root)")
    names = [v.name for v in VARIANTS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise InvalidArgument(f"Expected --variant to be one of {names}, received "
                              f"variant={unknown[0]!r}")
    result = GateResult()
    models: dict[str, tuple[ModelSource, torch.nn.Module]] = {}
    for variant in VARIANTS:
        if only and variant.name not in only:
            continue
        if variant.requires and importlib.util.find_spec(variant.requires) is None:
            result.skipped.append(f"{variant.name}: {variant.requires} is not installed "
                                  f"(pip install 'bncheck[models]')")
            continue
        if progress:
            progress(variant.name)
        manifest_path = folder / f"{variant.name}.json"
        if not update and not manifest_path.is_file():
            raise InvalidArgument(f"no golden manifest {str(manifest_path)!r} for gate variant "
                                  f"{variant.name!r}: run from the repository root, or create "
                                  f"the goldens with `bncheck gate --update` (and commit them)")
        if variant.group not in models:
            source = variant.source()
            models[variant.group] = (source, source.build(seed=GATE_SEED))
        source, model = models[variant.group]
        data = export_onnx(model, source=source, exporter=variant.exporter,
                           keep_bn=variant.keep_bn)
        if update:
            _update(result, folder, variant, source, model, data)
            continue
        golden_manifest = read_manifest(manifest_path)
        if variant.golden is not None:
            golden = read_golden(manifest_path, golden_manifest)
            if not variant.keep_bn:
                _lenet_eager(result, variant.group, model, source, golden)
            report = verify_against_golden(data, golden, seed=GATE_SEED,
                                           layers=layers_from_manifest(golden_manifest))
        else:
            expected = np.asarray(golden_manifest.get("fingerprint", []), dtype=np.float32)
            now = np.asarray(_fingerprint(model, source), dtype=np.float32)
            _compare_eager(result, variant.group, [("outputs", now, expected)], len(expected),
                           f"outputs of {len(expected)} golden rows (rebuilt from the code)")
            report = verify_against_torch(data, model, source=source, seed=GATE_SEED)
        _collect(result, variant, report)
        manifest = make_manifest(data=data, report=report, onnx_file=f"{variant.name}.onnx",
                                 golden_file=variant.golden,
                                 source=_source_json(variant, source))
        _compare_structure(result, variant, manifest, golden_manifest)
    return result


def _collect(result: GateResult, variant: Variant, report: Report) -> None:
    for row in report.rows:
        result.rows.append((variant.name, row))
    result.drift += [f"{variant.name}: {f}" for f in report.failures]


def _update(result: GateResult, folder: Path, variant: Variant, source: ModelSource,
            model: torch.nn.Module, data: bytes) -> None:
    report = verify_against_torch(data, model, source=source, seed=GATE_SEED)
    if not report.ok:
        raise VerificationFailed(f"{variant.name}: the fresh export fails verification; "
                                 f"goldens left as they were\n{report.failure_message()}")
    _collect(result, variant, report)
    manifest = make_manifest(data=data, report=report, onnx_file=f"{variant.name}.onnx",
                             golden_file=variant.golden, source=_source_json(variant, source),
                             golden_rows=golden_batch(source))
    files = {folder / f"{variant.name}.json": b""}
    if variant.golden is None:
        manifest["golden"] = None
        manifest["fingerprint"] = _fingerprint(model, source)
    elif not variant.keep_bn:
        golden = golden_arrays(model, source, seed=GATE_SEED,
                               input_names=[i["name"] for i in report.inputs],
                               output_names=[o["name"] for o in report.outputs])
        files[folder / variant.golden] = npz_bytes(golden)
    files[folder / f"{variant.name}.json"] = manifest_bytes(manifest)
    write_atomic(files)
    result.written += list(files)
