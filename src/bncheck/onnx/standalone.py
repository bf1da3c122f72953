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

import numpy as np

from bncheck.engine.compare import Tolerance
from bncheck.onnx._report import (
    Feeds,
    Report,
    batch_independence,
    batch_of,
    compare_outputs,
    node_text,
    one_line,
    run_on,
    skip_rows,
    start_report,
)
from bncheck.onnx.graph import ModelFileError, Signature, float_types, signature
from bncheck.onnx.localize import first_diverging_node, first_nonfinite_node
from bncheck.onnx.runtimes import Runtime, runtimes
from bncheck.onnx.runtimes._tolerances import OutputScaledTolerance
from bncheck.onnx.source import InputSpec, generated_inputs

__all__ = ["verify_standalone", "STANDALONE_BATCHES"]

#: Batch sizes a graph without a source is checked at (dynamic batch axis).
STANDALONE_BATCHES = (1, 3)

#: The input dtypes bncheck generates values for.
_FLOATS = ("float16", "float32", "float64")


def _batched(sig: Signature) -> set[str]:
    """The inputs with a batch axis: dim 0 is the first input's (the same symbol, or the same
    fixed size). The others (a BatchNormalization's scale/bias/mean/var fed as graph inputs, a
    per-channel parameter) are fed at their declared shape and left alone by the batch check.
    """
    first = sig.inputs[0]
    found = {first.name}
    for i in sig.inputs[1:]:
        if not i.shape or not first.shape:
            continue
        same_symbol = i.shape[0] is None and i.dim_names[0] == first.dim_names[0]
        same_size = i.shape[0] is not None and i.shape[0] == first.shape[0]
        if same_symbol or same_size:
            found.add(i.name)
    return found


def _standalone_inputs(sig: Signature, input_shapes: Sequence[tuple[int, ...]], where: str
                       ) -> list[InputSpec]:
    """Concrete shapes for every input: the graph's, with ``input_shapes`` for the symbolic
    dimensions beyond the batch axis."""
    if input_shapes and len(input_shapes) != len(sig.inputs):
        raise ModelFileError(f"{where} has {len(sig.inputs)} inputs, received "
                             f"{len(input_shapes)} --input-shape")
    specs = []
    for k, i in enumerate(sig.inputs):
        if i.dtype not in _FLOATS:
            raise ModelFileError(f"{where}: input {i.name!r} is {i.dtype}; bncheck generates "
                                 f"{', '.join(_FLOATS)} inputs only")
        shown = ", ".join(n or str(d) for n, d in zip(i.dim_names, i.shape, strict=True))
        if 0 in i.shape:
            raise ModelFileError(f"{where}: input {i.name!r} has shape ({shown}), with a "
                                 f"zero-size dimension {i.shape.index(0)}: there are no values "
                                 f"to compare")
        given = input_shapes[k] if input_shapes else None
        if given is not None:
            clash = [(d, g) for d, g in zip(i.shape, given, strict=False)
                     if d is not None and d != g]
            if len(given) != len(i.shape) or (clash and i.shape[0] is None) or \
                    (clash and clash != [(i.shape[0], given[0])]):
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


def _feeds(sig: Signature, specs: Sequence[InputSpec], batched: set[str], batch: int,
           seed: int) -> Feeds:
    """Generated inputs in the graph's dtypes: batched inputs at ``batch`` rows, the others at
    their declared shape (the same values at every batch)."""
    rows = [s for s in specs if s.name in batched]
    fixed = [s for s in specs if s.name not in batched]
    made = dict(zip([s.name for s in rows],
                    generated_inputs(rows, batch, seed=seed * 1000 + batch), strict=True))
    whole = generated_inputs([InputSpec(s.name, (1, *s.shape)) for s in fixed], 1,
                             seed=seed * 1000 + 999) if fixed else ()
    made.update((s.name, x[0]) for s, x in zip(fixed, whole, strict=True))
    return {i.name: made[i.name].numpy().astype(i.dtype) for i in sig.inputs}


def _inputs_note(sig: Signature, specs: Sequence[InputSpec], batched: set[str],
                 batches: Sequence[int], seed: int) -> str:
    """What was fed: the range, the seed, each input's shape and dtype."""
    shapes = "; ".join(
        f"{s.name} ({', '.join(['N', *map(str, s.shape[1:])])}) {i.dtype}" if s.name in batched
        else f"{s.name} ({', '.join(map(str, s.shape))}) {i.dtype}, no batch axis: fed at its "
             f"declared shape" for s, i in zip(specs, sig.inputs, strict=True))
    return (f"inputs: generated, uniform in [0, 1) (seed {seed}; without a source the model's "
            f"expected input range is unknown), N = {', '.join(map(str, batches))}: {shapes}")


def _nonfinite(report: Report, rt: Runtime, ys: list[np.ndarray], names: Sequence[str],
               data: bytes, feeds: Feeds) -> None:
    """Finite inputs must give finite outputs: otherwise fail, naming the first node that makes
    a NaN or an infinity out of finite values (a negative running variance, a zero one with
    epsilon 0)."""
    bad = [f"{n!r} ({int(np.size(y) - np.isfinite(y).sum())} of {np.size(y)})"
           for n, y in zip(names, ys, strict=False)
           if np.asarray(y).dtype.kind == "f" and not np.isfinite(y).all()]
    if not bad:
        return
    report.failures.append(f"{rt.label} (batch {batch_of(feeds)}): non-finite outputs (NaN or "
                           f"infinity) on finite inputs: {', '.join(bad)}")
    if report.localization is None:
        found = first_nonfinite_node(data, feeds)
        report.localization = ("first node with a non-finite output on finite inputs: "
                               + (node_text(*found) if found else "not found"))


def verify_standalone(data: bytes, *, input_shapes: Sequence[tuple[int, ...]] = (),
                      seed: int = 0, where: str = "model", training_graph: bool = False
                      ) -> Report:
    """Verify an ONNX file with no source and no goldens: runtimes against one another.

    Inputs are generated from the graph's signature (``input_shapes`` fill in symbolic
    dimensions). Every runtime is compared with onnxruntime CPU ``DISABLE_ALL`` (or, where it
    cannot run, ``onnx.reference``), each within the sum of the two runtimes' tolerances
    (neither is the truth); batch independence is checked on every runtime and a failure
    names the nodes where the dependence starts; every BatchNormalization node and every
    recorded fold is reported. A divergence names the first node where the runtimes part.
    Inputs whose dim 0 is not the batch axis (a BatchNormalization's statistics fed as graph
    inputs) are fed at their declared shape. A training-mode BatchNormalization fails (also
    where a fixed batch of 1 hides it from the batch check), and so do non-finite outputs on
    finite inputs (a negative running variance), each naming the node.

    ``training_graph``: the graph was exported in training mode on purpose (its
    BatchNormalization nodes normalize with batch statistics): the runtimes are still compared
    with one another, but batch independence is not required and training-mode nodes do not
    fail; a graph with no training-mode node then fails (the declaration does not hold).

    Raises:
        ModelFileError: inputs that are not float16/32/64, zero-size dimensions, symbolic
            dimensions without ``input_shapes``.
    """
    import onnx

    graph = onnx.load_from_string(data)
    sig = signature(graph, where=where)
    specs = _standalone_inputs(sig, input_shapes, where)
    batched = _batched(sig)
    fixed = sig.fixed_batch
    batches = [fixed] if fixed else list(STANDALONE_BATCHES)
    report = start_report(graph, [])
    report.notes.append(_inputs_note(sig, specs, batched, batches, seed))
    rts = skip_rows(report, runtimes(data, graph), "vs runtimes")
    anchor = next((rt for rt in rts if rt.level == "DISABLE_ALL" and "CPU" in rt.name),
                  rts[0] if rts else None)
    diverged: tuple[Runtime, Feeds] | None = None
    for b in batches:
        feeds = _feeds(sig, specs, batched, b, seed)
        if anchor is None:
            break
        ref = run_on(report, anchor, feeds, "vs runtimes")
        if ref is None:
            continue
        _nonfinite(report, anchor, ref, sig.outputs, data, feeds)
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
    training = [n for n in report.bn_nodes if n.batch_statistics]
    if training_graph:
        _declared_training(report, training)
        training = []
    else:
        odd = [b for b in batches if b > 1 and b % 2] or [max(batches)]
        batch_independence(report, rts, _feeds(sig, specs, batched, odd[0], seed), seed, data,
                           batched)
    report.failures += [f"BatchNormalization node {n.name!r} has training_mode=1: it "
                        f"normalizes with the statistics of the batch it is given, not its "
                        f"stored running statistics (a graph exported in training mode on "
                        f"purpose: check it with --training-graph)" for n in training]
    if report.batch_nodes:
        first = report.batch_nodes[0]
        report.localization = f"first batch-dependent node: {node_text(*first)}"
    elif training and report.localization is None:
        first_bn = training[0]
        report.localization = (f"BatchNormalization node {first_bn.name!r}"
                               + (f" (inside {first_bn.subgraph})" if first_bn.subgraph else "")
                               + " normalizes with batch statistics (training_mode=1)")
    elif diverged is not None and anchor is not None and report.localization is None:
        report.localization = _cross_runtime_localization(data, graph, diverged[0], anchor,
                                                          diverged[1])
    elif anchor is None:
        report.failures.append("no runtime could run the graph")
    return report


def _declared_training(report: Report, training: Sequence[Any]) -> None:
    """A graph declared to be in training mode: say what is not checked, and fail when no
    BatchNormalization node normalizes with batch statistics."""
    if not training:
        report.failures.append(
            "declared a training-mode graph (--training-graph), but no BatchNormalization node "
            "normalizes with batch statistics"
            + (f" ({len(report.bn_nodes)} in inference mode)" if report.bn_nodes else
               " (the graph has none)"))
        return
    names = ", ".join(repr(n.name) for n in training)
    report.notes.append(f"training-mode graph (--training-graph): batch independence not "
                        f"checked; BatchNormalization {names} normalize with batch statistics "
                        f"on purpose")


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
    floats = {v.name: v.type.tensor_type.elem_type for v in exposed.graph.value_info
              if v.type.tensor_type.elem_type in float_types()}
    have = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for t in node.output:
            if t in floats and t not in have:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(
                    t, floats[t], None))
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
