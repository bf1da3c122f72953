"""The one table of tolerances every ONNX check is held to, each with its reason.

>>> from bncheck.onnx.runtimes import TOLERANCES
>>> TOLERANCES["onnxruntime"].atol
1e-05

Each runtime plugin takes its tolerance from here by its ``key``; the checks that are not a
runtime (grad modes, batch independence, goldens, torch on CUDA) have their rows here too, so
the manifest records the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.engine.compare import Tolerance

__all__ = ["TOLERANCES", "OutputScaledTolerance", "concrete", "for_dtype"]


@dataclass(frozen=True)
class OutputScaledTolerance(Tolerance):
    """A tolerance whose atol is ``atol_per_max`` times the expected output's largest
    magnitude, never below ``atol``: for low-precision arithmetic, whose error grows with the
    values it carries through every layer."""

    atol_per_max: float = 0.0

    def for_expected(self, expected: Any) -> Tolerance:
        e = np.asarray(expected, dtype=np.float64)
        largest = float(np.nanmax(np.abs(e))) if e.size else 0.0
        return Tolerance(self.rtol, max(self.atol, self.atol_per_max * largest), self.reason)


def for_dtype(tolerance: Tolerance, dtype: Any) -> Tolerance:
    """``tolerance``, widened to the least one outputs of ``dtype`` (float16, bfloat16) are held
    to (:data:`_LOW_PRECISION`); float32 and float64 outputs keep ``tolerance``.

    >>> import numpy as np
    >>> for_dtype(TOLERANCES["onnxruntime"], np.float16).rtol
    0.01
    >>> for_dtype(TOLERANCES["onnxruntime"], np.float32) is TOLERANCES["onnxruntime"]
    True
    """
    low = _LOW_PRECISION.get(np.dtype(dtype).name)
    if low is None or (tolerance.rtol >= low.rtol and tolerance.atol >= low.atol):
        return tolerance
    per_max = max(getattr(tolerance, "atol_per_max", 0.0), getattr(low, "atol_per_max", 0.0))
    return OutputScaledTolerance(max(tolerance.rtol, low.rtol), max(tolerance.atol, low.atol),
                                 f"{low.reason} (widened from: {tolerance.reason})", per_max)


def concrete(tolerance: Tolerance, expected: Any) -> Tolerance:
    """``tolerance`` with its atol fixed for ``expected`` (a plain Tolerance is returned as is)."""
    if isinstance(tolerance, OutputScaledTolerance):
        return tolerance.for_expected(expected)
    return tolerance

#: The least tolerance an output of a low-precision dtype is compared with, whatever the
#: runtime's: a float32 tolerance (rtol 1e-4) is below one unit of float16's roundoff (2^-11 =
#: 4.9e-4), so two correct runtimes (one rounding every op to float16, one accumulating in
#: float32 and rounding once) differ by a few units per layer. 20 units (rtol 1e-2), and atol
#: 1% of the output's largest magnitude (the error scales with the activations carried, and a
#: value near 0 after ReLU/cancellation has no relative precision); bfloat16 (2^-8 = 3.9e-3)
#: as OpenVINO's default-precision row. Measured: 2e-3 on outputs of 2.7 between onnxruntime
#: DISABLE_ALL and ENABLE_ALL after three float16 Conv+BN+ReLU layers.
_LOW_PRECISION: dict[str, Tolerance] = {
    "float16": OutputScaledTolerance(1e-2, 1e-3, "float16 outputs: unit roundoff 2^-11 = 4.9e-4 "
                                     "per op, and runtimes round at different ops", 1e-2),
    "bfloat16": OutputScaledTolerance(5e-2, 2e-2, "bfloat16 outputs: unit roundoff 2^-8 = "
                                      "3.9e-3 per op, and runtimes round at different ops",
                                      5e-2),
}

_KERNELS = ("float32; kernels and summation order differ from torch's (Conv and Gemm "
            "reductions over hundreds to thousands of terms), and BN folding re-rounds the "
            "weights; measured errors on LeNet-BN and MONAI/EfficientNet nets are 10-100x below")

#: Every tolerance a check uses, with its reason.
TOLERANCES: dict[str, Tolerance] = {
    "onnxruntime": Tolerance(1e-4, 1e-5, _KERNELS),
    "onnxruntime-fused": Tolerance(1e-4, 1e-5, _KERNELS + "; ENABLE_ALL also fuses Conv/Gemm "
                                   "with their activations"),
    "onnxruntime-cuda": Tolerance(1e-3, 1e-4, "float32 on cuDNN/cuBLAS (TF32 off); the "
                                  "algorithm choice changes the summation order"),
    "onnxruntime-tensorrt": Tolerance(1e-2, 1e-3, "TensorRT builds its own kernels and may use "
                                      "TF32 (10-bit mantissa) for float32 Conv/MatMul on Ampere "
                                      "and newer; FP16 left off"),
    "reference": Tolerance(1e-4, 1e-5, "float32 numpy; " + _KERNELS.removeprefix("float32; ")),
    "openvino": Tolerance(1e-4, 1e-5, "OpenVINO CPU with INFERENCE_PRECISION_HINT=f32: "
                          + _KERNELS),
    "openvino-default": OutputScaledTolerance(
        5e-2, 2e-2, "OpenVINO CPU at its default precision: bfloat16 on CPUs with AVX-512 "
        "BF16/AMX (unit roundoff 2^-8 = 3.9e-3 at every layer, compounding with depth; the "
        "error scales with the activations carried, not with the outputs), so atol is the "
        "larger of 2e-2 and 5% of the output's largest magnitude: coarse on purpose, the f32 "
        "row is the precise check. Measured: up to 1.5e-2 on logits of 1.35 (MONAI resnet18), "
        "1e-3 on logits of 4e-3 (resnet18 3D at a quarter width)", atol_per_max=5e-2),
    "torch-cuda": Tolerance(1e-3, 1e-4, "float32 on cuDNN/cuBLAS (TF32 off) vs torch on CPU"),
    "grad-mode": Tolerance(1.3e-6, 1e-5, "same eager model and kernels; only the grad mode "
                           "differs (assert_close float32 default)"),
    "batch-independence": Tolerance(1.3e-6, 1e-5, "same runtime and batch shape; only the other "
                                    "rows change (assert_close float32 default)"),
    "golden": Tolerance(1e-4, 1e-5, "float32 across machines and library versions: " + _KERNELS),
    "cross-runtime": Tolerance(2e-4, 2e-5, "no source model: two float32 runtimes compared "
                               "with each other, each within onnxruntime's tolerance of the "
                               "truth, so twice it"),
}
