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
* :func:`bncheck.onnx.standalone.verify_standalone`: no source at all: the runtimes against
  onnxruntime CPU ``DISABLE_ALL`` (each within the sum of both tolerances), batch independence
  named node by node, and every BatchNormalization node and fold reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bncheck.engine.compare import compare, max_errors
from bncheck.onnx._report import (
    Report,
    Row,
    batch_independence,
    compare_outputs,
    feeds_of,
    one_line,
    run_on,
    skip_rows,
    start_report,
    structure_problems,
)
from bncheck.onnx.graph import ModelFileError, Signature, signature
from bncheck.onnx.localize import GRAD_CONTEXTS, bn_layers, eager_outputs, localize
from bncheck.onnx.placement import BNLayer
from bncheck.onnx.runtimes import TOLERANCES, runtimes
from bncheck.onnx.source import InputSpec, ModelSource, lenet_source

__all__ = ["Row", "Report", "ModelFileError", "load_onnx", "structure_problems",
           "check_signature", "verify_against_torch", "verify_against_golden", "TORCH_BATCHES"]

#: Batch sizes LeNet-BN is checked at: one sample, a small odd batch, a large batch.
TORCH_BATCHES = (1, 7, 64)

_SHORT = {"torch.no_grad()": "no_grad", "torch.inference_mode()": "inference_mode",
          "grad enabled": "grad enabled"}


def load_onnx(path: str | Path) -> tuple[bytes, Any]:
    """Read and parse an ONNX file, and run the structural checks on it.

    Raises:
        ModelFileError: missing file, not a protobuf ModelProto, truncated, fails
            ``onnx.checker`` (full check) or shape inference, or has no inputs or outputs.
    """
    import onnx
    from google.protobuf.message import DecodeError

    from bncheck.infra.io import describe_path

    p = Path(path)
    problem = describe_path(p)  # a FIFO, a device, a name too long: said as such
    if problem is not None:
        raise ModelFileError(f"{problem}, expected an ONNX file")
    if p.is_dir():
        raise ModelFileError(f"{str(p)!r} is a directory, expected an ONNX file")
    if not p.is_file():
        raise ModelFileError(f"{str(p)!r} does not exist")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{str(p)!r} is not an ONNX model (truncated or not a "
                             f"ModelProto: {one_line(e)})") from None
    if _uses_external_data(model):
        data, model = _with_external_data(model, p)
    problems = structure_problems(model)
    if problems:
        raise ModelFileError(f"{str(p)!r} is not a valid ONNX model: {problems[0]}")
    signature(model, where=str(p))
    return data, model


def _uses_external_data(model: Any) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def _with_external_data(model: Any, path: Path) -> tuple[bytes, Any]:
    """The model with the tensors it keeps in external data files (``onnx.save(...,
    save_as_external_data=True)``, located relative to the model's folder) read in.

    Raises:
        ModelFileError: a data file is missing or short, or the whole model is over
            protobuf's 2 GB limit.
    """
    from onnx.checker import ValidationError
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, ValidationError) as e:
        raise ModelFileError(f"{str(path)!r} keeps tensors in external data files, expected "
                             f"next to it: {one_line(e)}") from None
    try:
        return model.SerializeToString(), model
    except ValueError as e:
        raise ModelFileError(f"{str(path)!r} with its external data is over protobuf's 2 GB "
                             f"limit: bncheck checks models that fit in memory as one "
                             f"message ({one_line(e)})") from None


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
    report = start_report(graph, layers, known)
    rts = skip_rows(report, runtimes(data, graph), "vs eager")
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
            ys = run_on(report, rt, feeds_of(names, xs), "vs eager")
            if ys is None:
                continue
            ctx = compare_outputs(report, rt, ys, refs, sig.outputs, b, "vs eager",
                                   rt.tolerance, "eager eval under")
            if ctx and (first_fail is None or first_fail[0][0].shape[0] < 2 <= b):
                first_fail = (xs, ctx)
    batch_independence(report, rts, feeds_of(names, source.make_inputs(
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
                                   f"intermediates ({type(e).__name__}: {one_line(e)})")
    return report


def _grad_mode_row(report: Report, ys: list[np.ndarray], base: list[np.ndarray], ctx: str,
                   b: int) -> None:
    tol = TOLERANCES["grad-mode"]
    worst, bad = (0.0, 0.0), None
    for y, r in zip(ys, base, strict=True):
        worst = max(worst, max_errors(y, r))
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
        worst = max(worst, max_errors(y, r))
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
    report = start_report(graph, layers)
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
    rts = skip_rows(report, runtimes(data, graph), "vs golden")
    for b in sizes:
        expected = {"": [np.asarray(golden[o])[:b] for o in sig.outputs]}
        for rt in rts:
            ys = run_on(report, rt, feeds_of(in_names, [x[:b] for x in xs]), "vs golden")
            if ys is not None:
                compare_outputs(report, rt, ys, expected, sig.outputs, b, "vs golden",
                                 rt.tolerance, "golden")
    batch_independence(report, rts, feeds_of(in_names, [x[:max(sizes)] for x in xs]), seed,
                        data)
    if not report.ok and report.localization is None:
        stats = [p for p in report.placement if p.kind == "batch-statistics"]
        report.localization = (
            f"{stats[0]} (from the graph; give --bn or --model to compare intermediates)"
            if stats else "no PyTorch source to compare intermediates with: give --bn or "
                          "--model to localize")
    return report
