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

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from bncheck.engine.compare import Tolerance
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin

__all__ = ["OpenVino", "default_precision"]


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Restore this thread's alternate signal stack after the block.

    OpenVINO's CPU plugin installs an alternate signal stack in the calling thread and frees it
    with the compiled model; Python runs its signal handlers on that stack, so the next Ctrl-C
    after `bncheck check` or `export` crashed with SIGSEGV instead of exiting 130 (measured with
    openvino 2026.4.1; tests/unit/test_onnx_units.py).
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    class _Stack(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                    ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)
    before = _Stack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


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
        with _signal_stack_kept():
            compiled = core.compile_model(core.read_model(data), "CPU", config)
            request = compiled.create_infer_request()
        names = [o.get_any_name() for o in compiled.outputs]

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            with _signal_stack_kept():
                result = request.infer(dict(feeds))
            return [np.array(result[compiled.output(n)]) for n in names]

        return run

