"""Export the seed's LeNet-BN to ONNX and verify the file across runtimes.

>>> from bncheck.onnx import build_model, export_onnx, verify_against_torch
>>> model = build_model("torch", seed=0)                      # calibrated, in eval mode
>>> data = export_onnx(model, exporter="torchscript")         # bytes of an ONNX model
>>> report = verify_against_torch(data, model, seed=0, batches=(1, 3))
>>> report.ok
True

One module per job: :mod:`~bncheck.onnx.source` (model sources: LeNet-BN, ``FILE.py:factory``,
``package.module:factory``, their inputs and calibration), :mod:`~bncheck.onnx.build` (LeNet-BN,
calibration, checkpoints), :mod:`~bncheck.onnx.export` (exporters), :mod:`~bncheck.onnx.runtimes`
(one plugin per runtime: onnxruntime CPU/CUDA/TensorRT, onnx.reference, OpenVINO; the tolerance
table), :mod:`~bncheck.onnx.graph` (signature, node-to-module attribution, intermediates),
:mod:`~bncheck.onnx.placement` (where each BatchNorm went), :mod:`~bncheck.onnx.bn_nodes`
(BatchNormalization nodes and folds read from the graph alone), :mod:`~bncheck.onnx.localize`
(first diverging module or node, batch-dependent nodes), :mod:`~bncheck.onnx.verify` and
:mod:`~bncheck.onnx.standalone` (the checks against a source or goldens, and against the other
runtimes), :mod:`~bncheck.onnx.manifest`, :mod:`~bncheck.onnx.polygraphy_io` and
:mod:`~bncheck.onnx.gate` (goldens). onnx, onnxruntime, onnxscript, OpenVINO and model packages
are imported inside the functions that need them.
"""

from bncheck.onnx.build import build_model, make_inputs
from bncheck.onnx.export import export_onnx
from bncheck.onnx.source import ModelSource, lenet_source, model_source
from bncheck.onnx.standalone import verify_standalone
from bncheck.onnx.verify import Report, load_onnx, verify_against_golden, verify_against_torch

__all__ = [
    "build_model",
    "make_inputs",
    "ModelSource",
    "lenet_source",
    "model_source",
    "export_onnx",
    "load_onnx",
    "verify_against_torch",
    "verify_against_golden",
    "verify_standalone",
    "Report",
]
