"""Verify an ONNX file: structure, every runtime against the eager model (or goldens), and
batch independence; localize the first diverging layer when a check fails.

>>> from bncheck.onnx import build_model, export_onnx, verify_against_torch
>>> model = build_model("torch")
>>> report = verify_against_torch(export_onnx(model, exporter="torchscript"), model,
...                               batches=(1, 3))
>>> report.ok, sorted({row.check for row in report.rows})
(True, ['batch independence', 'grad modes', 'torch CUDA', 'vs eager'])

The eager reference is the model in **eval mode**, run under ``torch.no_grad()``,
``torch.inference_mode()`` and with grad enabled: an eval-mode model must give one answer in all
three, and the graph must match each (torch's own ``verify_onnx_program`` compares against the
ExportedProgram instead, which has already baked in whatever branch the export took).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bncheck.compare import Tolerance, compare, max_errors
from bncheck.errors import UsageError
from bncheck.models import BN_LAYER_INDICES, INPUT_SHAPE
from bncheck.onnx.build import make_inputs
from bncheck.onnx.localize import (
    GRAD_CONTEXTS,
    Localization,
    eager_outputs,
    localize,
    module_label,
)
from bncheck.onnx.placement import Placement, bn_placement
from bncheck.onnx.runtimes import TOLERANCES, Runtime, onnx_opset, runtimes

__all__ = ["Row", "Report", "ModelFileError", "load_onnx", "structure_problems", "signature",
           "verify_against_torch", "verify_against_golden", "TORCH_BATCHES"]

#: Batch sizes checked against the eager model: one sample, a small odd batch, a large batch.
TORCH_BATCHES = (1, 7, 64)


_SHORT = {"torch.no_grad()": "no_grad", "torch.inference_mode()": "inference_mode",
          "grad enabled": "grad enabled"}


class ModelFileError(UsageError):
    """The file is not a valid ONNX model with LeNet-BN's input signature."""


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
        # Graph-vs-reference reports first; the eager grad-mode ones after.
        ordered = sorted(self.failures, key=lambda f: f.startswith("eager eval output"))
        lines += ordered[:3]
        if len(ordered) > 3:
            lines.append(f"... and {len(ordered) - 3} more failed checks")
        return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_onnx(path: str | Path) -> tuple[bytes, Any]:
    """Read and parse an ONNX file, and run the structural checks on it.

    Raises:
        ModelFileError: missing file, not a protobuf ModelProto, truncated, fails
            ``onnx.checker`` (full check) or shape inference, or a signature other than
            one float32 input ``(N, 1, 28, 28)``.
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


def _io(values: Any, initializers: Any = ()) -> list[dict[str, Any]]:
    """Name, shape and dtype of graph inputs/outputs; inputs that are initializers (as old
    exports list the weights, opset < 9) are left out."""
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


def signature(model: Any, *, where: str = "model") -> int | None:
    """Check for one float32 ``(N, 1, 28, 28)`` input; return N when fixed, None when dynamic.

    Raises:
        ModelFileError: another input signature.
    """
    inputs = _io(model.graph.input, model.graph.initializer)
    want = f"one float32 input of shape (N, {', '.join(map(str, INPUT_SHAPE))})"
    got = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in inputs) or "no inputs"
    ok = (len(inputs) == 1 and inputs[0]["dtype"] == "float32" and len(inputs[0]["shape"]) == 4
          and tuple(inputs[0]["shape"][1:]) == INPUT_SHAPE)
    if not ok or not model.graph.output:
        raise ModelFileError(f"{where}: wrong input signature: expected {want}, "
                             f"received {got}")
    n = inputs[0]["shape"][0]
    return n if isinstance(n, int) and n > 0 else None


def _errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    return max_errors(np.asarray(actual), np.asarray(expected))


def _start(data: bytes, model: Any, placement_labels: Mapping[int, str] | None) -> Report:
    report = Report(opset=onnx_opset(model),
                    inputs=_io(model.graph.input, model.graph.initializer),
                    outputs=_io(model.graph.output))
    problems = structure_problems(model)
    report.structure = problems or ["onnx.checker (full_check): ok", "shape inference: ok"]
    report.failures += problems
    report.placement = bn_placement(model, placement_labels)
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


def _run(report: Report, rt: Runtime, x: np.ndarray, check: str) -> list[np.ndarray] | None:
    """The runtime's outputs, or None after recording a FAIL row when it raised."""
    assert rt.run is not None
    try:
        return rt.run(x)
    except Exception as e:  # noqa: BLE001 - any runtime error on a valid input is a failure
        lines = str(e).strip().splitlines()
        why = f"raised {type(e).__name__}: {lines[0] if lines else ''}"
        report.rows.append(Row(check, rt.name, rt.level, x.shape[0], None, None, rt.tolerance,
                               "FAIL", why))
        report.failures.append(f"{rt.label} (batch {x.shape[0]}) {why}")
        return None


def _batch_independence(report: Report, rts: list[Runtime], x: np.ndarray, seed: int) -> None:
    """Row 0's output must not change when the other rows change (eval mode)."""
    tol = TOLERANCES["batch-independence"]
    if x.shape[0] < 2:
        report.rows.append(Row("batch independence", "all", "", int(x.shape[0]), None, None,
                               tol, "n/a", "the graph's batch size is fixed at 1"))
        return
    other = x.copy()
    other[1:] = make_inputs(x.shape[0] - 1, seed=seed + 7919).numpy() * 3.0 - 1.0
    for rt in rts:
        first = _run(report, rt, x, "batch independence")
        second = None if first is None else _run(report, rt, other, "batch independence")
        if first is None or second is None:
            continue
        y0, y1 = first[0][:1], second[0][:1]
        m = compare(y1, y0, tolerance=tol, name=f"row 0 output ({rt.label}, batch "
                    f"{x.shape[0]}, other rows changed)", check_dtype=False)
        abs_, rel = _errors(y1, y0)
        report.rows.append(Row("batch independence", rt.name, rt.level, x.shape[0], abs_, rel,
                               tol, "ok" if m is None else "FAIL",
                               "" if m is None else "row 0 depends on the other rows"))
        if m is not None:
            report.failures.append(str(m))


def verify_against_torch(data: bytes, model: nn.Module, *, seed: int = 0,
                         batches: Sequence[int] = TORCH_BATCHES,
                         placement_labels: Mapping[int, str] | None = None) -> Report:
    """Verify the ONNX bytes against the eager ``model`` in eval mode, on every runtime.

    Args:
        data: the ONNX model.
        model: the eager model (deep-copied for every forward; put in eval mode).
        seed: seeds the input batches (``make_inputs(b, seed=seed * 1000 + b)``).
        batches: batch sizes to check; the batch-independence check uses the first
            odd one above 1 (or the largest).
        placement_labels: BatchNorm layers for the placement summary (default LeNet-BN's).
    """
    import onnx

    graph = onnx.load_from_string(data)
    fixed = signature(graph)
    if fixed is not None:
        batches = [fixed]
    if placement_labels is None:
        children = list(model.children())
        placement_labels = {k: module_label(children[k]) for k in BN_LAYER_INDICES
                            if k < len(children)}
    report = _start(data, graph, placement_labels)
    rts = _skip_rows(report, runtimes(data, graph), "vs eager")
    first_fail: tuple[Tensor, str] | None = None
    if not torch.cuda.is_available():
        report.rows.append(Row("torch CUDA", "torch CUDA", "", None, None, None,
                               TOLERANCES["torch-cuda"], "skipped",
                               "torch.cuda.is_available() is False"))
    for b in batches:
        x = make_inputs(b, seed=seed * 1000 + b)
        refs = {ctx: eager_outputs(model, x, ctx)[1].numpy() for ctx in GRAD_CONTEXTS}
        base = refs["torch.no_grad()"]
        for ctx in list(GRAD_CONTEXTS)[1:]:
            tol = TOLERANCES["grad-mode"]
            m = compare(refs[ctx], base, tolerance=tol, check_dtype=False,
                        name=f"eager eval output under {ctx} vs torch.no_grad() (batch {b})")
            abs_, rel = _errors(refs[ctx], base)
            report.rows.append(Row("grad modes", "torch CPU", _SHORT[ctx], b, abs_, rel, tol,
                                   "ok" if m is None else "FAIL",
                                   "" if m is None else "eval output depends on grad mode"))
            if m is not None:
                report.failures.append(str(m))
        if torch.cuda.is_available():
            _torch_cuda_row(report, model, x, base)
        for rt in rts:
            outs = _run(report, rt, x.numpy(), "vs eager")
            if outs is None:
                continue
            y = outs[0]
            worst: tuple[float, float, str] = (0.0, 0.0, "")
            failed_ctx = ""
            for ctx, ref in refs.items():
                abs_, rel = _errors(y, ref)
                if abs_ >= worst[0]:
                    worst = (abs_, rel, ctx)
                m = compare(y, ref, tolerance=rt.tolerance, check_dtype=False,
                            name=f"{graph.graph.output[0].name} ({rt.label}, batch {b}, vs "
                                 f"eager eval under {ctx})")
                if m is not None:
                    failed_ctx = failed_ctx or ctx
                    report.failures.append(str(m))
                    if first_fail is None or (first_fail[0].shape[0] < 2 <= b):
                        first_fail = (x, ctx)
            report.rows.append(Row(
                "vs eager", rt.name, rt.level, b, worst[0], worst[1], rt.tolerance,
                "FAIL" if failed_ctx else "ok", f"differs from eager under {failed_ctx}"
                if failed_ctx else ""))
    odd = [b for b in batches if b > 1 and b % 2] or [max(batches)]
    _batch_independence(report, rts, make_inputs(odd[0], seed=seed * 1000 + odd[0]).numpy(),
                        seed)
    if not report.ok:
        x, ctx = first_fail or (make_inputs(odd[0], seed=seed * 1000 + odd[0]),
                                "torch.no_grad()")
        if x.shape[0] < 2:
            x = make_inputs(odd[0], seed=seed * 1000 + odd[0])
        try:
            report.localization = localize(data, model, x, ctx) or (
                "no layer's tensors diverge under onnxruntime DISABLE_ALL: the difference "
                "comes from a runtime or its graph optimizations (see the failing rows), "
                "not from the exported graph")
        except Exception as e:  # noqa: BLE001 - onnxruntime cannot run the graph at all
            lines = str(e).strip().splitlines()
            report.localization = (f"cannot localize: onnxruntime cannot run the graph's "
                                   f"intermediates ({type(e).__name__}: "
                                   f"{lines[0] if lines else ''})")
    return report


def _torch_cuda_row(report: Report, model: nn.Module, x: Tensor, base: np.ndarray) -> None:
    import copy

    tol = TOLERANCES["torch-cuda"]
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            y = copy.deepcopy(model).cuda().eval()(x.cuda()).cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    m = compare(y, base, tolerance=tol, check_dtype=False,
                name=f"eager eval output on CUDA vs CPU (batch {x.shape[0]})")
    abs_, rel = _errors(y, base)
    report.rows.append(Row("torch CUDA", "torch CUDA", "", x.shape[0], abs_, rel, tol,
                           "ok" if m is None else "FAIL"))
    if m is not None:
        report.failures.append(str(m))


def verify_against_golden(data: bytes, golden: Mapping[str, np.ndarray], *, seed: int = 0,
                          placement_labels: Mapping[int, str] | None = None) -> Report:
    """Verify the ONNX bytes against golden inputs and outputs (keyed by graph names).

    The golden batch is checked whole, as its first row and as its first rows up to an odd
    size (eval mode: each row's output is its own), so batch size 1, odd and large all run.

    Raises:
        ModelFileError: the golden lacks the graph's input or outputs.
    """
    import onnx

    graph = onnx.load_from_string(data)
    fixed = signature(graph)
    report = _start(data, graph, placement_labels)
    in_name = graph.graph.input[0].name
    out_names = [o.name for o in graph.graph.output]
    missing = [n for n in [in_name, *out_names] if n not in golden]
    if missing:
        raise ModelFileError(f"the golden has no array for {missing}; it has {sorted(golden)}")
    x_all = np.asarray(golden[in_name], dtype=np.float32)
    n = x_all.shape[0]
    sizes = sorted({1, min(n, 5 if n > 5 else max(1, n - (1 - n % 2))), n})
    if fixed is not None:
        if fixed > n:
            raise ModelFileError(f"the graph's batch size is fixed at {fixed}; the golden "
                                 f"has {n} rows")
        sizes = [fixed]
    rts = _skip_rows(report, runtimes(data, graph), "vs golden")
    for b in sizes:
        for rt in rts:
            ys = _run(report, rt, x_all[:b], "vs golden")
            if ys is None:
                continue
            worst, bad = (0.0, 0.0), False
            for name, y in zip(out_names, ys, strict=True):
                expected = np.asarray(golden[name])[:b]
                abs_, rel = _errors(y, expected)
                worst = max(worst, (abs_, rel))
                m = compare(y, expected, tolerance=rt.tolerance, check_dtype=False,
                            name=f"{name} ({rt.label}, batch {b}, vs golden)")
                if m is not None:
                    bad = True
                    report.failures.append(str(m))
            report.rows.append(Row("vs golden", rt.name, rt.level, b, worst[0], worst[1],
                                   rt.tolerance, "FAIL" if bad else "ok"))
    _batch_independence(report, rts, x_all[:max(sizes)], seed)
    if not report.ok:
        stats = [p for p in report.placement if p.kind == "batch-statistics"]
        report.localization = (
            f"layer {stats[0].layer}: {stats[0].module} — {stats[0].detail} (from the graph; "
            f"give --bn to compare intermediates)" if stats else
            "no PyTorch source to compare intermediates with: give --bn to localize")
    return report
