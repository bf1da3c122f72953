"""onnxruntime's ``CPUExecutionProvider`` at graph optimization ``DISABLE_ALL`` and ``ENABLE_ALL``.

>>> from bncheck.onnx.runtimes.ort_cpu import OrtCpu
>>> OrtCpu("ENABLE_ALL").key
'onnxruntime-fused'

``DISABLE_ALL`` runs the graph as written; ``ENABLE_ALL`` lets onnxruntime fuse and rewrite it
(Conv + BatchNormalization, Conv + activation, ...), so a difference between the two is the
optimizer's. onnxruntime 1.32 dies with a segmentation fault on a training-mode
BatchNormalization whose optional running-statistics outputs are omitted (recorded in
``tests/integration/test_onnx_runtime_divergences.py``): such a graph is refused here, never run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from bncheck.engine.compare import Tolerance
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin, bn_nodes_in

__all__ = ["OrtCpu", "ort_session", "ort_runner", "crash_hazard", "ort_missing_kernel"]

_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name "
                        r"'([^']*)'")

def ort_session(data: bytes, *, level: str = "DISABLE_ALL",
                provider: str | tuple[str, dict[str, str]] = "CPUExecutionProvider") -> Any:
    """An onnxruntime InferenceSession at graph optimization ``level`` on ``provider``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=[provider])


def ort_runner(session: Any) -> Runner:
    """A runner over an onnxruntime session."""
    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(session.run(None, dict(feeds)))

    return run


def crash_hazard(model: Any) -> str | None:
    """Why onnxruntime would crash on ``model`` instead of raising (None: it would not)."""
    for node in bn_nodes_in(model):
        training = any(a.name == "training_mode" and a.i == 1 for a in node.attribute)
        outputs = list(node.output) + [""] * (3 - len(node.output))
        if training and len(node.output) > 1 and not all(outputs[1:3]):
            return (f"BatchNormalization node {node.name or node.output[0]!r} has "
                    f"training_mode=1 with its running-statistics outputs omitted: "
                    f"onnxruntime 1.32 crashes (segmentation fault) on it, so it was not run")
    return None


def ort_missing_kernel(error: Exception) -> str | None:
    """onnxruntime's NOT_IMPLEMENTED for an operator version it has no kernel for (1.32 has no
    BatchNormalization-6, so it cannot run an opset-6 BatchNorm graph): one line that says so.
    """
    found = _NO_KERNEL.search(str(error))
    if found is None:
        return None
    import onnxruntime as ort

    op, version, node = found.groups()
    return (f"onnxruntime {ort.__version__} has no kernel for {op}-{version} (node {node!r}): "
            f"it cannot run this opset's {op}")


class OrtCpu(RuntimePlugin):
    """onnxruntime CPU at one graph optimization level."""

    name = "onnxruntime CPU"

    def __init__(self, level: str) -> None:
        from bncheck.onnx.runtimes._tolerances import TOLERANCES

        self.level = level
        self.key = "onnxruntime" if level == "DISABLE_ALL" else "onnxruntime-fused"
        self.tolerance: Tolerance = TOLERANCES[self.key]

    def missing_kernel(self, error: Exception) -> str | None:
        return ort_missing_kernel(error)

    def load(self, data: bytes, model: Any) -> Runner:
        hazard = crash_hazard(model)
        if hazard is not None:
            raise RuntimeError(hazard)
        return ort_runner(ort_session(data, level=self.level))
