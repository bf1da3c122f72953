"""Known divergences between ONNX runtimes around BatchNormalization, recorded as tests that
document the behaviour of the pinned versions (onnx 1.23, onnxruntime 1.32). If one of these
starts failing, a runtime changed: update docs/onnx.md and bncheck's runtime rules with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from bncheck.onnx import build_model, export_onnx
from bncheck.onnx.runtimes import runtimes

# One OpenMP thread per CLI subprocess: LeNet-BN is tiny, and on a loaded 2-core machine
# spinning OpenMP threads make small BatchNorm kernels 20x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RNG = np.random.default_rng(0)
C = 3
X = RNG.standard_normal((4, C, 5, 5)).astype(np.float32) * 2 + 1
PARAMS = {"scale": RNG.uniform(0.5, 2, C), "B": RNG.standard_normal(C),
          "mean": RNG.standard_normal(C), "var": RNG.uniform(0.5, 2, C)}
PARAMS = {k: v.astype(np.float32) for k, v in PARAMS.items()}


def inference_output() -> np.ndarray:
    p = {k: v.reshape(1, -1, 1, 1) for k, v in PARAMS.items()}
    return p["scale"] * (X - p["mean"]) / np.sqrt(p["var"] + 1e-5) + p["B"]


def bn_model(opset: int, outputs: list[str], *, training: int | None = None) -> onnx.ModelProto:
    attrs: dict = {"epsilon": 1e-5}
    if training is not None:
        attrs["training_mode"] = training
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], outputs,
                            **attrs)
    graph = helper.make_graph(
        [node], "bn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, X.shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in PARAMS.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


@pytest.mark.parametrize("opset", [9, 13])
def test_onnx_reference_batchnorm_9_blends_batch_statistics_in_inference(opset: int) -> None:
    """onnx.reference's BatchNormalization_9 (opsets 9-13) always mixes the batch statistics
    into the running ones with its default momentum 0.9, even for an inference graph;
    onnxruntime computes the inference formula. bncheck runs such nodes on onnx.reference's
    inference kernel instead (below)."""
    data = bn_model(opset, ["Y"])
    reference = ReferenceEvaluator(data).run(None, {"X": X})[0]
    runtime = ort.InferenceSession(data.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"X": X})[0]
    assert np.abs(runtime - inference_output()).max() < 1e-5
    assert np.abs(reference - inference_output()).max() > 0.1


def test_onnx_reference_batchnorm_6_fails_at_opsets_7_and_8() -> None:
    """From opset 7 BatchNormalization has no is_test; onnx.reference's BatchNormalization_6
    reads the missing attribute as training mode and fails on its own tuple result."""
    with pytest.raises(TypeError, match="BatchNormalization_6"):
        ReferenceEvaluator(bn_model(7, ["Y"])).run(None, {"X": X})


def test_onnx_reference_batchnorm_15_is_right_in_inference() -> None:
    reference = ReferenceEvaluator(bn_model(15, ["Y"], training=0)).run(None, {"X": X})[0]
    assert np.abs(reference - inference_output()).max() < 1e-5


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_bncheck_runs_onnx_references_inference_kernel_below_opset_14(opset: int) -> None:
    """For these divergences bncheck runs an inference-mode node below opset 14 on
    onnx.reference's own inference kernel (tests/integration/test_onnx_opsets.py)."""
    model = bn_model(opset, ["Y"])
    data = model.SerializeToString()
    reference = [rt for rt in runtimes(data, model) if rt.name == "onnx.reference"][0]
    assert reference.run is not None, reference.not_applicable
    assert np.abs(reference.run({"X": X})[0] - inference_output()).max() < 1e-5


def test_onnxruntime_rejects_training_mode_with_one_output() -> None:
    """training_mode=1 with only Y declared: onnxruntime refuses the graph at load time
    (its shape inference wants three outputs), onnx.reference runs it."""
    model = bn_model(15, ["Y"], training=1)
    with pytest.raises(Exception, match="should be 3 when Training_mode"):  # noqa: B017
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert ReferenceEvaluator(model).run(None, {"X": X})[0].shape == X.shape


_CRASH = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    sys.path.insert(0, {here!r})
    from test_onnx_runtime_divergences import X, bn_model
    model = bn_model(15, ["Y", "", ""], training=1)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_{level}
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {{"X": X}})
    print("survived")
""")


@pytest.mark.parametrize("level", ["DISABLE_ALL", "ENABLE_ALL"])
def test_onnxruntime_crashes_on_omitted_training_outputs(level: str) -> None:
    """training_mode=1 with the optional running-stat outputs omitted (empty names, as the
    spec allows): onnxruntime 1.32 dies with a segmentation fault (run in a subprocess);
    onnx.reference returns the batch-statistics output."""
    import pathlib

    if ort.__version__ != "1.32.0":
        pytest.skip(f"recorded for onnxruntime 1.32.0, found {ort.__version__}")
    here = str(pathlib.Path(__file__).parent)
    result = subprocess.run([sys.executable, "-c", _CRASH.format(here=here, level=level)],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode != 0 and "survived" not in result.stdout, result.stderr
    y = ReferenceEvaluator(bn_model(15, ["Y", "", ""], training=1)).run(None, {"X": X})[0]
    assert np.abs(y - inference_output()).max() > 0.1  # batch statistics, not running ones


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.slow
def test_torch_verify_onnx_program_passes_the_seed_export_that_bncheck_fails() -> None:
    """torch.onnx.verification.verify_onnx_program compares the ONNX model with the
    ExportedProgram, which already took the seed's training branch (grad was enabled while
    exporting): it passes. The eager model in eval under no_grad disagrees; bncheck reports it."""
    import copy
    from pathlib import Path

    import torch
    from torch.onnx.verification import verify_onnx_program

    from bncheck.engine.target import bn_factory, load_target
    from bncheck.onnx import make_inputs, verify_against_torch

    seed_bn = str(Path(__file__).parents[1] / "data" / "seed_bn_fixed.py") + ":BatchNorm"
    model = build_model(bn_factory(load_target(seed_bn)))
    x = make_inputs(7, seed=1)
    program = torch.onnx.export(copy.deepcopy(model), (x,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert program is not None
    assert all(info.max_abs_diff < 1e-5 for info in verify_onnx_program(program, args=(x,)))
    with torch.no_grad():
        eager = copy.deepcopy(model)(x)
    assert float((program(x)[0] - eager).abs().max()) > 1e-3
    report = verify_against_torch(program.model_proto.SerializeToString(), model,
                                  batches=(7,))
    assert not report.ok and str(report.localization).startswith("layer 1: BatchNorm(6)")


@pytest.fixture(scope="module")
def small_cnn_onnx() -> bytes:
    """tests/data/models.py:small_cnn (Conv, BatchNorm2d, residual blocks), calibrated."""
    import pathlib

    from bncheck.onnx.source import model_source

    spec = str(pathlib.Path(__file__).parents[1] / "data" / "models.py") + ":small_cnn"
    source = model_source(spec, input_shapes=[(2, 3, 8, 8)])
    return export_onnx(source.build(seed=0), source=source, exporter="torchscript",
                       keep_bn=True)


def test_openvino_default_precision_is_bfloat16_here_and_differs_from_f32(
        small_cnn_onnx: bytes) -> None:
    """OpenVINO's CPU plugin defaults to INFERENCE_PRECISION_HINT=bf16 on CPUs with AVX-512
    BF16/AMX: a small BN CNN then differs from onnxruntime by ~1e-3, and by ~1e-7 with the hint
    set to f32. bncheck reports the two as separate rows with their own tolerances."""
    ov = pytest.importorskip("openvino")
    from bncheck.onnx.runtimes.openvino import default_precision

    if default_precision() != "bf16":
        pytest.skip(f"OpenVINO's default precision here is {default_precision()}, not bf16")
    x = {"input": np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)}
    expected = ort.InferenceSession(small_cnn_onnx, providers=["CPUExecutionProvider"]).run(
        None, x)[0]
    core = ov.Core()
    model = core.read_model(small_cnn_onnx)
    default = core.compile_model(model, "CPU")(x)[0]
    f32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    assert np.abs(f32 - expected).max() < 1e-5
    assert np.abs(default - expected).max() > 1e-4
    rows = {rt.label: rt for rt in runtimes(small_cnn_onnx, onnx.load_from_string(
        small_cnn_onnx))}
    assert rows["OpenVINO CPU f32"].tolerance.atol == 1e-5
    assert rows["OpenVINO CPU default bf16"].tolerance.rtol == 5e-2


def test_bncheck_refuses_to_run_onnxruntime_on_the_crashing_graph() -> None:
    """The graph that kills onnxruntime 1.32 (above) is checked without it: onnxruntime's rows
    fail with the reason, onnx.reference shows the batch dependence and names the node."""
    from bncheck.onnx.standalone import verify_standalone

    model = bn_model(15, ["Y", "", ""], training=1)
    report = verify_standalone(model.SerializeToString())
    assert not report.ok
    ort_rows = [r for r in report.rows if r.runtime == "onnxruntime CPU"]
    assert ort_rows and all(r.verdict == "FAIL" and "segmentation fault" in r.note
                            for r in ort_rows)
    assert [n[1] for n in report.batch_nodes] == ["BatchNormalization"]
