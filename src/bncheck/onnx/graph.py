"""Reading an ONNX graph: its input signature, which module each node came from, and every
intermediate tensor's value.

>>> import onnx
>>> from onnx import TensorProto, helper
>>> from bncheck.onnx.graph import module_of, signature
>>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
>>> relu = helper.make_node("Relu", ["x"], ["y"], name="/layer1/layer1.0/act/Relu")
>>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
>>> g = helper.make_graph([relu], "g", [x], [y])
>>> module_of(g.node[0])
'layer1.0.act'
>>> signature(helper.make_model(g)).inputs[0].shape
(None, 3, 8, 8)

Nodes are attributed to modules by the exporters' scope names: the dynamo exporter's
``pkg.torch.onnx.name_scopes`` metadata (``['', 'layer1', 'layer1.0', 'layer1.0.bn1', op]``) and
the TorchScript exporter's node names (``/layer1/layer1.0/bn1/BatchNormalization``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.errors import ModelFileError

__all__ = ["ModelFileError", "GraphInput", "Signature", "io_specs", "signature", "module_of",
           "intermediates", "display_name", "walk_nodes", "float_types"]

_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class GraphInput:
    """One graph input: name, shape (``None`` for a symbolic dimension, with its name in
    ``dim_names``) and numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    dim_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signature:
    """The graph's inputs (initializers left out) and output names."""

    inputs: tuple[GraphInput, ...]
    outputs: tuple[str, ...]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when dim 0 of the first input is fixed, else None."""
        first = self.inputs[0].shape if self.inputs and self.inputs[0].shape else (None,)
        return first[0]


def io_specs(values: Any, initializers: Any = ()) -> list[dict[str, Any]]:
    """Name, shape and dtype of graph inputs/outputs, as the manifest records them; inputs
    that are initializers (as old exports list the weights, opset < 9) are left out."""
    import onnx

    skip = {t.name for t in initializers}
    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in tt.shape.dim]
        out.append({"name": v.name, "shape": dims,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
                    if tt.elem_type else "?"})
    return out


def signature(model: Any, *, where: str = "model") -> Signature:
    """The graph's input signature.

    Raises:
        ModelFileError: no inputs or no outputs.
    """
    inputs = []
    for spec in io_specs(model.graph.input, model.graph.initializer):
        # A fixed 0 stays 0 (a zero-size dimension), not a symbol named "0".
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in spec["shape"])
        names = tuple("" if isinstance(d, int) and d >= 0 else str(d) for d in spec["shape"])
        inputs.append(GraphInput(spec["name"], dims, spec["dtype"], names))
    if not inputs or not model.graph.output:
        raise ModelFileError(f"{where}: a graph with {len(inputs)} inputs and "
                             f"{len(model.graph.output)} outputs: nothing to run")
    return Signature(tuple(inputs), tuple(o.name for o in model.graph.output))


def walk_nodes(graph: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of ``graph`` (a GraphProto) and of its subgraphs (``If`` branches, ``Loop``
    and ``Scan`` bodies), depth first in graph order (a node's subgraphs in the order of its
    attributes), each with where it lives: ``''`` at the
    top level, ``"node 'if1' then_branch"`` inside one.

    >>> from onnx import helper
    >>> inner = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "b", [], [])
    >>> top = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="if1",
    ...     then_branch=inner, else_branch=inner)], "g", [], [])
    >>> [(where, n.op_type) for where, n in walk_nodes(top)]
    [('', 'If'), ("node 'if1' else_branch", 'Relu'), ("node 'if1' then_branch", 'Relu')]
    """
    import onnx

    for node in graph.node:
        yield where, node
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else (
                list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
            for sub in subs:
                inner = f"node {node.name or node.output[0]!r} {a.name}"
                yield from walk_nodes(sub, f"{where} > {inner}" if where else inner)


def _strip_call_suffix(name: str, known: Collection[str] | None) -> str:
    """``act_1`` / ``act@1`` (a module's second call) -> ``act`` when that is a known module."""
    if known is None or name in known:
        return name
    base = re.sub(r"(_|@)\d+$", "", name)
    return base if base in known else name


def module_of(node: Any, known: Collection[str] | None = None) -> str | None:
    """The qualified name of the module a node comes from (``''``: the root module's own
    forward), or None when the exporter did not say.

    Args:
        node: an ``onnx.NodeProto``.
        known: the model's module names, to map a repeated call (``act_1``) to its module.
    """
    for prop in node.metadata_props:
        if prop.key == _SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if not isinstance(scopes, list) or not scopes:
                return None
            if scopes[0] != "":
                return None  # exporter-made nodes (symbolic shapes): no module
            return _strip_call_suffix(str(scopes[-2]) if len(scopes) > 1 else "", known)
    if not node.name.startswith("/"):
        return None
    qualified = ""
    for part in node.name.split("/")[1:-1]:
        if qualified and part.startswith(qualified + "."):
            qualified = part
        else:
            qualified = f"{qualified}.{part}" if qualified else part
        qualified = _strip_call_suffix(qualified, known)
    return qualified


def display_name(module: str) -> str:
    """``layer 5`` for a Sequential index (LeNet-BN), the qualified name otherwise."""
    return f"layer {module}" if module.isdigit() else (module or "(root)")


def float_types() -> tuple[int, ...]:
    """The ONNX element types of floating-point tensors."""
    import onnx

    t = onnx.TensorProto
    return (t.FLOAT, t.FLOAT16, t.DOUBLE, t.BFLOAT16)


def intermediates(data: bytes, feeds: Mapping[str, np.ndarray],
                  names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every floating-point tensor of the graph (or those in ``names``), computed by
    onnxruntime CPU at ``DISABLE_ALL`` (so no fusion hides one) with each made a graph output; by
    ``onnx.reference`` where onnxruntime refuses the graph or would crash on it."""
    import onnx

    from bncheck.onnx.runtimes import ort_session

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    have = {o.name for o in model.graph.output}
    wanted = None if names is None else set(names)
    for node in model.graph.node:
        for name in node.output:
            if (name and name not in have and (wanted is None or name in wanted)
                    and types.get(name) in float_types()):
                model.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, types[name], None))
                have.add(name)
    from bncheck.onnx.runtimes.ort_cpu import crash_hazard

    if crash_hazard(model) is None:
        try:
            session = ort_session(model.SerializeToString(), level="DISABLE_ALL")
        except Exception:  # noqa: BLE001 - onnxruntime refuses the graph: onnx.reference next
            session = None
        if session is not None:
            out_names = [o.name for o in session.get_outputs()]
            return dict(zip(out_names, session.run(None, dict(feeds)), strict=True))
    from onnx.reference import ReferenceEvaluator

    # onnx.reference needs no declared outputs: ask for every node output by name.
    out_names = list(dict.fromkeys(
        [o.name for o in model.graph.output] + [t for n in model.graph.node for t in n.output
                                                if t and (wanted is None or t in wanted)]))
    values = ReferenceEvaluator(model).run(out_names, dict(feeds))
    return {n: np.asarray(v) for n, v in zip(out_names, values, strict=True)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
