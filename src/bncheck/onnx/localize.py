"""Name the first layer where an exported graph stops agreeing with the eager model.

>>> from bncheck.onnx import build_model, export_onnx, make_inputs
>>> from bncheck.onnx.localize import localize
>>> model = build_model("torch")
>>> localize(export_onnx(model, exporter="torchscript"), model, make_inputs(4, seed=1)) is None
True

Every intermediate tensor of the graph is made a graph output and computed with onnxruntime
(``DISABLE_ALL``, so no fusion hides a layer); the eager model's layer outputs come from forward
hooks on its top-level layers, in eval mode under the grad context that failed. Graph tensors
are attributed to layers by the exporters' scope names (see :mod:`bncheck.onnx.placement`). A
layer whose tensors match a *later* eager layer was fused with it (Conv + folded BatchNorm) and
counts as agreeing. Layers with no tensor of their own (folded away) are not judged.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bncheck.compare import Tolerance, compare
from bncheck.onnx.placement import bn_placement, nodes_by_layer
from bncheck.onnx.runtimes import TOLERANCES, ort_session

__all__ = ["GRAD_CONTEXTS", "Localization", "localize", "eager_outputs", "module_label"]


#: The grad contexts an eval-mode model must give the same answer in.
GRAD_CONTEXTS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "torch.no_grad()": torch.no_grad,
    "torch.inference_mode()": torch.inference_mode,
    "grad enabled": torch.enable_grad,
}


@dataclass(frozen=True)
class Localization:
    """The first diverging layer, and why."""

    layer: int
    module: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"layer {self.layer}: {self.module} — {self.reason}"


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


def eager_outputs(model: nn.Module, x: Tensor, context: str = "torch.no_grad()"
                  ) -> tuple[list[Tensor], Tensor]:
    """Each top-level layer's output and the final output, in eval mode under ``context``.

    The model is deep-copied first: a BatchNorm that updates itself in forward leaves the
    caller's model alone.
    """
    model = copy.deepcopy(model).eval()
    layer_out: list[Tensor] = []
    children = list(model.children())
    hooks = [c.register_forward_hook(lambda _m, _i, o: layer_out.append(o.detach().clone()))
             for c in children]
    try:
        with GRAD_CONTEXTS[context]():
            y = model(x.clone())
    finally:
        for h in hooks:
            h.remove()
    return layer_out, y.detach().clone()


def _all_intermediates(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have and types.get(name) == onnx.TensorProto.FLOAT:
                model.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                have.add(name)
    session: Any = ort_session(model.SerializeToString(), level="DISABLE_ALL")
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: x})
    return dict(zip(names, values, strict=True))


def _layer_tensors(model: Any) -> dict[int, list[str]]:
    """Layer -> the tensors its nodes produce that leave the layer (or leave the graph)."""
    layers = nodes_by_layer(model)
    owner = {out: k for k, nodes in layers.items() for n in nodes for out in n.output}
    used_outside: set[str] = {o.name for o in model.graph.output}
    for node in model.graph.node:
        here = owner.get(node.output[0], -1) if node.output else -1
        for name in node.input:
            if name in owner and owner[name] != here:
                used_outside.add(name)
    return {k: [o for n in nodes for o in n.output if o in used_outside]
            for k, nodes in layers.items()}


def _matches(value: np.ndarray, expected: Tensor, tol: Tolerance) -> bool:
    if tuple(value.shape) != tuple(expected.shape):
        return False
    return compare(torch.from_numpy(np.ascontiguousarray(value)), expected, tolerance=tol,
                   check_dtype=False) is None


def localize(data: bytes, model: nn.Module, x: Tensor, context: str = "torch.no_grad()",
             *, tolerance: Tolerance | None = None) -> Localization | None:
    """The first top-level layer whose graph tensors disagree with the eager layer, or None.

    Args:
        data: the ONNX bytes.
        model: the eager model (an ``nn.Sequential`` of layers, as LeNet-BN).
        x: the input batch (use a batch of 2 or more to expose batch statistics).
        context: a key of :data:`GRAD_CONTEXTS`: the grad context of the eager reference.
        tolerance: per-layer tolerance; ``None`` is onnxruntime's (:data:`TOLERANCES`).
    """
    import onnx

    tol = tolerance or TOLERANCES["onnxruntime"]
    graph = onnx.load_from_string(data)
    values = _all_intermediates(data, x.numpy())
    eager, _ = eager_outputs(model, x, context)
    children = list(model.children())
    layer_tensors = _layer_tensors(graph)
    labels = {k: module_label(children[k], eager[k]) for k in range(len(children))}
    bn_layers = {k: labels[k] for k in range(len(children)) if "norm" in labels[k].lower()}
    placements = {p.layer: p for p in bn_placement(graph, bn_layers)}
    for k in range(len(children)):
        names = [n for n in layer_tensors.get(k, []) if n in values]
        if not names:
            continue  # folded away, or the exporter did not say: not judged
        if any(_matches(values[n], eager[j], tol) for n in names for j in range(k, len(eager))):
            continue
        same_shape = [n for n in names if tuple(values[n].shape) == tuple(eager[k].shape)]
        name = same_shape[-1] if same_shape else names[-1]
        mismatch = compare(torch.from_numpy(np.ascontiguousarray(values[name])), eager[k],
                           tolerance=tol, check_dtype=False, name=f"graph tensor {name!r}")
        detail = str(mismatch) if mismatch else f"graph tensor {name!r} matches no eager layer"
        place = placements.get(k)
        if place is not None and place.kind == "batch-statistics":
            reason = "exported graph normalizes with batch statistics" + (
                f" ({place.detail.split('(', 1)[1]}" if "ReduceMean" in place.detail
                else f" ({place.detail})")
        elif place is not None:
            reason = (f"exported graph's BatchNorm ({place.detail}) differs from the eager "
                      f"layer in eval mode under {context}")
        else:
            reason = f"exported graph's output differs from the eager layer under {context}"
        return Localization(k, labels[k], reason, detail)
    return None
