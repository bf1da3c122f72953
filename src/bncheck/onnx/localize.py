"""Name where an exported graph goes wrong: the first module whose graph tensors stop agreeing
with the eager model, the nodes that make one sample depend on the rest of its batch, and the
first node where two runtimes part.

>>> from bncheck.onnx import build_model, export_onnx, make_inputs
>>> from bncheck.onnx.localize import localize
>>> model = build_model("torch")
>>> localize(export_onnx(model, exporter="torchscript"), model, (make_inputs(4, seed=1),)) is None
True

Every intermediate tensor of the graph is made a graph output and computed with onnxruntime
(``DISABLE_ALL``, so no fusion hides a node); the eager model's module outputs come from forward
hooks on every module, in eval mode under the grad context that failed. Graph tensors are
attributed to modules by the exporters' scope names (:func:`bncheck.onnx.graph.module_of`); the
modules are visited in the order they ran. A module whose tensors match a *later* module's
output was fused with it (Conv + folded BatchNorm) and counts as agreeing; a module with no
tensor of its own (folded away) is not judged.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bncheck.engine.compare import Tolerance, compare
from bncheck.errors import TargetError
from bncheck.onnx.graph import display_name, intermediates, module_of
from bncheck.onnx.placement import BNLayer, bn_placement, nodes_by_module
from bncheck.onnx.runtimes import TOLERANCES

__all__ = ["GRAD_CONTEXTS", "Localization", "EagerRun", "run_eager", "eager_outputs",
           "localize", "module_label", "is_batchnorm", "bn_layers", "batch_dependent_nodes",
           "first_diverging_node", "first_nonfinite_node"]


#: The grad contexts an eval-mode model must give the same answer in.
GRAD_CONTEXTS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "torch.no_grad()": torch.no_grad,
    "torch.inference_mode()": torch.inference_mode,
    "grad enabled": torch.enable_grad,
}


@dataclass(frozen=True)
class Localization:
    """The first diverging module (qualified name, label), why, and the graph node."""

    layer: str
    module: str
    reason: str
    detail: str
    node: str | None = None

    def __str__(self) -> str:
        node = f" [graph node {self.node!r}]" if self.node else ""
        return f"{display_name(self.layer)}: {self.module} — {self.reason}{node}"


def is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm by class (torch's, or any class named ``*BatchNorm*``/``*BN``)."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return True
    name = type(module).__name__.lower()
    return "batchnorm" in name or name.endswith("bn") or name.startswith("bn")


def module_label(module: nn.Module, out: Tensor | None = None) -> str:
    """``BatchNorm2d(6)``-style label: the class name and the channel count when known."""
    name = type(module).__name__
    nf = getattr(module, "num_features", None)
    if nf is None and "norm" in name.lower():
        params = list(module.parameters())
        nf = params[0].numel() if params else (out.shape[1] if out is not None else None)
    if nf is not None:
        return f"{name}({nf})"
    text = repr(module)
    return text if "\n" not in text and len(text) <= 60 else name


def _tensors(value: Any, where: str) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v, where)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v, where)]
    raise TargetError(f"{where} returned a {type(value).__name__}; bncheck compares tensor "
                      f"outputs (a tensor, or tuples/lists/dicts of tensors)")


@dataclass
class EagerRun:
    """One eval-mode forward: the model's outputs, and (``record=True``) every module's
    outputs per call and the order the modules first ran in."""

    outputs: list[Tensor]
    modules: dict[str, list[Tensor]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def run_eager(model: nn.Module, inputs: Sequence[Tensor], context: str = "torch.no_grad()",
              *, record: bool = False) -> EagerRun:
    """Run a deep copy of ``model`` in eval mode under ``context`` on ``inputs``.

    The copy leaves the caller's model alone if a BatchNorm updates itself in forward.

    Raises:
        TargetError: the forward raised (named with the user's file and line).
    """
    from bncheck.engine.target import user_code

    model = copy.deepcopy(model).eval()
    run = EagerRun([])
    hooks = []
    if record:
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                tensors = [t for t in _tensors(out, name) if t.is_floating_point()]
                if name not in run.modules:
                    run.order.append(name)
                run.modules.setdefault(name, []).extend(t.detach().clone() for t in tensors)

            hooks.append(module.register_forward_hook(hook))
    try:
        with user_code(f"running the model in eval mode under {context}"), \
                GRAD_CONTEXTS[context]():
            y = model(*(x.clone() for x in inputs))
    finally:
        for h in hooks:
            h.remove()
    run.outputs = [t.detach().clone() for t in _tensors(y, "the model")]
    return run


def eager_outputs(model: nn.Module, inputs: Sequence[Tensor] | Tensor,
                  context: str = "torch.no_grad()") -> list[Tensor]:
    """The model's outputs in eval mode under ``context`` (see :func:`run_eager`)."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    return run_eager(model, inputs, context).outputs


def bn_layers(model: nn.Module, inputs: Sequence[Tensor]) -> tuple[list[BNLayer], set[str]]:
    """The model's BatchNorm modules in the order they run, each with the module that ran
    just before it; and every module name."""
    run = run_eager(model, inputs, record=True)
    modules = dict(model.named_modules())
    leaves = [n for n in run.order if not list(modules[n].children()) or is_batchnorm(modules[n])]
    found, previous = [], None
    for name in leaves:
        out = run.modules[name][0] if run.modules[name] else None
        if is_batchnorm(modules[name]):
            found.append(BNLayer(name, module_label(modules[name], out), previous))
        previous = name
    return found, set(modules)


def _leaving(graph: Any, by_module: Mapping[str, list[Any]], name: str,
             consumers: Mapping[str, list[Any]], known: set[str]) -> list[str]:
    """Tensors made inside module ``name`` (or its submodules) that are used outside it."""
    inside = [n for k, ns in by_module.items() if k == name or k.startswith(name + ".")
              for n in ns]
    outputs = {o.name for o in graph.graph.output}
    found = []
    for node in inside:
        for t in node.output:
            users = consumers.get(t, [])
            outside = [u for u in users if (m := module_of(u, known)) is None
                       or not (m == name or m.startswith(name + "."))]
            if t and (t in outputs or outside):
                found.append(t)
    return found


def _close(value: np.ndarray, expected: Tensor, tol: Tolerance) -> bool:
    e = expected.numpy()
    return value.shape == e.shape and bool(np.allclose(value, e, rtol=tol.rtol, atol=tol.atol,
                                                       equal_nan=True))


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for node in graph.graph.node:
        for t in node.input:
            users.setdefault(t, []).append(node)
    return users


def localize(data: bytes, model: nn.Module, inputs: Sequence[Tensor] | Tensor,
             context: str = "torch.no_grad()", *, input_names: Sequence[str] | None = None,
             tolerance: Tolerance | None = None,
             layers: Sequence[BNLayer] | None = None) -> Localization | None:
    """The first module whose graph tensors disagree with the eager module, or None.

    Args:
        data: the ONNX bytes.
        model: the eager model.
        inputs: the input batch (use 2 or more rows to expose batch statistics).
        context: a key of :data:`GRAD_CONTEXTS`: the grad context of the eager reference.
        input_names: the graph's input names (default: read from the graph).
        tolerance: per-tensor tolerance; ``None`` is onnxruntime's (:data:`TOLERANCES`).
        layers: the model's BatchNorm modules (default: found by :func:`bn_layers`).
    """
    import onnx

    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    tol = tolerance or TOLERANCES["onnxruntime"]
    graph = onnx.load_from_string(data)
    init = {t.name for t in graph.graph.initializer}
    names = input_names or [i.name for i in graph.graph.input if i.name not in init]
    values = intermediates(data, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    run = run_eager(model, inputs, context, record=True)
    modules = dict(model.named_modules())
    known = set(modules)
    by_module = nodes_by_module(graph, known)
    consumers = _consumers(graph)
    producer = {t: n for n in graph.graph.node for t in n.output}
    if layers is None:
        layers, _ = bn_layers(model, inputs)
    placements = {p.layer: p for p in bn_placement(graph, layers, known=known)}
    order = [n for n in run.order if not list(modules[n].children()) or is_batchnorm(modules[n])]
    for i, name in enumerate(order):
        here = run.modules.get(name, [])
        shapes = {tuple(t.shape) for t in here}
        judged = [t for t in _leaving(graph, by_module, name, consumers, known)
                  if t in values and tuple(values[t].shape) in shapes]
        if not judged:
            continue  # folded away, not attributed, or reshaped: not judged
        later = [e for n in order[i:] for e in run.modules.get(n, [])]
        if any(_close(values[t], e, tol) for t in judged for e in later):
            continue
        tensor = judged[-1]
        expected = next(e for e in here if tuple(e.shape) == tuple(values[tensor].shape))
        mismatch = compare(values[tensor], expected, tolerance=tol, check_dtype=False,
                           name=f"graph tensor {tensor!r}")
        node = producer.get(tensor)
        label = module_label(modules[name], here[0] if here else None)
        return Localization(name, label, _reason(name, order, i, placements, node, context),
                            str(mismatch), node.name or tensor if node is not None else None)
    return None


def _reason(name: str, order: list[str], i: int, placements: Mapping[str, Any], node: Any,
            context: str) -> str:
    place = placements.get(name)
    if place is not None and place.kind == "batch-statistics":
        return "exported graph normalizes with batch statistics" + (
            f" ({place.detail.split('(', 1)[1]}" if "ReduceMean" in place.detail
            else f" ({place.detail})")
    if place is not None:
        return (f"exported graph's BatchNorm ({place.detail}) differs from the eager layer in "
                f"eval mode under {context}")
    following = placements.get(order[i + 1]) if i + 1 < len(order) else None
    if following is not None and following.kind == "folded" and node is not None:
        return (f"the {node.op_type} node with {display_name(following.layer)} "
                f"({following.module}) folded into it matches neither the eager {name} nor "
                f"{display_name(following.layer)}: a wrong Conv+BN fold")
    return f"exported graph's output differs from the eager layer under {context}"


def _row0(value: np.ndarray, batch: int) -> np.ndarray:
    return value[:1] if value.ndim and value.shape[0] == batch else value


def batch_dependent_nodes(data: bytes, feeds: Mapping[str, np.ndarray],
                          other: Mapping[str, np.ndarray], *,
                          tolerance: Tolerance | None = None) -> list[tuple[str, str, str | None]]:
    """The nodes where sample 0's values start to depend on the other rows of its batch.

    ``feeds`` and ``other`` differ only in rows 1 and up. A node is named when one of its
    outputs changes at row 0 (or, for a tensor without the batch axis, anywhere) while none of
    its inputs does: a training-mode BatchNormalization, a ReduceMean over the batch axis, ...

    Returns:
        ``(node name, op type, module or None)`` in graph order.
    """
    import onnx

    tol = tolerance or TOLERANCES["batch-independence"]
    batch = next(iter(feeds.values())).shape[0]
    a, b = intermediates(data, feeds), intermediates(data, other)

    def dependent(t: str) -> bool:
        if t not in a or t not in b or a[t].shape != b[t].shape:
            return False
        x, y = _row0(a[t], batch), _row0(b[t], batch)
        return not np.allclose(x, y, rtol=tol.rtol, atol=tol.atol, equal_nan=True)

    graph = onnx.load_from_string(data)
    found = []
    for node in graph.graph.node:
        if any(dependent(t) for t in node.output if t) and \
                not any(dependent(t) for t in node.input if t):
            found.append((node.name or node.output[0], node.op_type, module_of(node)))
    return found


def first_diverging_node(values: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                         graph: Any, tolerance: Tolerance) -> tuple[str, str, str] | None:
    """The first node (graph order) whose output differs between two runtimes' intermediates
    while its inputs agree: ``(node name, op type, mismatch report)``, or None."""
    def differs(t: str) -> bool:
        if t not in values or t not in reference:
            return False
        a, b = values[t], reference[t]
        if a is None or b is None:  # a runtime gave no value (found by fuzz_onnx_check.py)
            return (a is None) != (b is None)
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return True
        if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
            return not np.array_equal(a, b)
        return not np.allclose(a, b, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)

    for node in graph.graph.node:
        bad = [t for t in node.output if t and differs(t)]
        if bad and not any(differs(t) for t in node.input if t):
            a, b = values[bad[0]], reference[bad[0]]
            if a is None or b is None:
                detail = f"tensor {bad[0]!r}: one runtime gave no value"
            else:
                detail = str(compare(a, b, tolerance=tolerance, check_dtype=False,
                                     name=f"tensor {bad[0]!r}"))
            return node.name or bad[0], node.op_type, detail
    return None


def first_nonfinite_node(data: bytes, feeds: Mapping[str, np.ndarray]
                         ) -> tuple[str, str, str | None] | None:
    """The first node (graph order) with a NaN or an infinity in an output while its inputs
    are finite: ``(node name, op type, module or None)``, or None."""
    import onnx

    values = intermediates(data, feeds)
    graph = onnx.load_from_string(data)
    values.update({t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer})

    def finite(t: str) -> bool:
        v = values.get(t)
        return v is None or np.asarray(v).dtype.kind != "f" or bool(np.isfinite(v).all())

    for node in graph.graph.node:
        if not all(finite(t) for t in node.output if t) and all(finite(t) for t in node.input
                                                                 if t):
            return node.name or node.output[0], node.op_type, module_of(node)
    return None
