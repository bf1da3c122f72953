"""bncheck's reference BatchNorm, run in the ONNX convention, agrees with the ONNX
BatchNormalization operator in onnxruntime and onnx.reference (opset 15), for inference and for
``training_mode=1`` (output, running mean and running variance), on Hypothesis inputs.

The ONNX convention (see :mod:`bncheck.engine.conventions`): the momentum weights the *old* running
value (``new = m * old + (1 - m) * batch``) and the running variance averages the *biased* batch
variance. Both runtimes follow it (checked here); PyTorch stores the unbiased one.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import bncheck
from bncheck.engine.compare import Tolerance, assert_close
from bncheck.engine.conventions import ONNX

OPSET = 15

# float32 on both sides; the runtimes reduce in another order (and may use one-pass moments),
# over at most 6 * 4 * 4 = 96 values per channel of magnitude <= 8.
INFERENCE_TOL = Tolerance(1e-5, 1e-5, "float32, elementwise only: a few roundings")
TRAINING_TOL = Tolerance(1e-4, 1e-4, "float32 mean/variance over <= 96 values per channel, "
                                     "reduction order differs between runtimes")


@st.composite
def bn_inputs(draw: st.DrawFn) -> dict[str, np.ndarray | float]:
    """X (N, C, *spatial), scale, B, mean, var (var > 0), epsilon and momentum."""
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shift = draw(st.floats(-3, 3))
    scale_x = draw(st.floats(0.1, 4))
    x = (rng.standard_normal((n, c, *spatial)) * scale_x + shift).clip(-8, 8)
    return {
        "X": x.astype(np.float32),
        "scale": rng.uniform(0.25, 2.0, c).astype(np.float32),
        "B": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.uniform(0.1, 3.0, c).astype(np.float32),
        "epsilon": draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        "momentum": draw(st.floats(0.0, 1.0)),
    }


def expected(case: dict, *, training: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bncheck's reference in the ONNX convention: (Y, running_mean, running_var)."""
    t = {k: torch.from_numpy(np.asarray(case[k])) for k in ("X", "scale", "B", "mean", "var")}
    eps, m = float(case["epsilon"]), float(case["momentum"])
    if not training:
        y = bncheck.batch_norm(t["X"], t["mean"], t["var"], t["scale"], t["B"], eps=eps)
        return y.numpy(), case["mean"], case["var"]
    batch_weight = ONNX.torch_momentum(m)
    assert batch_weight is not None
    running_mean = t["mean"].clone()
    y = bncheck.batch_norm(t["X"], running_mean, None, t["scale"], t["B"], training=True,
                           momentum=batch_weight, eps=eps)
    unbiased = torch.zeros_like(t["var"])  # momentum 1: the running var becomes the batch one
    bncheck.batch_norm(t["X"], None, unbiased, training=True, momentum=1.0, eps=eps)
    count = t["X"].numel() // t["X"].shape[1]
    biased = unbiased * (count - 1) / count
    running_var = m * t["var"] + batch_weight * biased
    return y.numpy(), running_mean.numpy(), running_var.numpy()


def model(case: dict, *, training: bool, expose_stats: bool = True) -> bytes:
    names = ["X", "scale", "B", "mean", "var"]
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, case["X"].shape)]
    inits = [numpy_helper.from_array(case[k], k) for k in names[1:]]
    outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node("BatchNormalization", names, outputs, epsilon=case["epsilon"],
                            momentum=case["momentum"], training_mode=int(training))
    graph_outputs = outputs if expose_stats else ["Y"]
    graph = helper.make_graph(
        [node], "bn", ins,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in graph_outputs],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8).SerializeToString()


def run_ort(data: bytes, x: np.ndarray, level: str) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {"X": x}))


def check(outputs: list[np.ndarray], want: tuple, tol: Tolerance, names: tuple[str, ...]) -> None:
    for got, exp, name in zip(outputs, want, names, strict=False):
        assert_close(torch.from_numpy(np.asarray(got)), torch.from_numpy(np.asarray(exp)),
                     tolerance=tol, name=name, check_dtype=False)


NAMES = ("Y", "running_mean", "running_var")


@pytest.mark.parametrize("level", ["DISABLE_ALL", "ENABLE_ALL"])
@given(case=bn_inputs())
def test_inference_matches_onnxruntime(case: dict, level: str) -> None:
    check(run_ort(model(case, training=False), case["X"], level),
          expected(case, training=False), INFERENCE_TOL, NAMES)


@given(case=bn_inputs())
def test_inference_matches_onnx_reference(case: dict) -> None:
    out = ReferenceEvaluator(model(case, training=False)).run(None, {"X": case["X"]})
    check(out, expected(case, training=False), INFERENCE_TOL, NAMES)


@pytest.mark.parametrize("level", ["DISABLE_ALL", "ENABLE_ALL"])
@given(case=bn_inputs())
def test_training_mode_matches_onnxruntime(case: dict, level: str) -> None:
    check(run_ort(model(case, training=True), case["X"], level),
          expected(case, training=True), TRAINING_TOL, NAMES)


@given(case=bn_inputs())
def test_training_mode_matches_onnx_reference(case: dict) -> None:
    out = ReferenceEvaluator(model(case, training=True)).run(None, {"X": case["X"]})
    check(out, expected(case, training=True), TRAINING_TOL, NAMES)


@given(case=bn_inputs())
def test_training_mode_output_without_exposed_stats_matches(case: dict) -> None:
    """Y stays the batch-statistics output at ENABLE_ALL when the running statistics are
    node outputs but not graph outputs (onnxruntime 1.32: no divergence found here)."""
    data = model(case, training=True, expose_stats=False)
    check(run_ort(data, case["X"], "ENABLE_ALL"), expected(case, training=True),
          TRAINING_TOL, NAMES)
