"""The runtimes an ONNX file is verified on: one plugin per runtime, one module per plugin.

>>> from bncheck.onnx.runtimes import PLUGINS, TOLERANCES
>>> [p.name + " " + p.level for p in PLUGINS][:2]
['onnxruntime CPU DISABLE_ALL', 'onnxruntime CPU ENABLE_ALL']
>>> TOLERANCES["openvino"].rtol
0.0001

* :mod:`~bncheck.onnx.runtimes.ort_cpu`: onnxruntime CPU at ``DISABLE_ALL`` and ``ENABLE_ALL``;
* :mod:`~bncheck.onnx.runtimes.ort_gpu`: onnxruntime CUDA (both levels) and TensorRT;
* :mod:`~bncheck.onnx.runtimes.reference`: ``onnx.reference``;
* :mod:`~bncheck.onnx.runtimes.openvino`: OpenVINO CPU at f32 and at its default precision.

Each plugin keeps the contract of :class:`~bncheck.onnx.runtimes._base.RuntimePlugin`; the
tolerances live in one table, :data:`TOLERANCES`. Every runtime package is imported inside the
plugin that needs it.
"""

from __future__ import annotations

from typing import Any

from bncheck.onnx.runtimes._base import Runner, Runtime, RuntimePlugin, first_line
from bncheck.onnx.runtimes._tolerances import TOLERANCES
from bncheck.onnx.runtimes.openvino import OpenVino
from bncheck.onnx.runtimes.ort_cpu import OrtCpu, ort_session
from bncheck.onnx.runtimes.ort_gpu import OrtGpu
from bncheck.onnx.runtimes.reference import Reference, onnx_opset

__all__ = ["TOLERANCES", "PLUGINS", "Runner", "Runtime", "RuntimePlugin", "runtimes",
           "ort_session", "onnx_opset", "first_line"]

#: Every runtime, in report order.
PLUGINS: tuple[RuntimePlugin, ...] = (
    OrtCpu("DISABLE_ALL"), OrtCpu("ENABLE_ALL"),
    OrtGpu("CUDAExecutionProvider", "DISABLE_ALL"), OrtGpu("CUDAExecutionProvider", "ENABLE_ALL"),
    OrtGpu("TensorrtExecutionProvider", "ENABLE_ALL"),
    Reference(),
    OpenVino("f32"), OpenVino("default"),
)


def runtimes(data: bytes, model: Any) -> list[Runtime]:
    """Every runtime for the ONNX bytes ``data`` (``model`` is the parsed ModelProto)."""
    return [plugin.runtime(data, model) for plugin in PLUGINS]
