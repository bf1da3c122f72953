"""Models nobody here wrote, random init, as export subjects: MONAI's resnet18 (2D and 3D) and
DenseNet121, lukemelas' EfficientNet-B0, an MLP with BatchNorm1d, and a CNN built with the
seed's BatchNorm (which must fail, naming it). Tiny spatial sizes, the TorchScript exporter
(10x faster to export than dynamo) and each model built once per session; one CLI run (through
click's runner: the real `bncheck export` process runs in test_onnx_cli.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bncheck.onnx.export import export_onnx
from bncheck.onnx.source import ModelSource, model_source
from bncheck.onnx.verify import Report, verify_against_torch

pytest.importorskip("monai")
pytest.importorskip("efficientnet_pytorch")

MODELS = str(Path(__file__).parents[1] / "data" / "models.py")

# The networks' own topologies (resnet18's blocks, DenseNet121's (6, 12, 24, 16) dense layers)
# at reduced widths, so the test suite stays within its budget; full widths are measured in
# docs/onnx.md.
SUBJECTS = {
    "resnet18_2d": ("monai.networks.nets:resnet18",
                    {"spatial_dims": 2, "n_input_channels": 3, "num_classes": 10,
                     "widen_factor": 0.5}, (2, 3, 32, 32)),
    "resnet18_3d": ("monai.networks.nets:resnet18",
                    {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 2,
                     "widen_factor": 0.25}, (2, 1, 16, 16, 16)),
    "densenet121": ("monai.networks.nets:DenseNet121",
                    {"spatial_dims": 2, "in_channels": 3, "out_channels": 10,
                     "init_features": 16, "growth_rate": 8}, (2, 3, 32, 32)),
    "efficientnet_b0": (f"{MODELS}:efficientnet_b0", {}, (2, 3, 32, 32)),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Built:
    def __init__(self, name: str, keep_bn: bool = False) -> None:
        spec, args, shape = SUBJECTS[name]
        self.source: ModelSource = model_source(spec, model_args=args, input_shapes=[shape])
        self.model = self.source.build(seed=0, calibrate=2)
        self.data = export_onnx(self.model, source=self.source, exporter="torchscript",
                                keep_bn=keep_bn)
        self.report: Report = verify_against_torch(self.data, self.model, source=self.source,
                                                   batches=(1, 3))


@pytest.fixture(scope="module")
def resnet2d() -> Built:
    return Built("resnet18_2d")


#: The tests that share the resnet18 export run on one xdist worker, which builds it once.
RESNET2D = pytest.mark.xdist_group("onnx_models_resnet2d")


@RESNET2D
@pytest.mark.parametrize("name", ["resnet18_2d", "resnet18_3d", "densenet121"])
def test_monai_models_verify_on_every_runtime(name: str, resnet2d: Built) -> None:
    built = resnet2d if name == "resnet18_2d" else Built(name)
    assert built.report.ok, built.report.failure_message()
    verified = {(r.runtime, r.level) for r in built.report.rows
                if r.check == "vs eager" and r.verdict == "ok"}
    assert {("onnxruntime CPU", "DISABLE_ALL"), ("onnxruntime CPU", "ENABLE_ALL"),
            ("onnx.reference", ""), ("OpenVINO CPU", "f32")} <= verified
    assert any(rt == "OpenVINO CPU" and level.startswith("default") for rt, level in verified)
    bns = [m for m in built.model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert len(built.report.placement) == len(bns)
    kinds = {p.kind for p in built.report.placement}
    # TorchScript's constant folding folds every Conv + BN; DenseNet's pre-activation BNs
    # (BN -> ReLU -> Conv) have no Conv before them and stay nodes.
    assert kinds == ({"folded", "node"} if name == "densenet121" else {"folded"})


@RESNET2D
def test_first_diverging_batchnorm_is_named_by_module(resnet2d: Built) -> None:
    """The export against a source whose layer3.1.bn2 running variance differs: localized to
    that module, not to the Conv it is folded into nor to a later layer."""
    changed = __import__("copy").deepcopy(resnet2d.model)
    bn = dict(changed.named_modules())["layer3.1.bn2"]
    bn.running_var.mul_(3.0)
    report = verify_against_torch(resnet2d.data, changed, source=resnet2d.source, batches=(3,))
    assert not report.ok
    assert report.localization.layer == "layer3.1.conv2"  # type: ignore[union-attr]
    assert "layer3.1.bn2 (BatchNorm2d(128)) folded into it" in str(report.localization)


@pytest.mark.slow
def test_efficientnet_b0_swish_and_its_bn_conventions() -> None:
    """EfficientNet-B0's MemoryEfficientSwish is a custom autograd Function: with torch 2.13
    both exporters inline it (Sigmoid, Mul) and the file verifies; it trips the TorchScript
    exporter only with autograd_inlining=False (the behaviour before torch 2.1). Its BNs
    (momentum 0.01, eps 1e-3) appear in ONNX as momentum 0.99 (the ONNX convention)."""
    built = Built("efficientnet_b0", keep_bn=True)
    assert built.report.ok, built.report.failure_message()
    assert built.report.bn_nodes
    assert {(round(n.epsilon, 6), round(n.momentum, 6)) for n in built.report.bn_nodes} == {
        (0.001, 0.99)}
    with pytest.raises(RuntimeError, match="Couldn't export Python operator "
                                           "SwishImplementation"):
        torch.onnx.export(built.model, (torch.rand(2, 3, 32, 32),), io.BytesIO(), dynamo=False,
                          autograd_inlining=False)


def test_a_model_built_with_the_seed_batchnorm_fails_naming_it() -> None:
    source = model_source(f"{MODELS}:seed_bn_cnn", input_shapes=[(2, 3, 8, 8)])
    model = source.build(seed=0)
    report = verify_against_torch(export_onnx(model, source=source, exporter="torchscript"),
                                  model, source=source, batches=(3,))
    assert not report.ok
    assert str(report.localization).startswith(
        "stem.1: BatchNorm(8) — exported graph normalizes with batch statistics (ReduceMean "
        "over the batch axis)")
    assert report.batch_nodes[0][1] == "ReduceMean"
    # The same CNN with torch.nn.BatchNorm2d passes: the failure is the seed's BatchNorm.
    good = model_source(f"{MODELS}:small_cnn", input_shapes=[(2, 3, 8, 8)])
    good_model = good.build(seed=0)
    assert verify_against_torch(export_onnx(good_model, source=good, exporter="torchscript"),
                                good_model, source=good, batches=(3,)).ok


def test_cli_export_of_an_mlp_with_batchnorm1d(tmp_path: Path, cli: Callable[..., Any]) -> None:
    out = tmp_path / "mlp.onnx"
    result = cli("export", out, "--model", f"{MODELS}:mlp_bn1d", "--model-arg", "hidden=24",
                 "--input-shape", "4,16", "--keep-bn", "--exporter", "torchscript")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["model"].endswith("models.py:mlp_bn1d")
    assert manifest["source"]["model_args"] == {"hidden": 24}
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 16], "dtype": "float32"}]
    assert [(p["layer"], p["kind"]) for p in manifest["bn_placement"]] == [("1", "node"),
                                                                           ("4", "node")]
    assert [n["training_mode"] for n in manifest["bn_nodes"]] == [0, 0]
    assert "BatchNormalization node (training_mode=0)" in result.stdout
