"""``bncheck gate``: the unchanged tree passes against exports/; a planted bug in the reference
BatchNorm fails it with a diff naming the output, the error and the tolerance."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import bncheck.reference as ref
from bncheck.errors import InvalidArgument
from bncheck.onnx import gate as gate_module
from bncheck.onnx.source import lenet_source

ROOT = Path(__file__).parents[2]
CLI = Callable[..., Any]  # conftest's cli / cli_subprocess
#: The two full gate runs share one xdist worker: the exporters' first use (seconds) is paid
#: once there.
GATE_RUNS = pytest.mark.xdist_group("onnx_gate")


def planted_batch_norm(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A copy of ``bncheck.reference.batch_norm`` whose running variance tracks the *biased*
    batch variance (d2l-en's convention, a realistic slip)."""
    def planted(input, running_mean, running_var, weight=None, bias=None,  # type: ignore[no-untyped-def]
                training=False, momentum=0.1, eps=1e-5):
        if not (training and running_var is not None):
            return original(input, running_mean, running_var, weight, bias, training,
                            momentum, eps)
        y = original(input, running_mean, None, weight, bias, training, momentum, eps)
        with torch.no_grad():
            biased = input.float().var(dim=ref.reduction_dims(input.dim()), unbiased=False)
            running_var.mul_(1 - momentum).add_(biased, alpha=momentum)
        return y

    return planted


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, where `bncheck gate` finds exports/ by default."""
    monkeypatch.chdir(ROOT)


@GATE_RUNS
@pytest.mark.usefixtures("in_root")
def test_unchanged_tree_passes_the_gate(cli: CLI) -> None:
    result = cli("gate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate passed" in result.stdout
    for variant in ("lenet_scratch", "lenet_scratch.keep-bn", "lenet_torch",
                    "lenet_torch.keep-bn"):
        assert f"{variant} (exports)" in result.stdout
    # A model nobody here wrote, its goldens rebuilt from the code (not committed).
    monai = importlib.util.find_spec("monai") is not None
    assert ("monai_resnet18_2d (exports)" if monai else "skipped: monai_resnet18_2d") \
        in result.stdout
    assert not (ROOT / "exports" / "monai_resnet18_2d.npz").exists()


@GATE_RUNS
@pytest.mark.usefixtures("in_root")
def test_planted_reference_bug_fails_the_gate(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    # bncheck.BatchNorm calls the module-level batch_norm, so every scratch LeNet-BN the gate
    # builds carries the bug; torch.nn's BatchNorm does not.
    monkeypatch.setattr(ref, "batch_norm", planted_batch_norm(ref.batch_norm))
    result = cli("gate", "--variant", "lenet_scratch", "--variant", "lenet_torch")
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "gate: drift from the goldens" in err
    # The diff names the output, the error and the tolerance.
    assert "lenet_scratch: eager state/10.running_var vs golden" in err
    assert "Greatest relative difference" in err and "allowed" in err
    assert "lenet_torch" not in err  # torch.nn's BatchNorm is untouched by the plant


def test_gate_without_exports_folder_is_a_usage_error(tmp_path: Path,
                                                      cli_subprocess: CLI) -> None:
    """The real `bncheck gate` process (the full runs above go through click's runner)."""
    result = cli_subprocess("gate", "--exports", tmp_path / "none")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: Expected --exports to be a folder")


def test_gate_with_an_empty_exports_folder_suggests_only_its_own_options(
        tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        gate_module.run_gate(tmp_path, only=["lenet_torch"])
    message = str(info.value)
    assert "no golden manifest" in message and "bncheck gate --update" in message
    assert "--bn" not in message and "--manifest" not in message


def test_update_writes_goldens_that_then_pass(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # One variant, exported with the (fast) TorchScript exporter: this tests --update's logic;
    # the dynamo exports are exercised by the two gate runs above.
    monkeypatch.setattr(gate_module, "VARIANTS", (gate_module.Variant(
        "lenet_torch", lambda: lenet_source("torch"), golden="lenet_torch.npz",
        exporter="torchscript"),))
    written = gate_module.run_gate(tmp_path, update=True).written
    assert sorted(p.name for p in written) == ["lenet_torch.json", "lenet_torch.npz"]
    manifest = json.loads((tmp_path / "lenet_torch.json").read_text())
    assert manifest["golden"]["file"] == "lenet_torch.npz" and manifest["verified"]
    assert gate_module.run_gate(tmp_path).ok


def test_monai_variant_fails_on_a_changed_fingerprint_or_structure(tmp_path: Path) -> None:
    """The non-LeNet variant has no npz: a drift in its outputs (the fingerprint) or in where
    its BNs went (the structure) must still fail the gate."""
    pytest.importorskip("monai")
    manifest = json.loads((ROOT / "exports" / "monai_resnet18_2d.json").read_text())
    manifest["fingerprint"][1][3] += 0.01
    manifest["bn_placement"][5]["kind"] = "node"
    (tmp_path / "monai_resnet18_2d.json").write_text(json.dumps(manifest))
    result = gate_module.run_gate(tmp_path, only=["monai_resnet18_2d"])
    assert not result.ok
    drift = "\n".join(result.drift)
    assert "monai_resnet18_2d: eager outputs vs golden: Mismatched elements: 1 / 20" in drift
    assert "at index (1, 3)" in drift
    assert "monai_resnet18_2d: manifest 'bn_placement' changed" in drift
