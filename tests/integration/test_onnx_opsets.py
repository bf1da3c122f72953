"""``bncheck check`` on ONNX files of every opset with a BatchNormalization version: 6, 7, 9,
14 and 15 (and BatchNormalization-1, opset 5, with ``consumed_inputs``). The files are built
with onnx.helper, written to disk, pass ``onnx.checker`` (full check), and are checked with
the real onnxruntime and onnx.reference through the CLI (click's runner, in-process).

onnxruntime 1.32 implements BatchNormalization-7, -9, -14 and -15, not -1 or -6: an opset-6
file runs on onnx.reference alone, and onnxruntime says why it did not run it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bncheck.cli import main
from bncheck.onnx.bn_nodes import bn_nodes
from bncheck.onnx.runtimes.reference import Reference
from bncheck.onnx.standalone import verify_standalone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C = 3
SHAPE = ["N", C, 4, 4]

#: (opset, the node's attributes), one inference-mode file per BatchNormalization version
INFERENCE = {
    5: {"is_test": 1, "spatial": 1, "consumed_inputs": [0, 0, 0, 1, 1]},  # BatchNormalization-1
    6: {"is_test": 1, "spatial": 1, "momentum": 0.9},
    7: {"spatial": 1, "momentum": 0.9},
    9: {"momentum": 0.9},
    14: {"momentum": 0.9, "training_mode": 0},
    15: {"momentum": 0.9},
}


def bn_file(opset: int, attrs: dict, *, outputs: int = 1, var: float = 0.5) -> onnx.ModelProto:
    """x (N, 3, 4, 4) -> BatchNormalization -> y, with stored statistics; ``outputs`` > 1: the
    running mean/var outputs too (5 outputs: training mode at opsets 7 to 13; 3: opset 14 on)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in (
        (rng.random(C) + 0.5, "s"), (rng.random(C) - 0.5, "b"), (rng.random(C) - 0.5, "m"),
        (rng.random(C) + var, "v"))]
    names = ["y", "running_mean", "running_var", "saved_mean", "saved_var"][:outputs]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], names, name="bn",
                            epsilon=1e-3, **attrs)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in names[1:]]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, SHAPE)], outs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=7 if opset < 15 else 8)
    onnx.checker.check_model(m, full_check=True)
    return m


def check(tmp_path: Path, m: onnx.ModelProto, *args: str) -> tuple[int, str]:
    path = tmp_path / "bn.onnx"
    onnx.save(m, path)
    result = CliRunner().invoke(main, ["check", str(path), *args], catch_exceptions=False)
    return result.exit_code, result.output


def rows(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if name in line]


@pytest.mark.parametrize("opset", list(INFERENCE))
def test_an_inference_file_of_every_opset_passes(tmp_path: Path, opset: int) -> None:
    code, out = check(tmp_path, bn_file(opset, INFERENCE[opset]))
    assert code == 0, out
    assert "verified" in out
    reference = rows(out, "│ onnx.reference")
    assert reference and all(r.rstrip(" │").endswith("ok") for r in reference), out
    if opset < 7:  # onnxruntime 1.32 has no BatchNormalization-1 or -6: n/a with that line
        version = 1 if opset < 6 else 6
        assert f"has no kernel for BatchNormalization-{version}" in out, out
    else:
        ort = rows(out, "│ onnxruntime CPU")
        assert ort and all(r.rstrip(" │").endswith("ok") for r in ort), out


def test_the_reference_computes_old_opsets_as_the_formula() -> None:
    """onnx.reference's own BatchNormalization-9 is off by ~0.1 here (it blends the batch's
    statistics in) and its -6 raises without is_test: bncheck runs the inference kernel."""
    x = np.random.default_rng(1).standard_normal((2, C, 4, 4)).astype(np.float32)
    for opset, attrs in INFERENCE.items():
        m = bn_file(opset, attrs)
        s, b, mean, var = (numpy_helper.to_array(t).reshape(1, C, 1, 1)
                           for t in m.graph.initializer)
        expected = s * (x - mean) / np.sqrt(var + np.float32(1e-3)) + b
        rt = Reference().runtime(m.SerializeToString(), m)
        assert rt.run is not None, (opset, rt)
        # float32 evaluation of the same formula: a few units in the last place
        np.testing.assert_allclose(rt.run({"x": x})[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opset,attrs,outputs,version", [
    (6, {"is_test": 0}, 1, 6), (6, {}, 1, 6), (7, {}, 5, 7), (9, {}, 5, 9),
    (14, {"training_mode": 1}, 3, 14),
])
def test_training_nodes_are_read_as_their_version_says(opset, attrs, outputs, version) -> None:
    (node,) = bn_nodes(bn_file(opset, attrs, outputs=outputs))
    assert (node.training_mode, node.version) == (1, version)


def test_old_attributes_are_read_and_reported(tmp_path: Path) -> None:
    (node,) = bn_nodes(bn_file(5, INFERENCE[5]))
    assert node.version == 1 and node.training_mode == 0
    assert dict(node.legacy) == {"is_test": 1, "spatial": 1, "consumed_inputs": [0, 0, 0, 1, 1]}
    assert node.to_json()["legacy_attributes"]["consumed_inputs"] == [0, 0, 0, 1, 1]
    code, out = check(tmp_path, bn_file(6, INFERENCE[6]))
    assert "BatchNormalization-6, training_mode=0, is_test=1, spatial=1" in out, out


def test_spatial_0_is_not_applicable_on_the_reference() -> None:
    m = bn_file(7, {"spatial": 0})
    reason = Reference().not_applicable(m)
    assert reason is not None and "spatial=0" in reason


def test_a_training_node_below_opset_14_is_not_applicable_on_the_reference() -> None:
    for opset, attrs, outputs in ((6, {"is_test": 0}, 1), (9, {}, 5)):
        reason = Reference().not_applicable(bn_file(opset, attrs, outputs=outputs))
        assert reason is not None and "training mode" in reason


def test_a_wrong_opset_9_file_fails(tmp_path: Path) -> None:
    """The check can fail on an old opset: a negative running variance gives NaN."""
    code, out = check(tmp_path, bn_file(9, {}, var=-2.0))
    assert code == 1, out
    assert "non-finite" in out


# -- a training-mode graph made on purpose --------------------------------------------------------

def test_a_training_graph_fails_unless_declared(tmp_path: Path) -> None:
    m = bn_file(15, {"training_mode": 1}, outputs=3)
    code, out = check(tmp_path, m)
    assert code == 1, out
    report = verify_standalone(m.SerializeToString())
    assert any("check it with --training-graph" in f for f in report.failures), report.failures
    code, out = check(tmp_path, m, "--training-graph")
    assert code == 0, out
    assert "batch independence not checked" in out


def test_declaring_an_inference_graph_a_training_one_fails(tmp_path: Path) -> None:
    code, out = check(tmp_path, bn_file(15, {}), "--training-graph")
    assert code == 1
    assert "no BatchNormalization node normalizes with batch statistics" in out


def test_a_declared_training_graph_still_compares_the_runtimes() -> None:
    report = verify_standalone(bn_file(14, {"training_mode": 1}, outputs=3).SerializeToString(),
                               training_graph=True)
    assert report.ok, report.failure_message()
    compared = [r for r in report.rows if r.check == "vs runtimes" and r.verdict == "ok"]
    assert compared, report.rows


def test_training_graph_needs_the_standalone_check(tmp_path: Path) -> None:
    path = tmp_path / "bn.onnx"
    onnx.save(bn_file(15, {}), path)
    (tmp_path / "bn.json").write_text(json.dumps({}))
    result = CliRunner().invoke(main, ["check", str(path), "--training-graph"])
    assert result.exit_code == 2
    assert "--training-graph checks a file without a source or manifest" in result.output
