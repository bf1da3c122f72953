"""onnxruntime's ``CUDAExecutionProvider`` (DISABLE_ALL, ENABLE_ALL; TF32 off) and
``TensorrtExecutionProvider``: run where onnxruntime offers them, reported *skipped* with the
reason where it does not.

>>> from bncheck.onnx.runtimes.ort_gpu import OrtGpu
>>> OrtGpu("CUDAExecutionProvider", "DISABLE_ALL").name
'onnxruntime CUDA'
"""

from __future__ import annotations

from typing import Any

from bncheck.engine.compare import Tolerance
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin
from bncheck.onnx.runtimes.ort_cpu import (
    crash_hazard,
    ort_missing_kernel,
    ort_runner,
    ort_session,
)

__all__ = ["OrtGpu"]

_NAMES = {"CUDAExecutionProvider": ("onnxruntime CUDA", "onnxruntime-cuda",
                                    {"use_tf32": "0"}),
          "TensorrtExecutionProvider": ("onnxruntime TensorRT", "onnxruntime-tensorrt",
                                        {"trt_fp16_enable": "False"})}


class OrtGpu(RuntimePlugin):
    """onnxruntime on one GPU execution provider at one graph optimization level."""

    def __init__(self, provider: str, level: str) -> None:
        from bncheck.onnx.runtimes._tolerances import TOLERANCES

        self.provider = provider
        self.name, self.key, self.options = _NAMES[provider]
        self.level = level
        self.tolerance: Tolerance = TOLERANCES[self.key]

    def unavailable(self) -> str | None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider in available:
            return None
        return (f"onnxruntime {ort.__version__} offers no {self.provider} "
                f"(available: {', '.join(available)})")

    def missing_kernel(self, error: Exception) -> str | None:
        return ort_missing_kernel(error)

    def load(self, data: bytes, model: Any) -> Runner:
        hazard = crash_hazard(model)
        if hazard is not None:
            raise RuntimeError(hazard)
        session = ort_session(data, level=self.level, provider=(self.provider, self.options))
        if self.provider not in session.get_providers():
            raise RuntimeError(f"{self.provider} did not start (onnxruntime fell back to "
                               f"{session.get_providers()})")
        return ort_runner(session)
