"""Export a model to ONNX with either of torch's exporters, and write files atomically.

>>> import torch
>>> from bncheck.onnx import build_model, export_onnx
>>> data = export_onnx(build_model("torch"), exporter="torchscript", keep_bn=True)
>>> len(data) > 100_000  # LeNet-BN: 44k float32 weights
True

The model is exported as a user would export it: ``model.eval()`` and ``torch.onnx.export``,
grad mode left as it is. (Wrapping the export in ``torch.no_grad()`` would hide a BatchNorm that
picks its mode with ``torch.is_grad_enabled()``: bncheck must see what users ship.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import Tensor, nn

from bncheck.errors import ExportFailed, InvalidArgument
from bncheck.infra.io import write_atomic
from bncheck.infra.validation import check_type
from bncheck.infra.workers import time_limited

if TYPE_CHECKING:
    from bncheck.onnx.source import ModelSource

__all__ = ["EXPORTERS", "OPSET_RANGES", "INPUT_NAME", "OUTPUT_NAME", "ExportFailed",
           "export_onnx", "check_opset", "write_atomic"]

EXPORTERS = ("dynamo", "torchscript")

#: Opsets each exporter emits as asked (torch 2.13: the dynamo exporter implements opset >= 18
#: and silently falls back to 18 below that; the TorchScript exporter stops at 20).
OPSET_RANGES: dict[str, tuple[int, int]] = {"dynamo": (18, 23), "torchscript": (7, 20)}

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def check_opset(opset: int | None, exporter: str) -> None:
    """Reject an exporter or opset that torch's exporters do not honour.

    Raises:
        InvalidArgument: unknown ``exporter``; ``opset`` outside :data:`OPSET_RANGES`.
    """
    if exporter not in EXPORTERS:
        raise InvalidArgument(f"Expected exporter to be one of {list(EXPORTERS)}, "
                              f"received exporter={exporter!r}")
    if opset is None:
        return
    check_type(int, opset, "opset")
    lo, hi = OPSET_RANGES[exporter]
    if not lo <= opset <= hi:
        hint = (" (use --exporter torchscript for opsets below 18)"
                if exporter == "dynamo" and opset < lo else "")
        raise InvalidArgument(f"Expected opset in [{lo}, {hi}] for the {exporter} exporter, "
                              f"received opset={opset}{hint}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and logger chatter."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _output_names(model: nn.Module, source: ModelSource, example: tuple[Tensor, ...]
                  ) -> list[str]:
    if source.output_names is not None:
        return list(source.output_names)
    from bncheck.onnx.localize import eager_outputs

    n = len(eager_outputs(model, example))
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def export_onnx(model: nn.Module, *, source: ModelSource | None = None,
                exporter: str = "dynamo", opset: int | None = None,
                keep_bn: bool = False) -> bytes:
    """Export ``model`` with ``source``'s inputs (dynamic batch axis) and return the ONNX bytes.

    Args:
        model: exported as is (a deep copy: a BatchNorm that mutates itself in forward
            leaves the caller's model alone); put it in eval mode first.
        source: the model's inputs and names; default LeNet-BN's (``(N, 1, 28, 28)``).
        exporter: ``"dynamo"`` (torch's default) or ``"torchscript"``.
        opset: the opset to ask for; ``None`` is the exporter's default.
        keep_bn: keep BatchNormalization nodes (dynamo: ``optimize=False``; TorchScript:
            ``do_constant_folding=False``) instead of the optimized graph, in which BN
            is folded into the preceding Conv/Gemm where the exporter can.

    Raises:
        InvalidArgument: bad ``exporter`` or ``opset``.
        ExportFailed: the exporter raised; the message has its first line.
    """
    import torch

    from bncheck.onnx.source import lenet_source

    check_opset(opset, exporter)
    source = source or lenet_source()
    model = copy.deepcopy(model)
    # A dynamic batch is exported from a batch of 2: torch.export specializes a size-1 dim.
    example = source.make_inputs(2 if source.dynamic_batch else source.inputs[0].shape[0],
                                 seed=0)
    in_names = [s.name for s in source.inputs]
    out_names = _output_names(model, source, example)
    try:
        with _quiet(), time_limited(f"exporting {source.label} with the {exporter} exporter "
                                    f"(it runs the model's forward)"):
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(
                    model, example, dynamo=True, verbose=False, opset_version=opset,
                    input_names=in_names, output_names=out_names,
                    dynamic_shapes=tuple({0: batch} for _ in example)
                    if source.dynamic_batch else None,
                    optimize=not keep_bn, external_data=False)
                assert program is not None
                return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
            buffer = io.BytesIO()
            torch.onnx.export(
                model, example, buffer,  # type: ignore[arg-type]  # file objects work
                dynamo=False, verbose=False, opset_version=opset,
                input_names=in_names, output_names=out_names,
                dynamic_axes={n: {0: "batch"} for n in [*in_names, *out_names]}
                if source.dynamic_batch else None,
                do_constant_folding=not keep_bn)
            return buffer.getvalue()
    except Exception as e:  # noqa: BLE001 - the exporters raise anything; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportFailed(f"torch.onnx.export (exporter={exporter}, opset={opset}) raised "
                           f"{type(e).__name__}: {first}") from e
