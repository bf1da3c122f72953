"""Every BatchNormalization node of a graph, and every BatchNorm folded into a Conv/Gemm, read
from the graph alone (no source model needed).

>>> import onnx
>>> from onnx import TensorProto, helper, numpy_helper
>>> import numpy as np
>>> from bncheck.onnx.bn_nodes import bn_nodes
>>> stats = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
>>> node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
...                         name="/bn1/BatchNormalization", epsilon=1e-3)
>>> g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["N", 3])],
...                       [helper.make_tensor_value_info("y", 1, None)], initializer=stats)
>>> node = bn_nodes(helper.make_model(g))[0]
>>> node.module, node.training_mode, node.epsilon, node.statistics
('bn1', 0, 0.001, "initializers 'm', 'v' (stored running statistics)")

Where a node's statistics come from: initializers (running statistics stored in the file, as an
inference export has them), graph inputs (fed at run time), other nodes' outputs (computed in
the graph), or the batch itself (``training_mode=1``: batch statistics; the stored ones are only
updated). Folds are visible where the exporter recorded them: the dynamo exporter's optimizer
marks a fused Conv/Gemm with ``FuseBatchNormInto...`` and the BatchNorm's module scope; the
TorchScript exporter's constant folding leaves no trace, so its folds are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bncheck.onnx.graph import module_of, op_version, walk_nodes

__all__ = ["BNNode", "Fold", "bn_nodes", "folds"]

_RULE = "pkg.onnxscript.rewriter.rule_name"
_CLASSES = "pkg.torch.onnx.class_hierarchy"


@dataclass(frozen=True)
class BNNode:
    """One BatchNormalization node, as the graph states it."""

    name: str
    module: str | None
    training_mode: int
    epsilon: float
    momentum: float
    statistics: str
    subgraph: str = ""  # '' at the top level; "node 'if1' then_branch" inside a subgraph
    #: The operator version the node runs (6 for opsets 6, 7 for 7-8, 9 for 9-13, ...).
    version: int = 0
    #: Attributes of old versions, as the file sets them: ``is_test`` and ``consumed_inputs``
    #: (BatchNormalization-1/6), ``spatial`` (up to -7/-9; 0: per-activation statistics).
    legacy: tuple[tuple[str, Any], ...] = ()

    @property
    def batch_statistics(self) -> bool:
        return self.training_mode == 1

    def to_json(self) -> dict[str, Any]:
        return {"node": self.name, "module": self.module, "training_mode": self.training_mode,
                "epsilon": self.epsilon, "momentum": self.momentum,
                "statistics": self.statistics, "subgraph": self.subgraph,
                "version": self.version, "legacy_attributes": dict(self.legacy)}

    @property
    def per_activation(self) -> bool:
        """``spatial=0`` (BatchNormalization-1 to -7): statistics per channel *and* position,
        not the per-channel BatchNorm of torch."""
        return dict(self.legacy).get("spatial", 1) == 0

    def __str__(self) -> str:
        where = f" (module {self.module})" if self.module else ""
        where += f" (inside {self.subgraph})" if self.subgraph else ""
        version = f"BatchNormalization-{self.version}, " if self.version and \
            self.version < 14 else ""
        legacy = "".join(f"{k}={v}, " for k, v in self.legacy)
        return (f"{self.name}{where}: {version}training_mode={self.training_mode}, {legacy}"
                f"epsilon={self.epsilon:.3g}, momentum={self.momentum:.3g}, statistics: "
                f"{self.statistics}")


@dataclass(frozen=True)
class Fold:
    """A BatchNorm folded into a Conv/Gemm node by the exporter's optimizer."""

    node: str
    op_type: str
    module: str | None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "module": self.module}

    def __str__(self) -> str:
        return f"BatchNorm {self.module or '?'} folded into {self.op_type} node {self.node}"


def _attr(node: Any, name: str, default: float) -> float:
    """An attribute's value; float attributes (stored as float32) to float32's 7 digits."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = float(onnx.helper.get_attribute_value(a))
            return float(f"{value:.7g}") if a.type == onnx.AttributeProto.FLOAT else value
    return default


def _source(model: Any, names: list[str], training: bool) -> str:
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - inits
    constants = {o for _, n in walk_nodes(model.graph) if n.op_type == "Constant"
                 for o in n.output}
    quoted = ", ".join(repr(n) for n in names)
    if training:
        return (f"the batch (training_mode=1: normalizes with batch statistics; {quoted} are "
                f"only updated)")
    if all(n in inits or n in constants for n in names):
        return f"initializers {quoted} (stored running statistics)"
    if all(n in inputs for n in names):
        return f"graph inputs {quoted} (fed at run time)"
    return f"computed in the graph ({quoted} are outputs of other nodes)"


def bn_nodes(model: Any) -> list[BNNode]:
    """Every BatchNormalization node, in graph order, those inside ``If``/``Loop``/``Scan``
    subgraphs included (``subgraph`` says where)."""
    found = []
    version = op_version(model, "BatchNormalization")
    for subgraph, node in walk_nodes(model.graph):
        if node.op_type != "BatchNormalization":
            continue
        training = _training_mode(node, version)
        found.append(BNNode(node.name or node.output[0], module_of(node), training,
                            _attr(node, "epsilon", 1e-5), _attr(node, "momentum", 0.9),
                            _source(model, list(node.input[3:5]), training == 1), subgraph,
                            version, _legacy(node)))
    return found


def _training_mode(node: Any, version: int) -> int:
    """1 where the node normalizes with batch statistics, as its operator version says it:
    ``is_test`` (default 0, training) up to BatchNormalization-6; from -7 to -9 the optional
    mean/var outputs, produced in training mode only (torch's TorchScript exporter with
    training=TRAINING); from -14 on ``training_mode`` (default 0)."""
    names = {a.name for a in node.attribute}
    if "training_mode" in names or version >= 14:
        return int(_attr(node, "training_mode", 0))
    if "is_test" in names or (version and version < 7):
        return 1 - int(_attr(node, "is_test", 0))
    return int(sum(1 for o in node.output if o) > 1)


def _legacy(node: Any) -> tuple[tuple[str, Any], ...]:
    import onnx

    return tuple((a.name, onnx.helper.get_attribute_value(a) if a.name != "consumed_inputs"
                  else list(a.ints))
                 for a in node.attribute if a.name in ("is_test", "spatial", "consumed_inputs"))


def folds(model: Any) -> list[Fold]:
    """Conv/Gemm nodes into which the exporter's optimizer folded a BatchNorm."""
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        props = {p.key: p.value for p in node.metadata_props}
        if "FuseBatchNorm" in props.get(_RULE, "") or "BatchNorm" in props.get(_CLASSES, ""):
            found.append(Fold(node.name, node.op_type, module_of(node)))
    return found
