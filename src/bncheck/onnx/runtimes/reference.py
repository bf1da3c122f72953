"""``onnx.reference``'s ``ReferenceEvaluator``: numpy, one operator per file, slow and plain.

>>> from bncheck.onnx.runtimes.reference import Reference
>>> Reference().key
'reference'

It is *not applicable* to BatchNormalization nodes below opset 14: its BatchNormalization-9
blends batch statistics into the running ones even in inference (opsets 9-13), and its
BatchNormalization-6 runs training mode when ``is_test`` is absent (opsets 7-8) and then fails
on its own tuple result (both recorded in ``tests/integration/test_onnx_runtime_divergences.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bncheck.compare import Tolerance
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin, bn_nodes_in

__all__ = ["Reference", "onnx_opset"]


def onnx_opset(model: Any) -> int:
    """The default-domain opset a ModelProto imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


class Reference(RuntimePlugin):
    """onnx.reference.ReferenceEvaluator."""

    name = "onnx.reference"
    key = "reference"

    def __init__(self) -> None:
        from bncheck.onnx.runtimes._tolerances import TOLERANCES

        self.tolerance: Tolerance = TOLERANCES[self.key]

    def not_applicable(self, model: Any) -> str | None:
        opset = onnx_opset(model)
        if not bn_nodes_in(model):
            return None
        if 9 <= opset <= 13:
            return (f"opset {opset}: onnx.reference's BatchNormalization-9 blends batch "
                    f"statistics into the running ones even in inference (wrong for opsets "
                    f"9-13)")
        if opset < 9:
            return (f"opset {opset}: onnx.reference runs BatchNormalization-6 in training mode "
                    f"when is_test is absent (as from opset 7) and then fails on its own "
                    f"tuple result")
        return None

    def load(self, data: bytes, model: Any) -> Runner:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(v) for v in evaluator.run(None, dict(feeds))]

        return run
