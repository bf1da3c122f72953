"""The manifest written beside an exported ONNX file, and the golden arrays it names.

>>> from bncheck.onnx.manifest import MANIFEST_FORMAT, sha256
>>> MANIFEST_FORMAT
'bncheck-onnx-manifest/1'
>>> sha256(b"")[:12]
'e3b0c44298fc'

A manifest (``OUT.json``) records how the file was made (exporter, opset, BN choice, seed,
checkpoint), the tool and library versions, the file's sha256, its input and output names and
shapes, where each BatchNorm went, the tolerance table and every runtime's errors. Its
``golden`` entry names an ``.npz`` beside it: a deterministic input batch and the eager model's
outputs for it (keyed by the graph's input and output names), plus the BatchNorm buffers under
``state/<key>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bncheck._version import __version__
from bncheck.errors import InvalidArgument
from bncheck.onnx.localize import eager_outputs
from bncheck.onnx.placement import BNLayer
from bncheck.onnx.runtimes import TOLERANCES
from bncheck.onnx.source import ModelSource
from bncheck.onnx.verify import ModelFileError, Report

__all__ = ["MANIFEST_FORMAT", "GOLDEN_BATCH", "sha256", "versions", "make_manifest",
           "manifest_bytes", "read_manifest", "golden_arrays", "npz_bytes", "read_golden",
           "golden_batch", "layers_from_manifest"]

MANIFEST_FORMAT = "bncheck-onnx-manifest/1"

#: Rows in a golden input batch: LeNet-BN's 16 x 784 float32 (50 KB); 4 for any other model
#: (a 224 x 224 RGB batch of 4 is 2.4 MB).
GOLDEN_BATCH, MODEL_GOLDEN_BATCH = 16, 4


def golden_batch(source: ModelSource) -> int:
    """Rows in ``source``'s golden input batch (a fixed batch size when it is exported so)."""
    if not source.dynamic_batch:
        return source.inputs[0].shape[0]
    return GOLDEN_BATCH if source.is_lenet else MODEL_GOLDEN_BATCH


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """bncheck's, Python's and the ONNX toolchain's versions."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"bncheck": __version__, "python": platform.python_version(),
             "torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "openvino"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def make_manifest(*, data: bytes, report: Report, onnx_file: str, golden_file: str | None,
                  source: dict[str, Any], golden_rows: int = GOLDEN_BATCH) -> dict[str, Any]:
    """The manifest for ``data`` (``source``: the model source, seed, checkpoint, exporter,
    opset asked, keep_bn)."""
    return {
        "format": MANIFEST_FORMAT,
        "model": "lenet_bn" if source.get("model", "lenet") == "lenet" else source["model"],
        "source": source,
        "opset": report.opset,
        "versions": versions(),
        "onnx_file": onnx_file,
        "sha256": sha256(data),
        "inputs": report.inputs,
        "outputs": report.outputs,
        "bn_placement": [p.to_json() for p in report.placement],
        "bn_layers": [{"name": b.name, "label": b.label, "previous": b.previous}
                      for b in report.layers],
        "bn_nodes": [n.to_json() for n in report.bn_nodes],
        "golden": None if golden_file is None else {
            "file": golden_file, "batch": golden_rows,
            "inputs": [i["name"] for i in report.inputs],
            "outputs": [o["name"] for o in report.outputs]},
        "tolerances": {k: {"rtol": t.rtol, "atol": t.atol, "reason": t.reason,
                           **({"atol_per_max": t.atol_per_max}
                              if hasattr(t, "atol_per_max") else {})}
                       for k, t in TOLERANCES.items()},
        "structure": report.structure,
        "results": [r.to_json() for r in report.rows],
        "verified": report.ok,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest.

    Raises:
        ModelFileError: missing, not JSON, or not a bncheck manifest.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"no manifest {str(p)!r}")
    try:
        manifest = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"manifest {str(p)!r} is not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{str(p)!r} is not a bncheck manifest (expected format "
                             f"{MANIFEST_FORMAT!r})")
    return manifest


def golden_arrays(model: nn.Module, source: ModelSource, *, seed: int,
                  input_names: list[str], output_names: list[str]) -> dict[str, np.ndarray]:
    """The golden batch, the eager eval outputs for it (no_grad), and the BN buffers."""
    xs = source.make_inputs(golden_batch(source), seed=seed * 1000 + 999)
    ys = eager_outputs(model, xs, "torch.no_grad()")
    arrays = {n: x.numpy() for n, x in zip(input_names, xs, strict=True)}
    arrays.update({n: y.numpy() for n, y in zip(output_names, ys, strict=True)})
    for key, value in model.state_dict().items():
        if ("running_" in key or "moving_" in key) and value.is_floating_point():
            arrays[f"state/{key}"] = value.detach().cpu().numpy()
    return arrays


def layers_from_manifest(manifest: dict[str, Any]) -> list[BNLayer] | None:
    """The BatchNorm layers a manifest records (``None`` for LeNet-BN manifests without)."""
    layers = manifest.get("bn_layers")
    if not isinstance(layers, list):
        return None if manifest.get("model") == "lenet_bn" else []
    return [BNLayer(str(d["name"]), str(d["label"]), d.get("previous")) for d in layers
            if isinstance(d, dict) and "name" in d and "label" in d]


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def read_golden(manifest_path: str | Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the golden ``.npz`` a manifest names (path relative to the manifest).

    Raises:
        ModelFileError: no golden named, the file is missing or not an npz.
    """
    golden = manifest.get("golden")
    if not isinstance(golden, dict) or not isinstance(golden.get("file"), str):
        raise ModelFileError(f"manifest {str(manifest_path)!r} names no golden file")
    p = Path(manifest_path).parent / golden["file"]
    if not p.is_file():
        raise ModelFileError(f"golden {str(p)!r} named in {str(manifest_path)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, corrupt
        raise ModelFileError(f"golden {str(p)!r} is not a readable npz archive "
                             f"({type(e).__name__}: {e}); recreate it") from None


def check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidArgument(f"Expected seed to be an int >= 0, received seed={seed!r}")
