"""``bncheck check`` on ONNX files bncheck did not write: built here with plain
``torch.onnx.export`` (eval mode, training mode), then hand-edited (a BatchNormalization switched
to training mode, an epsilon changed, a Conv+BN fold done wrong). Real onnxruntime,
onnx.reference and OpenVINO; in-process (one CLI run, through click's runner)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from bncheck.onnx.source import model_source
from bncheck.onnx.standalone import verify_standalone
from bncheck.onnx.verify import verify_against_torch

MODELS = str(Path(__file__).parents[1] / "data" / "models.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cnn() -> tuple[object, torch.nn.Module]:
    """tests/data/models.py:small_cnn, calibrated, eval mode, and its source."""
    source = model_source(f"{MODELS}:small_cnn", input_shapes=[(2, 3, 8, 8)])
    return source, source.build(seed=0)


def plain_export(model: torch.nn.Module, *, training: bool = False, fold: bool = False) -> bytes:
    """torch.onnx.export as a user writes it (TorchScript exporter, dynamic batch)."""
    buffer = io.BytesIO()
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    model.train(training)
    try:
        torch.onnx.export(model, (torch.rand(2, 3, 8, 8),), buffer, dynamo=False,
                          training=mode, do_constant_folding=fold, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    finally:
        model.eval()
    return buffer.getvalue()


def bn_node(model: onnx.ModelProto, module: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "BatchNormalization"
                and n.name == f"/{module.replace('.', '/')}/BatchNormalization".replace(
                    "/layer1/0/", "/layer1/layer1.0/").replace("/layer1/1/", "/layer1/layer1.1/")
                .replace("/stem/1/", "/stem/stem.1/"))


def set_attr(node: onnx.NodeProto, name: str, value: float | int) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def test_eval_export_passes_and_every_bn_node_is_reported(cnn) -> None:  # type: ignore[no-untyped-def]
    _, model = cnn
    report = verify_standalone(plain_export(model))
    assert report.ok, report.failure_message()
    assert len(report.bn_nodes) == 5
    node = report.bn_nodes[0]
    assert (node.module, node.training_mode, node.momentum) == ("stem.1", 0, pytest.approx(0.9))
    assert node.epsilon == pytest.approx(1e-5)
    assert node.statistics.startswith("initializers") and "stored running" in node.statistics
    runtimes = {r.runtime for r in report.rows if r.verdict == "ok"}
    assert {"onnxruntime CPU", "onnx.reference", "OpenVINO CPU"} <= runtimes


def test_training_mode_export_fails_naming_every_bn_node(cnn) -> None:  # type: ignore[no-untyped-def]
    _, model = cnn
    report = verify_standalone(plain_export(model, training=True))
    assert not report.ok
    assert [n.training_mode for n in report.bn_nodes] == [1] * 5
    assert all(n.statistics.startswith("the batch") for n in report.bn_nodes)
    names = [name for name, op, _ in report.batch_nodes]
    ops = {op for _, op, _ in report.batch_nodes}
    assert ops == {"BatchNormalization"} and names[0] == "/stem/stem.1/BatchNormalization"
    assert str(report.localization).startswith(
        "first batch-dependent node: BatchNormalization node '/stem/stem.1/BatchNormalization' "
        "(module stem.1)")


def test_hand_edited_training_mode_is_named_node_by_node(cnn) -> None:  # type: ignore[no-untyped-def]
    _, model = cnn
    graph = onnx.load_from_string(plain_export(model))
    set_attr(bn_node(graph, "layer1.1.bn2"), "training_mode", 1)
    report = verify_standalone(graph.SerializeToString())
    assert not report.ok
    assert [n[0] for n in report.batch_nodes] == ["/layer1/layer1.1/bn2/BatchNormalization"]
    assert [n.training_mode for n in report.bn_nodes] == [0, 0, 0, 0, 1]


def test_hand_edited_epsilon_is_localized_to_its_module(cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Runtimes agree on a wrong epsilon, so only the source can tell: check against
    --model with the model's checkpoint names the module and the node."""
    source, model = cnn
    graph = onnx.load_from_string(plain_export(model))
    set_attr(bn_node(graph, "layer1.0.bn2"), "epsilon", 0.5)
    data = graph.SerializeToString()
    assert verify_standalone(data).ok  # consistent across runtimes: not visible without source
    report = verify_against_torch(data, model, source=source)
    assert not report.ok
    loc = report.localization
    assert loc.layer == "layer1.0.bn2" and loc.node == "/layer1/layer1.0/bn2/BatchNormalization"
    assert "BatchNormalization node (training_mode=0)" in loc.reason


def wrong_fold(data: bytes, module: str) -> bytes:
    """Fold the BatchNormalization of ``module`` into the Conv before it, forgetting the
    running mean (bias = beta instead of beta - gamma * mean / sqrt(var + eps))."""
    graph = onnx.load_from_string(data)
    node = bn_node(graph, module)
    conv = next(n for n in graph.graph.node if n.output[0] == node.input[0])
    inits = {t.name: t for t in graph.graph.initializer}
    # The TorchScript exporter shares equal initializers through Identity nodes.
    alias = {n.output[0]: n.input[0] for n in graph.graph.node if n.op_type == "Identity"}
    gamma, beta, mean, var = (numpy_helper.to_array(inits[alias.get(n, n)])
                              for n in node.input[1:5])
    eps = next(a.f for a in node.attribute if a.name == "epsilon")
    scale = gamma / np.sqrt(var + eps)
    weight = alias.get(conv.input[1], conv.input[1])
    w = numpy_helper.to_array(inits[weight]) * scale[:, None, None, None]
    inits[weight].CopyFrom(numpy_helper.from_array(w.astype(np.float32), weight))
    bias_name = f"{conv.output[0]}_folded_bias"
    graph.graph.initializer.append(numpy_helper.from_array(beta.astype(np.float32), bias_name))
    conv.input.append(bias_name)
    for n in graph.graph.node:  # consumers of the BN output read the Conv output instead
        for i, name in enumerate(n.input):
            if name == node.output[0]:
                n.input[i] = conv.output[0]
    graph.graph.node.remove(node)
    return graph.SerializeToString()


def test_planted_wrong_fold_is_localized_to_the_conv_node(cnn) -> None:  # type: ignore[no-untyped-def]
    source, model = cnn
    data = plain_export(model)
    right = verify_against_torch(data, model, source=source, batches=(3,))
    assert right.ok, right.failure_message()
    report = verify_against_torch(wrong_fold(data, "layer1.1.bn1"), model, source=source,
                                  batches=(3,))
    assert not report.ok
    loc = report.localization
    assert loc.layer == "layer1.1.conv1" and loc.node == "/layer1/layer1.1/conv1/Conv"
    assert "folded into it" in loc.reason and "wrong Conv+BN fold" in loc.reason
    placement = {p.layer: p for p in report.placement}
    assert placement["layer1.1.bn1"].kind == "folded"


def test_cli_check_on_a_foreign_training_mode_file(cnn, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """Through click's runner (the real `bncheck check` process runs in test_onnx_cli.py)."""
    _, model = cnn
    path = tmp_path / "trained.onnx"
    path.write_bytes(plain_export(model, training=True))
    result = cli("check", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runtimes vs each other" in result.stdout
    assert "training_mode=1" in result.stdout
    assert ("first batch-dependent node: BatchNormalization node "
            "'/stem/stem.1/BatchNormalization' (module stem.1)") in result.stderr
    assert "Traceback" not in result.stderr
