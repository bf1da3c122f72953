"""OpenVINO's CPU plugin, at ``INFERENCE_PRECISION_HINT=f32`` and at its default precision.

>>> from bncheck.onnx.runtimes.openvino import OpenVino
>>> OpenVino("f32").key, OpenVino("default").key
('openvino', 'openvino-default')

The two are separate rows with their own tolerances. The CPU plugin's default precision is
bfloat16 on CPUs with AVX-512 BF16 or AMX (measured with openvino 2026.4.1: a small BN CNN
differs from onnxruntime by 5e-4 at the default and by 1.5e-8 at f32), and users deploy with the
default: the f32 row checks the graph, the default row what users get. ``openvino`` is an
optional extra (``pip install 'bncheck[models]'``); without it both rows are *skipped*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bncheck.compare import Tolerance
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin

__all__ = ["OpenVino", "default_precision"]


def default_precision() -> str:
    """The CPU plugin's default ``INFERENCE_PRECISION_HINT`` here (``bf16``, ``f32``, ...)."""
    import openvino as ov

    return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name())


class OpenVino(RuntimePlugin):
    """OpenVINO CPU at ``precision`` ``"f32"`` or ``"default"``."""

    name = "OpenVINO CPU"

    def __init__(self, precision: str) -> None:
        from bncheck.onnx.runtimes._tolerances import TOLERANCES

        self.precision = precision
        self.level = precision
        self.key = "openvino" if precision == "f32" else "openvino-default"
        self.tolerance: Tolerance = TOLERANCES[self.key]

    def unavailable(self) -> str | None:
        try:
            import openvino as ov
        except ImportError:
            return "openvino is not installed (pip install 'bncheck[models]')"
        if "CPU" not in ov.Core().available_devices:
            return f"OpenVINO {ov.__version__} has no CPU device"
        if self.precision == "default":
            self.level = f"default {default_precision()}"
        return None

    def load(self, data: bytes, model: Any) -> Runner:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"} if self.precision == "f32" else {}
        compiled = core.compile_model(core.read_model(data), "CPU", config)
        request = compiled.create_infer_request()
        names = [o.get_any_name() for o in compiled.outputs]

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            result = request.infer(dict(feeds))
            return [np.array(result[compiled.output(n)]) for n in names]

        return run

