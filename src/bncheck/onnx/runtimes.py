"""The runtimes an ONNX file is verified on, and the one table of tolerances they are held to.

>>> from bncheck.onnx.runtimes import TOLERANCES
>>> TOLERANCES["onnxruntime"].atol
1e-05

Runtimes: onnxruntime ``CPUExecutionProvider`` at graph optimization ``DISABLE_ALL`` and
``ENABLE_ALL``; ``CUDAExecutionProvider`` when onnxruntime offers it; ``onnx.reference``'s
``ReferenceEvaluator``. A runtime that cannot run here is *skipped* with its reason, and one whose
answer cannot be trusted for this graph is *not applicable* with its reason; neither is silent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bncheck.compare import Tolerance

__all__ = ["TOLERANCES", "Runtime", "runtimes", "ort_session", "onnx_opset"]

_KERNELS = ("float32; kernels and summation order differ from torch's (Conv reductions of 25 "
            "and 150 terms, Gemm of 256, 120 and 84), and BN folding re-rounds the weights")

#: Every tolerance a check uses, with its reason (measured errors are ~100x below these).
TOLERANCES: dict[str, Tolerance] = {
    "onnxruntime": Tolerance(1e-4, 1e-5, _KERNELS),
    "onnxruntime-fused": Tolerance(1e-4, 1e-5, _KERNELS + "; ENABLE_ALL fuses Conv/Gemm with "
                                   "their activations"),
    "onnxruntime-cuda": Tolerance(1e-3, 1e-4, "float32 on cuDNN/cuBLAS (TF32 off); the "
                                  "algorithm choice changes the summation order"),
    "reference": Tolerance(1e-4, 1e-5, "float32 numpy; " + _KERNELS.removeprefix("float32; ")),
    "torch-cuda": Tolerance(1e-3, 1e-4, "float32 on cuDNN/cuBLAS (TF32 off) vs torch on CPU"),
    "grad-mode": Tolerance(1.3e-6, 1e-5, "same eager model and kernels; only the grad mode "
                           "differs (assert_close float32 default)"),
    "batch-independence": Tolerance(1.3e-6, 1e-5, "same runtime and batch shape; only the other "
                                    "rows change (assert_close float32 default)"),
    "golden": Tolerance(1e-4, 1e-5, "float32 across machines and library versions: " + _KERNELS),
}

Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Runtime:
    """One runtime at one optimization level: a runner, or why it was skipped / not applicable."""

    name: str
    level: str
    tolerance: Tolerance
    run: Runner | None = None
    skipped: str | None = None
    not_applicable: str | None = None
    error: str | None = None  # the runtime refused the graph: a failed check, not a skip

    @property
    def label(self) -> str:
        return f"{self.name} {self.level}".strip()


def onnx_opset(model: object) -> int:
    """The default-domain opset a ModelProto imports."""
    for imp in model.opset_import:  # type: ignore[attr-defined]
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def ort_session(data: bytes, *, level: str = "DISABLE_ALL", provider: str = "CPUExecutionProvider"
                ) -> object:
    """An onnxruntime InferenceSession at graph optimization ``level``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    options.log_severity_level = 3
    providers: list[object] = [provider]
    if provider == "CUDAExecutionProvider":
        providers = [(provider, {"use_tf32": "0"})]
    return ort.InferenceSession(data, options, providers=providers)


def _ort_runner(session: object) -> Runner:
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]

    def run(x: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {name: x}))  # type: ignore[attr-defined]

    return run


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _ort_runtime(data: bytes, name: str, level: str, tol: Tolerance, provider: str) -> Runtime:
    try:
        session = ort_session(data, level=level, provider=provider)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: a failed check
        return Runtime(name, level, tol, error=f"cannot load the graph: {_first_line(e)}")
    return Runtime(name, level, tol, _ort_runner(session))


def runtimes(data: bytes, model: object) -> list[Runtime]:
    """Every runtime for the ONNX bytes ``data`` (``model`` is the parsed ModelProto)."""
    import onnxruntime as ort

    found: list[Runtime] = []
    for level, key in (("DISABLE_ALL", "onnxruntime"), ("ENABLE_ALL", "onnxruntime-fused")):
        found.append(_ort_runtime(data, "onnxruntime CPU", level, TOLERANCES[key],
                                  "CPUExecutionProvider"))
    available = ort.get_available_providers()
    for level in ("DISABLE_ALL", "ENABLE_ALL"):
        if "CUDAExecutionProvider" in available:
            found.append(_ort_runtime(data, "onnxruntime CUDA", level,
                                      TOLERANCES["onnxruntime-cuda"], "CUDAExecutionProvider"))
        else:
            found.append(Runtime(
                "onnxruntime CUDA", level, TOLERANCES["onnxruntime-cuda"],
                skipped=f"onnxruntime {ort.__version__} offers no CUDAExecutionProvider "
                        f"(available: {', '.join(available)})"))
    found.append(_reference_runtime(model))
    return found


def _reference_runtime(model: object) -> Runtime:
    tol = TOLERANCES["reference"]
    opset = onnx_opset(model)
    has_bn = any(n.op_type == "BatchNormalization" for n in model.graph.node)  # type: ignore
    if has_bn and 9 <= opset <= 13:
        return Runtime("onnx.reference", "", tol, not_applicable=(
            f"opset {opset}: onnx.reference's BatchNormalization-9 blends batch statistics "
            f"into the running ones even in inference (wrong for opsets 9-13)"))
    if has_bn and opset < 9:
        return Runtime("onnx.reference", "", tol, not_applicable=(
            f"opset {opset}: onnx.reference runs BatchNormalization-6 in training mode when "
            f"is_test is absent (as from opset 7) and then fails on its own tuple result"))
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(model)
    except Exception as e:  # noqa: BLE001 - e.g. an operator it does not implement
        return Runtime("onnx.reference", "", tol, error=f"cannot load the graph: "
                                                        f"{_first_line(e)}")
    name = model.graph.input[0].name  # type: ignore[attr-defined]

    def run(x: np.ndarray) -> list[np.ndarray]:
        return list(evaluator.run(None, {name: x}))

    return Runtime("onnx.reference", "", tol, run)
