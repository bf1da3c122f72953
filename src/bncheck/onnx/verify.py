"""Verify an ONNX file: structure, every runtime against the eager model (or goldens, or the
other runtimes), and batch independence; name the first diverging module or node on failure.

>>> from bncheck.onnx import build_model, export_onnx, verify_against_torch
>>> model = build_model("torch")
>>> report = verify_against_torch(export_onnx(model, exporter="torchscript"), model,
...                               batches=(1, 3))
>>> report.ok, sorted({row.check for row in report.rows})
(True, ['batch independence', 'grad modes', 'torch CUDA', 'vs eager'])

Three references, one report:

* :func:`verify_against_torch`: the eager model in **eval mode**, under ``torch.no_grad()``,
  ``torch.inference_mode()`` and with grad enabled (an eval-mode model must give one answer in
  all three; torch's own ``verify_onnx_program`` compares against the ExportedProgram instead,
  which has already baked in whatever branch the export took);
* :func:`verify_against_golden`: golden inputs and outputs (a manifest's ``.npz``);
* :func:`verify_standalone`: no source at all: the runtimes against onnxruntime CPU
  ``DISABLE_ALL`` (each within the sum of both tolerances), batch independence named node by
  node, and every BatchNormalization node and fold reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bncheck.compare import Tolerance, compare
from bncheck.onnx.bn_nodes import BNNode, Fold, bn_nodes, folds
from bncheck.onnx.graph import ModelFileError, Signature, io_specs, signature
from bncheck.onnx.localize import (
    GRAD_CONTEXTS,
    Localization,
    batch_dependent_nodes,
    bn_layers,
    eager_outputs,
    first_diverging_node,
    localize,
)
from bncheck.onnx.placement import LENET_BN_LAYERS, BNLayer, Placement, bn_placement
from bncheck.onnx.runtimes import TOLERANCES, Runtime, onnx_opset, runtimes
from bncheck.onnx.runtimes._tolerances import OutputScaledTolerance, concrete
from bncheck.onnx.source import InputSpec, ModelSource, generated_inputs, lenet_source

__all__ = ["Row", "Report", "ModelFileError", "load_onnx", "structure_problems",
           "check_signature", "verify_against_torch", "verify_against_golden",
           "verify_standalone", "TORCH_BATCHES", "STANDALONE_BATCHES"]

#: Batch sizes LeNet-BN is checked at: one sample, a small odd batch, a large batch.
TORCH_BATCHES = (1, 7, 64)
#: Batch sizes a graph without a source is checked at (dynamic batch axis).
STANDALONE_BATCHES = (1, 3)

_SHORT = {"torch.no_grad()": "no_grad", "torch.inference_mode()": "inference_mode",
          "grad enabled": "grad enabled"}


@dataclass(frozen=True)
class Row:
    """One line of the verification table."""

    check: str
    runtime: str
    level: str
    batch: int | None
    max_abs: float | None
    max_rel: float | None
    tolerance: Tolerance | None
    verdict: str  # "ok", "FAIL", "skipped", "n/a"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        tol = self.tolerance
        return {"check": self.check, "runtime": self.runtime, "level": self.level,
                "batch": self.batch, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "rtol": tol.rtol if tol else None, "atol": tol.atol if tol else None,
                "verdict": self.verdict, "note": self.note}


@dataclass
class Report:
    """Everything one verification found; ``ok`` when no row failed."""

    rows: list[Row] = field(default_factory=list)
    placement: list[Placement] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    localization: Localization | str | None = None
    opset: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    bn_nodes: list[BNNode] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    batch_nodes: list[tuple[str, str, str | None]] = field(default_factory=list)
    layers: list[BNLayer] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(r.verdict != "FAIL" for r in self.rows)

    def failure_message(self) -> str:
        """The message a failed verification raises: localization first, then the reports."""
        lines = []
        if isinstance(self.localization, Localization):
            lines.append(f"first diverging layer: {self.localization}")
        elif self.localization is not None:
            lines.append(f"localization: {self.localization}")
        if self.batch_nodes:
            lines.append("batch dependence starts at: " + "; ".join(
                _node_text(*n) for n in self.batch_nodes))
        # Graph-vs-reference reports first; the eager grad-mode ones after.
        ordered = sorted(self.failures, key=lambda f: f.startswith("eager eval output"))
        lines += ordered[:3]
        if len(ordered) > 3:
            lines.append(f"... and {len(ordered) - 3} more failed checks")
        return "\n".join(lines)


def _node_text(name: str, op: str, module: str | None) -> str:
    return f"{op} node {name!r}" + (f" (module {module})" if module else "")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_onnx(path: str | Path) -> tuple[bytes, Any]:
    """Read and parse an ONNX file, and run the structural checks on it.

    Raises:
        ModelFileError: missing file, not a protobuf ModelProto, truncated, fails
            ``onnx.checker`` (full check) or shape inference, or has no inputs or outputs.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{str(p)!r} does not exist")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{str(p)!r} is not an ONNX model (truncated or not a "
                             f"ModelProto: {_one_line(e)})") from None
    problems = structure_problems(model)
    if problems:
        raise ModelFileError(f"{str(p)!r} is not a valid ONNX model: {problems[0]}")
    signature(model, where=str(p))
    return data, model


def structure_problems(model: Any) -> list[str]:
    """``onnx.checker`` (full check) and strict shape inference; the problems found."""
    import onnx

    if not model.graph.node and not model.graph.input:
        return ["empty graph (no nodes, no inputs): not an ONNX model"]
    problems = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        problems.append(f"onnx.checker: {_one_line(e)}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        problems.append(f"shape inference: {_one_line(e)}")
    return problems


def check_signature(sig: Signature, specs: Sequence[InputSpec], *, where: str = "model"
                    ) -> None:
    """The graph must take float32 inputs of the source's shapes (dim 0 may differ).

    Raises:
        ModelFileError: another input signature (expected vs received).
    """
    want = ", ".join(f"float32(N, {', '.join(map(str, s.shape[1:]))})" for s in specs)
    got = ", ".join(f"{i.name}: {i.dtype}"
                    f"({', '.join('?' if d is None else str(d) for d in i.shape)})"
                    for i in sig.inputs)
    ok = len(sig.inputs) == len(specs) and all(
        i.dtype == "float32" and len(i.shape) == len(s.shape)
        and all(d is None or d == e for d, e in zip(i.shape[1:], s.shape[1:], strict=True))
        for i, s in zip(sig.inputs, specs, strict=False))
    if not ok:
        raise ModelFileError(f"{where}: wrong input signature: expected {len(specs)} input(s) "
                             f"{want}, received {got or 'no inputs'}")


def _errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if a.shape != e.shape or a.size == 0:
        return float("inf"), float("inf")
    diff = np.abs(a - e)
    rel = diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)
    return float(np.nanmax(diff)), float(np.nanmax(rel))


def _start(model: Any, layers: Sequence[BNLayer] | None, known: set[str] | None = None
           ) -> Report:
    report = Report(opset=onnx_opset(model),
                    inputs=io_specs(model.graph.input, model.graph.initializer),
                    outputs=io_specs(model.graph.output))
    problems = structure_problems(model)
    report.structure = problems or ["onnx.checker (full_check): ok", "shape inference: ok"]
    report.failures += problems
    report.placement = bn_placement(model, layers, known=known) if layers != [] else []
    report.layers = list(LENET_BN_LAYERS if layers is None else layers)
    report.bn_nodes = bn_nodes(model)
    report.folds = folds(model)
    return report


def _skip_rows(report: Report, rts: list[Runtime], check: str) -> list[Runtime]:
    for rt in rts:
        if rt.error:
            report.rows.append(Row(check, rt.name, rt.level, None, None, None, rt.tolerance,
                                   "FAIL", rt.error))
            report.failures.append(f"{rt.label}: {rt.error}")
        elif rt.skipped or rt.not_applicable:
            report.rows.append(Row(check, rt.name, rt.level, None, None, None, rt.tolerance,
                                   "skipped" if rt.skipped else "n/a",
                                   rt.skipped or rt.not_applicable or ""))
    return [rt for rt in rts if rt.run is not None]


Feeds = dict[str, np.ndarray]


def _run(report: Report, rt: Runtime, feeds: Feeds, check: str) -> list[np.ndarray] | None:
    """The runtime's outputs, or None after recording a FAIL row when it raised."""
    assert rt.run is not None
    batch = _batch(feeds)
    try:
        return rt.run(feeds)
    except Exception as e:  # noqa: BLE001 - any runtime error on a valid input is a failure
        why = f"raised {type(e).__name__}: {_one_line(e)}"
        report.rows.append(Row(check, rt.name, rt.level, batch, None, None, rt.tolerance,
                               "FAIL", why))
        report.failures.append(f"{rt.label} (batch {batch}) {why}")
        return None


def _batch(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _feeds(names: Sequence[str], xs: Sequence[Tensor] | Sequence[np.ndarray]) -> Feeds:
    return {n: x.numpy() if isinstance(x, Tensor) else np.asarray(x)
            for n, x in zip(names, xs, strict=True)}


def _changed_rows(feeds: Feeds, seed: int) -> Feeds:
    """The same feeds with rows 1 and up replaced by other values."""
    other = {}
    specs = [InputSpec(n, tuple(x.shape)) for n, x in feeds.items()]
    fresh = generated_inputs(specs, _batch(feeds), seed=seed + 7919)
    for (name, x), new in zip(feeds.items(), fresh, strict=True):
        y = x.copy()
        y[1:] = (new.numpy() * 3.0 - 1.0).astype(x.dtype)[1:]
        other[name] = y
    return other


def _batch_independence(report: Report, rts: list[Runtime], feeds: Feeds, seed: int,
                        data: bytes) -> None:
    """Row 0's outputs must not change when the other rows change (eval mode); when they do,
    name the nodes where the dependence starts."""
    tol = TOLERANCES["batch-independence"]
    batch = _batch(feeds)
    if batch < 2:
        report.rows.append(Row("batch independence", "all", "", batch, None, None, tol, "n/a",
                               "the graph's batch size is fixed at 1"))
        return
    other = _changed_rows(feeds, seed)
    failed = False
    for rt in rts:
        first = _run(report, rt, feeds, "batch independence")
        second = None if first is None else _run(report, rt, other, "batch independence")
        if first is None or second is None:
            continue
        worst, bad = (0.0, 0.0), None
        for y0, y1 in zip(first, second, strict=True):
            if y0.ndim == 0 or y0.shape[0] != batch:
                continue
            worst = max(worst, _errors(y1[:1], y0[:1]))
            bad = bad or compare(y1[:1], y0[:1], tolerance=tol, check_dtype=False,
                                 name=f"row 0 output ({rt.label}, batch {batch}, other rows "
                                      f"changed)")
        report.rows.append(Row("batch independence", rt.name, rt.level, batch, worst[0],
                               worst[1], tol, "ok" if bad is None else "FAIL",
                               "" if bad is None else "row 0 depends on the other rows"))
        if bad is not None:
            failed = True
            report.failures.append(str(bad))
    if failed and not report.batch_nodes:
        try:
            report.batch_nodes = batch_dependent_nodes(data, feeds, other)
        except Exception:  # noqa: BLE001 - onnxruntime cannot run the intermediates
            report.batch_nodes = []


def _compare_outputs(report: Report, rt: Runtime, ys: list[np.ndarray],
                     refs: Mapping[str, list[np.ndarray]], out_names: Sequence[str], b: int,
                     check: str, tol: Tolerance, what: str) -> str:
    """Compare a runtime's outputs with each reference; add the row; the first failing
    reference's key (or '')."""
    worst: tuple[float, float] = (0.0, 0.0)
    failed = ""
    for key, ref in refs.items():
        if len(ref) != len(ys):
            report.failures.append(f"{rt.label} (batch {b}) gave {len(ys)} outputs, "
                                   f"{what} {key} has {len(ref)}")
            failed = failed or key
            continue
        for name, y, r in zip(out_names, ys, ref, strict=False):
            worst = max(worst, _errors(y, r))
            against = " ".join(p for p in ("vs", what, key) if p)
            m = compare(y, r, tolerance=concrete(tol, r), check_dtype=False,
                        name=f"{name} ({rt.label}, batch {b}, {against})")
            if m is not None:
                failed = failed or key
                report.failures.append(str(m))
    note = " ".join(p for p in ("differs from", what, failed) if p) if failed else ""
    report.rows.append(Row(check, rt.name, rt.level, b, worst[0], worst[1], tol,
                           "FAIL" if failed else "ok", note))
    return failed


def verify_against_torch(data: bytes, model: nn.Module, *, source: ModelSource | None = None,
                         seed: int = 0, batches: Sequence[int] | None = None) -> Report:
    """Verify the ONNX bytes against the eager ``model`` in eval mode, on every runtime.

    Args:
        data: the ONNX model.
        model: the eager model (deep-copied for every forward).
        source: what the model takes (its inputs) and its batch sizes; default LeNet-BN.
        seed: seeds the input batches (``source.make_inputs(b, seed=seed * 1000 + b)``).
        batches: batch sizes (default: the source's); batch independence uses the first
            odd one above 1 (or the largest).

    Raises:
        ModelFileError: the graph's input signature does not fit the source.
    """
    import onnx

    source = source or lenet_source()
    graph = onnx.load_from_string(data)
    sig = signature(graph)
    check_signature(sig, source.inputs)
    batches = [sig.fixed_batch] if sig.fixed_batch else list(batches or source.batches)
    names = [i.name for i in sig.inputs]
    odd = [b for b in batches if b > 1 and b % 2] or [max(batches)]
    probe = source.make_inputs(max(2, odd[0]), seed=seed * 1000 + odd[0])
    layers, known = bn_layers(model, probe)
    report = _start(graph, layers, known)
    rts = _skip_rows(report, runtimes(data, graph), "vs eager")
    first_fail: tuple[tuple[Tensor, ...], str] | None = None
    if not torch.cuda.is_available():
        report.rows.append(Row("torch CUDA", "torch CUDA", "", None, None, None,
                               TOLERANCES["torch-cuda"], "skipped",
                               "torch.cuda.is_available() is False"))
    for b in batches:
        xs = source.make_inputs(b, seed=seed * 1000 + b)
        refs = {ctx: [t.numpy() for t in eager_outputs(model, xs, ctx)] for ctx in GRAD_CONTEXTS}
        base = refs["torch.no_grad()"]
        for ctx in list(GRAD_CONTEXTS)[1:]:
            _grad_mode_row(report, refs[ctx], base, ctx, b)
        if torch.cuda.is_available():
            _torch_cuda_row(report, model, xs, base)
        for rt in rts:
            ys = _run(report, rt, _feeds(names, xs), "vs eager")
            if ys is None:
                continue
            ctx = _compare_outputs(report, rt, ys, refs, sig.outputs, b, "vs eager",
                                   rt.tolerance, "eager eval under")
            if ctx and (first_fail is None or first_fail[0][0].shape[0] < 2 <= b):
                first_fail = (xs, ctx)
    _batch_independence(report, rts, _feeds(names, source.make_inputs(
        odd[0], seed=seed * 1000 + odd[0])), seed, data)
    if not report.ok:
        xs, ctx = first_fail or (probe, "torch.no_grad()")
        if xs[0].shape[0] < 2:
            xs = probe
        try:
            report.localization = localize(data, model, xs, ctx, input_names=names,
                                           layers=layers) or (
                "no layer's tensors diverge under onnxruntime DISABLE_ALL: the difference "
                "comes from a runtime or its graph optimizations (see the failing rows), "
                "not from the exported graph")
        except Exception as e:  # noqa: BLE001 - onnxruntime cannot run the graph at all
            report.localization = (f"cannot localize: onnxruntime cannot run the graph's "
                                   f"intermediates ({type(e).__name__}: {_one_line(e)})")
    return report


def _grad_mode_row(report: Report, ys: list[np.ndarray], base: list[np.ndarray], ctx: str,
                   b: int) -> None:
    tol = TOLERANCES["grad-mode"]
    worst, bad = (0.0, 0.0), None
    for y, r in zip(ys, base, strict=True):
        worst = max(worst, _errors(y, r))
        bad = bad or compare(y, r, tolerance=tol, check_dtype=False,
                             name=f"eager eval output under {ctx} vs torch.no_grad() (batch {b})")
    report.rows.append(Row("grad modes", "torch CPU", _SHORT[ctx], b, worst[0], worst[1], tol,
                           "ok" if bad is None else "FAIL",
                           "" if bad is None else "eval output depends on grad mode"))
    if bad is not None:
        report.failures.append(str(bad))


def _torch_cuda_row(report: Report, model: nn.Module, xs: Sequence[Tensor],
                    base: list[np.ndarray]) -> None:
    import copy

    tol = TOLERANCES["torch-cuda"]
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cuda = copy.deepcopy(model).cuda().eval()
        ys = [t.cpu().numpy() for t in eager_outputs(cuda, [x.cuda() for x in xs])]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    worst, bad = (0.0, 0.0), None
    for y, r in zip(ys, base, strict=True):
        worst = max(worst, _errors(y, r))
        bad = bad or compare(y, r, tolerance=tol, check_dtype=False,
                             name=f"eager eval output on CUDA vs CPU (batch {xs[0].shape[0]})")
    report.rows.append(Row("torch CUDA", "torch CUDA", "", xs[0].shape[0], worst[0], worst[1],
                           tol, "ok" if bad is None else "FAIL"))
    if bad is not None:
        report.failures.append(str(bad))


def verify_against_golden(data: bytes, golden: Mapping[str, np.ndarray], *, seed: int = 0,
                          layers: Sequence[BNLayer] | None = None) -> Report:
    """Verify the ONNX bytes against golden inputs and outputs (keyed by graph names).

    ``layers`` are the BatchNorm modules for the placement summary (``None``: LeNet-BN's, as
    manifests before bncheck-onnx-manifest/2 recorded none; ``[]``: none).

    The golden batch is checked whole, as its first row and as its first rows up to an odd
    size (eval mode: each row's output is its own), so batch size 1, odd and large all run.

    Raises:
        ModelFileError: the golden lacks the graph's inputs or outputs.
    """
    import onnx

    graph = onnx.load_from_string(data)
    sig = signature(graph)
    report = _start(graph, layers)
    in_names = [i.name for i in sig.inputs]
    missing = [n for n in [*in_names, *sig.outputs] if n not in golden]
    if missing:
        raise ModelFileError(f"the golden has no array for {missing}; it has {sorted(golden)}")
    xs = [np.asarray(golden[n], dtype=np.float32) for n in in_names]
    n = xs[0].shape[0]
    sizes = sorted({1, min(n, 5 if n > 5 else max(1, n - (1 - n % 2))), n})
    if sig.fixed_batch is not None:
        if sig.fixed_batch > n:
            raise ModelFileError(f"the graph's batch size is fixed at {sig.fixed_batch}; the "
                                 f"golden has {n} rows")
        sizes = [sig.fixed_batch]
    rts = _skip_rows(report, runtimes(data, graph), "vs golden")
    for b in sizes:
        expected = {"": [np.asarray(golden[o])[:b] for o in sig.outputs]}
        for rt in rts:
            ys = _run(report, rt, _feeds(in_names, [x[:b] for x in xs]), "vs golden")
            if ys is not None:
                _compare_outputs(report, rt, ys, expected, sig.outputs, b, "vs golden",
                                 rt.tolerance, "golden")
    _batch_independence(report, rts, _feeds(in_names, [x[:max(sizes)] for x in xs]), seed,
                        data)
    if not report.ok and report.localization is None:
        stats = [p for p in report.placement if p.kind == "batch-statistics"]
        report.localization = (
            f"{stats[0]} (from the graph; give --bn or --model to compare intermediates)"
            if stats else "no PyTorch source to compare intermediates with: give --bn or "
                          "--model to localize")
    return report


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
    report = _start(graph, [])
    rts = _skip_rows(report, runtimes(data, graph), "vs runtimes")
    anchor = next((rt for rt in rts if rt.level == "DISABLE_ALL" and "CPU" in rt.name),
                  rts[0] if rts else None)
    diverged: tuple[Runtime, Feeds] | None = None
    for b in batches:
        feeds = _dtype_feeds(sig, _feeds(names, generated_inputs(specs, b,
                                                                  seed=seed * 1000 + b)))
        if anchor is None:
            break
        ref = _run(report, anchor, feeds, "vs runtimes")
        if ref is None:
            continue
        for rt in rts:
            if rt is anchor:
                continue
            ys = _run(report, rt, feeds, "vs runtimes")
            if ys is None:
                continue
            tol = _summed(rt.tolerance, anchor.tolerance)
            if _compare_outputs(report, rt, ys, {anchor.label: ref}, sig.outputs, b,
                                "vs runtimes", tol, "") and diverged is None:
                diverged = (rt, feeds)
    odd = [b for b in batches if b > 1 and b % 2] or [max(batches)]
    _batch_independence(report, rts, _dtype_feeds(sig, _feeds(names, generated_inputs(
        specs, odd[0], seed=seed * 1000 + odd[0]))), seed, data)
    if report.batch_nodes:
        first = report.batch_nodes[0]
        report.localization = f"first batch-dependent node: {_node_text(*first)}"
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
                    f"{target.label}: {type(e).__name__}: {_one_line(e)}")
    found = first_diverging_node(values[0], values[1], graph,
                                 _summed(rt.tolerance, anchor.tolerance))
    if found is None:
        return (f"{rt.label} differs from {anchor.label}, but no node does with every tensor "
                f"exposed: the difference comes from a fusion that exposing the tensors "
                f"prevents")
    name, op, detail = found
    return (f"first diverging node: {op} node {name!r} ({rt.label} vs {anchor.label})\n"
            f"{detail}")
