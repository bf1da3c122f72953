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

Nodes are attributed to the model's modules by the exporters' scope names
(:func:`bncheck.onnx.graph.module_of`). A BatchNorm layer is named by its qualified module name
(``1`` in LeNet-BN's Sequential, shown as ``layer 1``; ``layer3.1.bn2`` in a ResNet).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.onnx.graph import display_name, module_of
from bncheck.reference.lenet import BN_LAYER_INDICES

__all__ = ["Placement", "BNLayer", "LENET_BN_LAYERS", "nodes_by_module", "bn_placement",
           "placement_line"]


@dataclass(frozen=True)
class BNLayer:
    """A BatchNorm module of the eager model: qualified name, label, and the module that ran
    just before it (the Conv/Linear a fold would go into)."""

    name: str
    label: str
    previous: str | None = None


#: LeNet-BN's BatchNorm layers (Sequential indices; labels as a from-scratch BN prints).
LENET_BN_LAYERS: tuple[BNLayer, ...] = tuple(
    BNLayer(str(k), label, str(k - 1)) for k, label in zip(
        BN_LAYER_INDICES, ("BatchNorm(6)", "BatchNorm(16)", "BatchNorm(120)", "BatchNorm(84)"),
        strict=True))
_PASS_THROUGH = ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten")
_HOSTS = ("Conv", "Gemm", "MatMul")
_ELEMENTWISE_ORDER = ("ReduceMean", "Sub", "Div", "Mul", "Sqrt", "Reciprocal", "Add", "Pow")


@dataclass(frozen=True)
class Placement:
    """One BatchNorm layer's fate in the graph (``layer``: its qualified module name)."""

    layer: str
    module: str
    kind: str
    detail: str
    ops: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "module": self.module, "kind": self.kind,
                "detail": self.detail, "ops": list(self.ops)}

    def __str__(self) -> str:
        return f"{display_name(self.layer)} {self.module}: {self.detail}"


def nodes_by_module(model: Any, known: Collection[str] | None = None) -> dict[str, list[Any]]:
    """Qualified module name -> the graph's nodes from that module itself, in graph order."""
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        name = module_of(node, known)
        if name is not None:
            out.setdefault(name, []).append(node)
    return out


def _within(nodes: Mapping[str, list[Any]], name: str) -> list[Any]:
    """The nodes of module ``name`` and of its submodules."""
    return [n for k, ns in nodes.items() if k == name or k.startswith(name + ".") for n in ns]


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


def _classify(bn: BNLayer, nodes: list[Any], prev: list[Any],
              consts: Mapping[str, np.ndarray]) -> Placement:
    layer, label = bn.name, bn.label
    host_of = f" ({display_name(bn.previous)})" if bn.previous is not None else ""
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
        return Placement(layer, label, "folded", f"folded into {ops[-1]}{host_of}")
    if not ops:
        host = [n.op_type for n in prev if n.op_type in _HOSTS]
        if host:
            return Placement(layer, label, "folded", f"folded into {host[-1]}{host_of}")
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


def bn_placement(model: Any, layers: Sequence[BNLayer] | None = None, *,
                 known: Collection[str] | None = None) -> list[Placement]:
    """Where each BatchNorm layer went: one :class:`Placement` per entry of ``layers``.

    Args:
        model: an ``onnx.ModelProto``.
        layers: the eager model's BatchNorm modules; ``None`` is LeNet-BN's
            (:data:`LENET_BN_LAYERS`).
        known: every module name of the eager model (maps a repeated call, ``act_1``, to its
            module); default: the names in ``layers``.
    """
    layers = LENET_BN_LAYERS if layers is None else layers
    if known is None:
        known = {b.name for b in layers} | {b.previous for b in layers if b.previous}
    by_module = nodes_by_module(model, known)
    consts = constants(model)
    return [_classify(bn, _within(by_module, bn.name),
                      _within(by_module, bn.previous) if bn.previous is not None else [],
                      consts) for bn in layers]


def placement_line(placements: list[Placement]) -> str:
    """One line: ``BN placement: layer 1 BatchNorm(6) folded into Conv (layer 0); ...``."""
    return "BN placement: " + "; ".join(str(p) for p in placements)
