"""Export the seed's LeNet-BN to ONNX and verify the file across runtimes.

>>> from bncheck.onnx import build_model, export_onnx, verify_against_torch
>>> model = build_model("torch", seed=0)                      # calibrated, in eval mode
>>> data = export_onnx(model, exporter="torchscript")         # bytes of an ONNX model
>>> report = verify_against_torch(data, model, seed=0, batches=(1, 3))
>>> report.ok
True

One module per job: :mod:`~bncheck.onnx.build` (model, calibration, inputs),
:mod:`~bncheck.onnx.export` (exporters, atomic writes), :mod:`~bncheck.onnx.runtimes`
(onnxruntime and onnx.reference sessions, the tolerance table), :mod:`~bncheck.onnx.placement`
(where each BatchNorm went in the graph), :mod:`~bncheck.onnx.localize` (first diverging layer),
:mod:`~bncheck.onnx.verify` (the checks and their report), :mod:`~bncheck.onnx.manifest` and
:mod:`~bncheck.onnx.gate` (goldens in ``exports/``). onnx, onnxruntime and onnxscript are imported
inside the functions that need them.
"""

from bncheck.onnx.build import build_model, make_inputs
from bncheck.onnx.export import export_onnx
from bncheck.onnx.verify import Report, load_onnx, verify_against_golden, verify_against_torch

__all__ = [
    "build_model",
    "make_inputs",
    "export_onnx",
    "load_onnx",
    "verify_against_torch",
    "verify_against_golden",
    "Report",
]
