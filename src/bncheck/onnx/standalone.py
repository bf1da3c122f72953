"""Verify an ONNX file with no source and no goldens: the runtimes against one another.

>>> import numpy as np, onnx
>>> from onnx import TensorProto, helper
>>> from bncheck.onnx.standalone import verify_standalone
>>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
>>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
>>> model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> verify_standalone(model.SerializeToString()).ok
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bncheck.compare import Tolerance
from bncheck.onnx._report import (
    Feeds,
    Report,
    batch_independence,
    compare_outputs,
    feeds_of,
    node_text,
    one_line,
    run_on,
    skip_rows,
    start_report,
)
from bncheck.onnx.graph import ModelFileError, Signature, signature
from bncheck.onnx.localize import first_diverging_node
from bncheck.onnx.runtimes import Runtime, runtimes
from bncheck.onnx.runtimes._tolerances import OutputScaledTolerance
from bncheck.onnx.source import InputSpec, generated_inputs

__all__ = ["verify_standalone", "STANDALONE_BATCHES"]

#: Batch sizes a graph without a source is checked at (dynamic batch axis).
STANDALONE_BATCHES = (1, 3)


def _standalone_inputs(sig: Signature, input_shapes: Sequence[tuple[int, ...]], where: str
                       ) -> list[InputSpec]:
    """Concrete shapes for every input: the graph's, with ``input_shapes`` for the symbolic
    dimensions beyond the batch axis."""
    if input_shapes and len(input_shapes) != len(sig.inputs):
        raise ModelFileError(f"{where} has {len(sig.inputs)} inputs, received "
                             f"{len(input_shapes)} --input-shape")
    specs = []
    for k, i in enumerate(sig.inputs):
        if not i.dtype.startswith("float"):
            raise ModelFileError(f"{where}: input {i.name!r} is {i.dtype}; bncheck generates "
                                 f"floating-point inputs only")
        given = input_shapes[k] if input_shapes else None
        if given is not None:
            clash = [(d, g) for d, g in zip(i.shape, given, strict=False)
                     if d is not None and d != g]
            if len(given) != len(i.shape) or (clash and i.shape[0] is None) or \
                    (clash and clash != [(i.shape[0], given[0])]):
                shown = ", ".join(n or str(d)
                                  for n, d in zip(i.dim_names, i.shape, strict=True))
                raise ModelFileError(f"Expected --input-shape for {i.name!r} to fit its "
                                     f"shape ({shown}), received "
                                     f"--input-shape={','.join(map(str, given))}")
            specs.append(InputSpec(i.name, tuple(given)))
            continue
        symbolic = [f"{i.dim_names[d]} (dim {d})" for d, v in enumerate(i.shape)
                    if v is None and d > 0]
        if symbolic:
            raise ModelFileError(f"{where}: input {i.name!r} has symbolic dimensions "
                                 f"{', '.join(symbolic)}: give --input-shape (one per input, "
                                 f"batch first, e.g. --input-shape "
                                 f"{','.join(str(v or 1) for v in i.shape)})")
        specs.append(InputSpec(i.name, tuple(v or 1 for v in i.shape)))
    return specs


def _dtype_feeds(sig: Signature, feeds: Feeds) -> Feeds:
    return {i.name: feeds[i.name].astype(i.dtype) for i in sig.inputs}


def verify_standalone(data: bytes, *, input_shapes: Sequence[tuple[int, ...]] = (),
                      seed: int = 0, where: str = "model") -> Report:
    """Verify an ONNX file with no source and no goldens: runtimes against one another.

    Inputs are generated from the graph's signature (``input_shapes`` fill in symbolic
    dimensions). Every runtime is compared with onnxruntime CPU ``DISABLE_ALL`` (or, where it
    cannot run, ``onnx.reference``), each within the sum of the two runtimes' tolerances
    (neither is the truth); batch independence is checked on every runtime and a failure
    names the nodes where the dependence starts; every BatchNormalization node and every
    recorded fold is reported. A divergence names the first node where the runtimes part.

    Raises:
        ModelFileError: non-float inputs, symbolic dimensions without ``input_shapes``.
    """
    import onnx

    graph = onnx.load_from_string(data)
    sig = signature(graph, where=where)
    specs = _standalone_inputs(sig, input_shapes, where)
    names = [s.name for s in specs]
    fixed = sig.fixed_batch
    batches = [fixed] if fixed else list(STANDALONE_BATCHES)
    report = start_report(graph, [])
    rts = skip_rows(report, runtimes(data, graph), "vs runtimes")
    anchor = next((rt for rt in rts if rt.level == "DISABLE_ALL" and "CPU" in rt.name),
                  rts[0] if rts else None)
    diverged: tuple[Runtime, Feeds] | None = None
    for b in batches:
        feeds = _dtype_feeds(sig, feeds_of(names, generated_inputs(specs, b,
                                                                  seed=seed * 1000 + b)))
        if anchor is None:
            break
        ref = run_on(report, anchor, feeds, "vs runtimes")
        if ref is None:
            continue
        for rt in rts:
            if rt is anchor:
                continue
            ys = run_on(report, rt, feeds, "vs runtimes")
            if ys is None:
                continue
            tol = _summed(rt.tolerance, anchor.tolerance)
            if compare_outputs(report, rt, ys, {anchor.label: ref}, sig.outputs, b,
                                "vs runtimes", tol, "") and diverged is None:
                diverged = (rt, feeds)
    odd = [b for b in batches if b > 1 and b % 2] or [max(batches)]
    batch_independence(report, rts, _dtype_feeds(sig, feeds_of(names, generated_inputs(
        specs, odd[0], seed=seed * 1000 + odd[0]))), seed, data)
    if report.batch_nodes:
        first = report.batch_nodes[0]
        report.localization = f"first batch-dependent node: {node_text(*first)}"
    elif diverged is not None and anchor is not None:
        report.localization = _cross_runtime_localization(data, graph, diverged[0], anchor,
                                                          diverged[1])
    elif anchor is None:
        report.failures.append("no runtime could run the graph")
    return report


def _summed(a: Tolerance, b: Tolerance) -> Tolerance:
    reason = (f"no source model, so neither runtime is the truth: the sum of both tolerances "
              f"({a.reason} | {b.reason})")
    per_max = sum(getattr(t, "atol_per_max", 0.0) for t in (a, b))
    if per_max:
        return OutputScaledTolerance(a.rtol + b.rtol, a.atol + b.atol, reason, per_max)
    return Tolerance(a.rtol + b.rtol, a.atol + b.atol, reason)


def _cross_runtime_localization(data: bytes, graph: Any, rt: Runtime, anchor: Runtime,
                                feeds: Feeds) -> str:
    """The first node where ``rt`` parts from ``anchor``, every tensor exposed on both."""
    import onnx

    from bncheck.onnx.runtimes import PLUGINS

    exposed = onnx.shape_inference.infer_shapes(graph)
    floats = {v.name for v in exposed.graph.value_info
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    have = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for t in node.output:
            if t in floats and t not in have:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(
                    t, onnx.TensorProto.FLOAT, None))
    blob = exposed.SerializeToString()
    names = [o.name for o in exposed.graph.output]
    values = []
    for target in (rt, anchor):
        plugin = next(p for p in PLUGINS if p.name == target.name and p.level == target.level)
        loaded = plugin.runtime(blob, exposed)
        if loaded.run is None:
            return (f"{rt.label} differs from {anchor.label}; cannot expose intermediates on "
                    f"{target.label}: {loaded.error or loaded.skipped or loaded.not_applicable}")
        try:
            values.append(dict(zip(names, loaded.run(feeds), strict=True)))
        except Exception as e:  # noqa: BLE001 - the runtime's own errors
            return (f"{rt.label} differs from {anchor.label}; cannot run the exposed graph on "
                    f"{target.label}: {type(e).__name__}: {one_line(e)}")
    found = first_diverging_node(values[0], values[1], graph,
                                 _summed(rt.tolerance, anchor.tolerance))
    if found is None:
        return (f"{rt.label} differs from {anchor.label}, but no node does with every tensor "
                f"exposed: the difference comes from a fusion that exposing the tensors "
                f"prevents")
    name, op, detail = found
    return (f"first diverging node: {op} node {name!r} ({rt.label} vs {anchor.label})\n"
            f"{detail}")
