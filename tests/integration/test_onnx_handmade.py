"""``bncheck check`` on hand-written ONNX files of the shapes real files come in: a
BatchNormalization inside an ``If`` branch, its statistics fed as graph inputs, weights in an
external data file, float16, a fixed batch of 1, odd characters in names, an output without
the batch axis. Each test fails on the bncheck before the fix it guards (named in its
docstring). Real onnxruntime, onnx.reference and OpenVINO; in-process (CLI through click's
runner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bncheck.cli import main
from bncheck.onnx.runtimes.ort_cpu import crash_hazard
from bncheck.onnx.standalone import verify_standalone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C = 3
vi = helper.make_tensor_value_info


def stats(prefix: str = "", *, dtype: type = np.float32, c: int = C,
          var: list[float] | None = None) -> list[onnx.TensorProto]:
    """scale, bias, running mean, running var: deterministic, var in [0.5, 1.5)."""
    rng = np.random.default_rng(0)
    v = np.asarray(var, dtype) if var is not None else (rng.random(c) + 0.5).astype(dtype)
    return [numpy_helper.from_array((rng.random(c) + 0.5).astype(dtype), prefix + "s"),
            numpy_helper.from_array((rng.random(c) - 0.5).astype(dtype), prefix + "b"),
            numpy_helper.from_array((rng.random(c) - 0.5).astype(dtype), prefix + "m"),
            numpy_helper.from_array(v, prefix + "v")]


def bn(x: str, outputs: list[str], prefix: str = "", name: str = "bn",
       **attrs: int) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, *(prefix + k for k in "sbmv")], outputs,
                            name=name, **attrs)


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def plain_bn(shape: list[int | str], **kw: list[float]) -> onnx.ModelProto:
    return model([bn("x", ["y"])], [vi("x", TensorProto.FLOAT, shape)],
                 [vi("y", TensorProto.FLOAT, shape)], stats(**kw))


def if_bn(training: int, *, omit_stats: bool = False) -> onnx.ModelProto:
    """x -> If(True) { BatchNormalization(x) } else { x }."""
    outs = ["ty", "", ""] if omit_stats else (["ty", "rm", "rv"] if training else ["ty"])
    then = helper.make_graph([bn("x", outs, name="inner_bn", training_mode=training)], "then",
                             [], [vi("ty", TensorProto.FLOAT, ["N", C, 4, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["ey"])], "else", [],
                              [vi("ey", TensorProto.FLOAT, ["N", C, 4, 4])])
    return model([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other,
                                   name="if")],
                 [vi("x", TensorProto.FLOAT, ["N", C, 4, 4])],
                 [vi("y", TensorProto.FLOAT, ["N", C, 4, 4])],
                 [*stats(), numpy_helper.from_array(np.array(True), "cond")])


def check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.output


def test_bn_inside_an_if_branch_is_reported() -> None:
    """Before: 'BatchNormalization nodes: none' (only the top-level graph was read)."""
    report = verify_standalone(if_bn(0).SerializeToString())
    assert report.ok, report.failure_message()
    [node] = report.bn_nodes
    assert (node.name, node.subgraph, node.training_mode) == ("inner_bn",
                                                             "node 'if' then_branch", 0)


def test_training_bn_with_omitted_outputs_inside_a_branch_is_refused_not_run() -> None:
    """Before: onnxruntime was given the graph and the process died (SIGSEGV): the guard
    looked at the top-level graph only."""
    hazard = crash_hazard(if_bn(1, omit_stats=True))
    assert hazard is not None and "'inner_bn'" in hazard


def test_statistics_fed_as_graph_inputs_are_fed_at_their_shape() -> None:
    """Before: every input got the batch axis, so 'v' of shape (3,) was fed as (1,) and (3,):
    onnxruntime refused it, the others ran nonsense and the batch check blamed the BN."""
    shape: list[int | str] = ["N", C, 4, 4]
    m = model([bn("x", ["y"])], [vi("x", TensorProto.FLOAT, shape),
                                 *(vi(k, TensorProto.FLOAT, [C]) for k in "sbmv")],
              [vi("y", TensorProto.FLOAT, shape)], [])
    report = verify_standalone(m.SerializeToString())
    assert report.ok, report.failure_message()
    assert "v (3) float32, no batch axis" in report.notes[0]
    assert "uniform in [0, 1)" in report.notes[0]


def test_negative_running_variance_fails_naming_the_node() -> None:
    """Before: every runtime gave the same NaNs, NaN == NaN compared equal, and it passed."""
    report = verify_standalone(plain_bn(["N", C, 4, 4], var=[1.0, -2.0, 1.0])
                               .SerializeToString())
    assert not report.ok
    assert "non-finite outputs" in report.failure_message()
    assert "BatchNormalization node 'bn'" in str(report.localization)


def test_training_mode_bn_at_a_fixed_batch_of_1_fails() -> None:
    """Before: the batch check is n/a at batch 1, so a training-mode BN passed."""
    shape: list[int | str] = [1, C, 4, 4]
    m = model([bn("x", ["y", "rm", "rv"], training_mode=1)],
              [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, shape)],
              stats())
    report = verify_standalone(m.SerializeToString())
    assert not report.ok
    assert "'bn' normalizes with batch statistics" in str(report.localization)


def test_output_without_a_batch_axis_that_depends_on_the_batch_fails() -> None:
    """Before: outputs whose dim 0 was not the batch size were skipped by the batch check
    (only a channel count equal to the batch size, by chance, made it look)."""
    c = 4  # not a checked batch size
    m = model([bn("x", ["y"]),
               helper.make_node("ReduceMean", ["y"], ["pooled"], keepdims=0, axes=[0, 2, 3],
                                name="batch_mean")],
              [vi("x", TensorProto.FLOAT, ["N", c, 4, 4])],
              [vi("pooled", TensorProto.FLOAT, [c])], stats(c=c))
    m.opset_import[0].version = 15  # ReduceMean with the axes attribute
    report = verify_standalone(m.SerializeToString())
    assert not report.ok
    assert report.batch_nodes[0][:2] == ("batch_mean", "ReduceMean")


def test_float16_network_passes_within_float16_tolerances() -> None:
    """Before: runtimes were held to float32's rtol 1e-4 (under one float16 unit): FAIL."""
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for i in range(3):
        inits += [numpy_helper.from_array((rng.standard_normal((8, 8 if i else C, 3, 3)) * 0.3)
                                          .astype(np.float16), f"w{i}"),
                  *stats(f"l{i}", dtype=np.float16, c=8)]
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  bn(f"c{i}", [f"n{i}"], prefix=f"l{i}", name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        prev = f"r{i}"
    m = model(nodes, [vi("x", TensorProto.FLOAT16, ["N", C, 8, 8])],
              [vi(prev, TensorProto.FLOAT16, ["N", 8, 8, 8])], inits)
    report = verify_standalone(m.SerializeToString())
    assert report.ok, report.failure_message()
    # ... and the widened tolerance still catches a float16 BN whose variance went wrong.
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    var = next(t for t in bad.graph.initializer if t.name == "l1v")
    var.CopyFrom(numpy_helper.from_array(np.full(8, -1.0, np.float16), "l1v"))
    failed = verify_standalone(bad.SerializeToString())
    assert not failed.ok and "'bn1'" in str(failed.localization)


def test_cli_external_data_and_markup_in_names(tmp_path: Path) -> None:
    """Before: external data was refused as an invalid model (checked from bytes, without its
    folder), exit 2; a node named 'bn [/]x' raised rich.errors.MarkupError (a traceback)."""
    m = model([helper.make_node("BatchNormalization", ["in [b]put", *"sbmv"], ["y"],
                                name="bn [/]x")],
              [vi("in [b]put", TensorProto.FLOAT, ["N", C, 4, 4])],
              [vi("y", TensorProto.FLOAT, ["N", C, 4, 4])], stats())
    path = tmp_path / "ext [x].onnx"
    onnx.save(m, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    code, out = check(path)
    assert code == 0, out
    assert "bn [/]x: training_mode=0" in out and "verified: ext [x].onnx" in out


def test_opset9_bn_with_its_training_outputs_is_reported_as_training_mode() -> None:
    """Before: training_mode=0 for BatchNormalization-9 to -13 (no attribute: its optional
    mean/var outputs are what says training, as torch's training export writes it)."""
    from bncheck.onnx.bn_nodes import bn_nodes

    graph = helper.make_graph([bn("x", ["y", "rm", "rv", "sm", "sv"])], "g",
                              [vi("x", TensorProto.FLOAT, ["N", C, 4, 4])],
                              [vi("y", TensorProto.FLOAT, ["N", C, 4, 4])], stats())
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    assert [n.training_mode for n in bn_nodes(m)] == [1]
    assert [n.training_mode for n in bn_nodes(plain_bn(["N", C, 4, 4]))] == [0]
