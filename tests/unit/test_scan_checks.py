"""bncheck.scan.model_checks: each model-level check on a model that breaks it and one that
does not (the small models of tests/data/scan_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bncheck.engine.target import load_target
from bncheck.scan import model_checks as mc
from bncheck.scan.inventory import find_norm_layers
from bncheck.scan.report import ScanReport

DATA = Path(__file__).parents[1] / "data"
X = (torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _calibrated(name: str, path: Path = DATA / "scan_models.py") -> nn.Module:
    torch.manual_seed(0)
    model = load_target(f"{path}:{name}")()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 8, 8) * 2 + 0.25)
    return model.eval()


def test_eval_reaches_norm_layers_names_the_layer_and_the_train_override():
    model = _calibrated("train_override")
    check = mc.eval_reaches_norm_layers(model, X, find_norm_layers(model))
    assert check.status == "failed" and check.paths == ["layer1.1.bn"]
    assert "StubbornBlock.train() of layer1.1" in check.message
    good = _calibrated("correct_cnn")
    assert mc.eval_reaches_norm_layers(good, X, find_norm_layers(good)).status == "passed"


def test_statistics_that_move_in_eval_fail_eval_reaches_norm_layers():
    model = _calibrated("seed_bn_cnn", DATA / "models.py")  # updates them when grad is on
    check = mc.eval_reaches_norm_layers(model, X, find_norm_layers(model))
    assert check.status == "failed" and "stem.1 (grad enabled)" in check.message
    assert len(check.paths) == 5


def test_eval_per_sample_fails_when_a_layer_uses_batch_statistics_in_eval():
    assert mc.eval_per_sample(_calibrated("train_override"), X).status == "failed"
    assert mc.eval_per_sample(_calibrated("correct_cnn"), X).status == "passed"


def test_grad_mode_independence_finds_the_seed_and_a_detached_gradient():
    seed = mc.eval_grad_mode_independence(_calibrated("seed_bn_cnn", DATA / "models.py"), X)
    assert seed.status == "failed" and "grad enabled differs from no_grad" in seed.message

    class DetachedInEval(nn.BatchNorm2d):  # the same output, gradient zero in eval
        def forward(self, x):
            return super().forward(x if self.training else x.detach())

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DetachedInEval(4), nn.ReLU(),
                          nn.Conv2d(4, 2, 3)).eval()
    check = mc.eval_grad_mode_independence(model, X)
    assert check.status == "failed" and "directional derivative 0 vs" in check.message
    model[1] = nn.BatchNorm2d(4).eval()
    assert mc.eval_grad_mode_independence(model, X).status == "passed"


def test_frozen_backbone_is_a_note_unless_strict():
    model = _calibrated("frozen_backbone")
    layers = find_norm_layers(model)
    note = mc.frozen_layers(model, X, layers)
    assert note.status == "note" and note.paths == ["backbone.1", "backbone.3.bn"]
    assert "FrozenBackbone.train() of the model" in note.message
    assert "requires_grad=False" in note.message
    assert mc.frozen_layers(model, X, layers, strict=True).status == "failed"
    good = _calibrated("correct_cnn")
    assert mc.frozen_layers(good, X, find_norm_layers(good)).status == "passed"


def test_frozen_parameters_while_training_are_noted():
    model = _calibrated("correct_cnn")
    for p in model[1].parameters():
        p.requires_grad_(False)
    check = mc.frozen_layers(model, X, find_norm_layers(model))
    assert check.status == "note" and check.paths == ["1"]
    assert "statistics still update" in check.message


def test_fusion_that_forgets_eps_fails_in_float64_and_a_right_one_passes():
    wrong = mc.fusion_matches_eval(_calibrated("wrong_fusion"), X)
    assert wrong.status == "failed" and "model.fuse() changes the eval output in torch.float64" \
        in wrong.message
    assert mc.fusion_matches_eval(_calibrated("right_fusion"), X).status == "passed"
    assert mc.fusion_matches_eval(_calibrated("correct_cnn"), X).status == "skipped"


def test_outputs_compare_by_scale():
    a = [torch.tensor([1.0, 2.0])]
    assert mc._differs(a, [torch.tensor([1.0, 2.0 + 1e-4])], 1e-3) is None
    assert "greatest absolute difference 0.01" in mc._differs(
        a, [torch.tensor([1.0, 2.01])], 1e-3)
    assert "shape" in mc._differs(a, [torch.zeros(3)], 1e-3)
    assert mc.outputs_of({"a": a[0], "b": (a[0], None)}) == [a[0], a[0]]


@pytest.mark.parametrize("status", ["failed", "note"])
def test_report_is_not_ok_with_nothing_verified_or_a_failed_check(status):
    report = ScanReport("m", 0, "ci")
    assert not report.ok
    report.checks.append(mc.Check("x", status))
    assert not report.ok
