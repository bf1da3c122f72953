"""``onnx.reference``'s ``ReferenceEvaluator``: numpy, one operator per file, slow and plain.

>>> from bncheck.onnx.runtimes.reference import Reference
>>> Reference().key
'reference'

Its BatchNormalization kernels are right from BatchNormalization-14 (opset 14) on. Below, they
compute what the node does not (recorded in ``tests/integration/test_onnx_runtime_divergences.py``
and ``tests/integration/test_onnx_opsets.py``): its BatchNormalization-9 (opsets 9-13) blends the
batch statistics into the running ones even for an inference node, and its
BatchNormalization-6 (opsets 6-8) runs training mode unless ``is_test=1`` (an attribute opsets
7-8 no longer have) and then fails on its own tuple result; it has no BatchNormalization-1.
So below opset 14 an inference node (``is_test=1``; one output from opset 7 on) runs on
onnx.reference's own inference kernel (``_batchnorm_test_mode``, the spec's formula) through
``new_ops``, every other operator as onnx.reference runs it; a training-mode node, or one with
``spatial=0`` (statistics per activation, which onnx.reference ignores), is *not applicable*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bncheck.engine.compare import Tolerance
from bncheck.onnx.bn_nodes import bn_nodes
from bncheck.onnx.runtimes._base import Runner, RuntimePlugin

__all__ = ["Reference", "onnx_opset"]

#: From this BatchNormalization version on, onnx.reference's own kernel computes the node.
_RIGHT_FROM = 14


def onnx_opset(model: Any) -> int:
    """The default-domain opset a ModelProto imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _inference_batch_normalization() -> type:
    """An ``OpRun`` for a BatchNormalization node in inference mode, any version: onnx.reference's
    own ``_batchnorm_test_mode`` (``scale * (x - mean) / sqrt(var + epsilon) + bias``)."""
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

    class BatchNormalization(OpRun):  # the name onnx.reference looks operators up by
        op_domain = ""

        def _run(self, x: Any, scale: Any, bias: Any, mean: Any, var: Any,
                 **attributes: Any) -> tuple[np.ndarray]:
            eps = attributes.get("epsilon", getattr(self, "epsilon", None))
            return (_batchnorm_test_mode(x, scale, bias, mean, var,
                                         epsilon=1e-5 if eps is None else float(eps)),)

    return BatchNormalization


class Reference(RuntimePlugin):
    """onnx.reference.ReferenceEvaluator."""

    name = "onnx.reference"
    key = "reference"

    def __init__(self) -> None:
        from bncheck.onnx.runtimes._tolerances import TOLERANCES

        self.tolerance: Tolerance = TOLERANCES[self.key]

    def not_applicable(self, model: Any) -> str | None:
        nodes = bn_nodes(model)
        if not nodes or nodes[0].version >= _RIGHT_FROM:
            return None
        version, opset = nodes[0].version, onnx_opset(model)
        training = [n for n in nodes if n.batch_statistics]
        if training:
            wrong = ("blends the batch statistics into the running ones and normalizes with "
                     "those" if version >= 9 else "returns its five outputs as one (TypeError)")
            return (f"opset {opset}: BatchNormalization-{version} node {training[0].name!r} "
                    f"is in training mode, and onnx.reference's kernel for it {wrong}; it "
                    f"computes training mode from BatchNormalization-14 (opset 14) on")
        spatial = [n for n in nodes if n.per_activation]
        if spatial:
            return (f"opset {opset}: BatchNormalization-{version} node {spatial[0].name!r} has "
                    f"spatial=0 (statistics per channel and position), which onnx.reference "
                    f"ignores")
        return None

    def load(self, data: bytes, model: Any) -> Runner:
        from onnx.reference import ReferenceEvaluator

        nodes = bn_nodes(model)
        old = bool(nodes) and nodes[0].version < _RIGHT_FROM
        evaluator = ReferenceEvaluator(
            model, new_ops=[_inference_batch_normalization()] if old else None)

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(v) for v in evaluator.run(None, dict(feeds))]

        return run
