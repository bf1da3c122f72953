"""Where each BatchNorm layer went in an exported graph.

>>> from bncheck.onnx import build_model, export_onnx
>>> from bncheck.onnx.placement import bn_placement
>>> import onnx
>>> graph = onnx.load_from_string(export_onnx(build_model("torch"), exporter="torchscript"))
>>> [p.kind for p in bn_placement(graph)]
['folded', 'folded', 'node', 'node']

A BatchNorm ends up as one of:

* ``node``: a BatchNormalization node (its ``training_mode`` is reported);
* ``folded``: no node of its own: folded into the preceding Conv/Gemm's weights;
* ``decomposed``: elementwise ops (Sub, Mul, Add, ...), as a from-scratch BN exports;
* ``batch-statistics``: nodes that reduce over the batch axis (ReduceMean over axis 0) or a
  BatchNormalization with ``training_mode=1``: the graph normalizes with batch statistics.

Nodes are attributed to the model's top-level layers by the exporters' scope names: the dynamo
exporter's ``pkg.torch.onnx.name_scopes`` metadata, the TorchScript exporter's ``/k/Op`` names.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bncheck.models import BN_LAYER_INDICES

__all__ = ["Placement", "LENET_BN_LABELS", "layer_of", "nodes_by_layer", "bn_placement",
           "placement_line"]

#: LeNet-BN's BatchNorm layers: Sequential index -> label (as a from-scratch BN prints).
LENET_BN_LABELS: dict[int, str] = dict(
    zip(BN_LAYER_INDICES, ("BatchNorm(6)", "BatchNorm(16)", "BatchNorm(120)", "BatchNorm(84)"),
        strict=True))

_SCOPES = "pkg.torch.onnx.name_scopes"
_PASS_THROUGH = ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten")
_HOSTS = ("Conv", "Gemm", "MatMul")
_ELEMENTWISE_ORDER = ("ReduceMean", "Sub", "Div", "Mul", "Sqrt", "Reciprocal", "Add", "Pow")


@dataclass(frozen=True)
class Placement:
    """One BatchNorm layer's fate in the graph."""

    layer: int
    module: str
    kind: str
    detail: str
    ops: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d

    def __str__(self) -> str:
        return f"layer {self.layer} {self.module}: {self.detail}"


def layer_of(node: Any) -> int | None:
    """The top-level layer index a node comes from, or None when the exporter did not say."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if len(scopes) > 1 and str(scopes[1]).isdigit():
                return int(scopes[1])
            return None
    parts = node.name.split("/")
    if len(parts) > 2 and parts[0] == "" and parts[1].isdigit():
        return int(parts[1])
    return None


def nodes_by_layer(model: Any) -> dict[int, list[Any]]:
    """Top-level layer index -> the graph's nodes from that layer, in graph order."""
    out: dict[int, list[Any]] = {}
    for node in model.graph.node:
        k = layer_of(node)
        if k is not None:
            out.setdefault(k, []).append(node)
    return out


def constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs, by name."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in found:
            # Unoptimized exports build ReduceMean axes as Reshape(Constant, Constant).
            found[node.output[0]] = np.asarray(found[node.input[0]]).reshape(-1)
            continue
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name == "value":
                found[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_ints":
                found[node.output[0]] = np.asarray(attr.ints)
            elif attr.name == "value_int":
                found[node.output[0]] = np.asarray(attr.i)
    return found


def reduce_axes(node: Any, consts: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
    """A Reduce* node's axes (attribute before opset 18, input after); None when unknown."""
    for attr in node.attribute:
        if attr.name == "axes":
            return tuple(int(a) for a in attr.ints)
    if len(node.input) > 1 and node.input[1] in consts:
        return tuple(int(a) for a in np.asarray(consts[node.input[1]]).reshape(-1))
    if len(node.input) == 1:
        return ()  # no axes: reduces over every axis, the batch axis included
    return None


def _attr_int(node: Any, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _ordered_ops(nodes: list[Any]) -> tuple[str, ...]:
    ops = {n.op_type for n in nodes if n.op_type not in ("Constant", "Shape", "Reshape",
                                                          "Concat", "Squeeze", "Unsqueeze",
                                                          "Gather", "Cast", "Identity")}
    known = [op for op in _ELEMENTWISE_ORDER if op in ops]
    return tuple(known + sorted(ops - set(known)))


def _classify(layer: int, label: str, nodes: list[Any], prev: list[Any],
              consts: Mapping[str, np.ndarray]) -> Placement:
    bn_nodes = [n for n in nodes if n.op_type == "BatchNormalization"]
    if bn_nodes:
        modes = sorted({_attr_int(n, "training_mode", 0) for n in bn_nodes})
        if 1 in modes:
            return Placement(layer, label, "batch-statistics",
                             "BatchNormalization node (training_mode=1: normalizes with batch "
                             "statistics)", ("BatchNormalization",))
        return Placement(layer, label, "node",
                         f"BatchNormalization node (training_mode={modes[0]})",
                         ("BatchNormalization",))
    ops = _ordered_ops(nodes)
    if ops and set(ops) <= set(_HOSTS):
        # The dynamo exporter's optimizer gives the fused Conv/Gemm the BatchNorm's scope.
        return Placement(layer, label, "folded", f"folded into {ops[-1]} (layer {layer - 1})")
    if not ops:
        host = [n.op_type for n in prev if n.op_type in _HOSTS]
        if host:
            return Placement(layer, label, "folded",
                             f"folded into {host[-1]} (layer {layer - 1})")
        return Placement(layer, label, "folded", "no node of its own left in the graph")
    for node in nodes:
        if node.op_type.startswith("Reduce"):
            axes = reduce_axes(node, consts)
            if axes is not None and (axes == () or 0 in axes):
                return Placement(layer, label, "batch-statistics",
                                 f"decomposed into {', '.join(ops)}; normalizes with batch "
                                 f"statistics ({node.op_type} over the batch axis)", ops)
    return Placement(layer, label, "decomposed",
                     f"decomposed into elementwise ops ({', '.join(ops)})", ops)


def bn_placement(model: Any, labels: Mapping[int, str] | None = None) -> list[Placement]:
    """Where each BatchNorm layer went: one :class:`Placement` per entry of ``labels``.

    Args:
        model: an ``onnx.ModelProto``.
        labels: layer index -> label; ``None`` is LeNet-BN's (:data:`LENET_BN_LABELS`).
    """
    labels = LENET_BN_LABELS if labels is None else labels
    layers = nodes_by_layer(model)
    consts = constants(model)
    return [_classify(k, label, layers.get(k, []), layers.get(k - 1, []), consts)
            for k, label in sorted(labels.items())]


def placement_line(placements: list[Placement]) -> str:
    """One line: ``BN placement: layer 1 BatchNorm(6) folded into Conv (layer 0); ...``."""
    return "BN placement: " + "; ".join(str(p) for p in placements)
