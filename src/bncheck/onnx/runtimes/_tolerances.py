"""The one table of tolerances every ONNX check is held to, each with its reason.

>>> from bncheck.onnx.runtimes import TOLERANCES
>>> TOLERANCES["onnxruntime"].atol
1e-05

Each runtime plugin takes its tolerance from here by its ``key``; the checks that are not a
runtime (grad modes, batch independence, goldens, torch on CUDA) have their rows here too, so
the manifest records the whole table.
"""

from __future__ import annotations

from bncheck.compare import Tolerance

__all__ = ["TOLERANCES"]

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
    "openvino-default": Tolerance(5e-2, 2e-2, "OpenVINO CPU at its default precision: "
                                  "bfloat16 on CPUs with AVX-512 BF16/AMX (unit roundoff 2^-8 = "
                                  "3.9e-3 at every layer, compounding with depth; measured up to "
                                  "3.5e-3 absolute on logits of size 0.3, MONAI resnet18); "
                                  "float32 elsewhere. For outputs of order 1"),
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
