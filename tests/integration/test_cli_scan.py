"""`bncheck scan` end to end: the small models of tests/data/scan_models.py in-process (click's
runner; the model's code still runs in a watched worker), the seed's LeNet, MONAI's resnet18
and EfficientNet-B0 as real subprocesses, a replay of a reported failure, usage errors and
Ctrl-C. Few examples per property: the subjects are the inventory, the grouping and the
model-level checks; the catalogue itself is tested elsewhere."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "data"
REPO = DATA.parents[1]
MODELS = "tests/data/scan_models.py"
SHAPE = ("--input-shape", "2,3,8,8")
FEW = ("--examples", "3")


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # the specs in the report are relative to the working directory


def test_one_defective_class_among_correct_ones_is_named_with_each_path(cli, tmp_path):
    out = tmp_path / "scan.json"
    r = cli("scan", f"{MODELS}:mixed_custom", *SHAPE, *FEW, "--property",
            "running_stats_update", "--json", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "tests/data/scan_models.py:BiasedVarBN" in r.stdout
    data = json.loads(out.read_text())
    verdicts = {lay["path"]: lay["verdict"] for lay in data["layers"]}
    assert verdicts == {"stem.1": "passed", "layer1.0.bn": "passed", "layer1.1.bn": "passed",
                        "layer2.0.bn": "failed", "layer2.1.bn": "failed"}
    (bad,) = [c for c in data["classes"] if not c["ok"]]
    assert bad["spec"] == "tests/data/scan_models.py:BiasedVarBN"
    assert bad["paths"] == ["layer2.0.bn", "layer2.1.bn"]
    replay = bad["replays"]["running_stats_update"]
    assert replay == ("bncheck verify tests/data/scan_models.py:BiasedVarBN --momentum 0.1 "
                      "--eps 1e-05 --dims 4 --examples 3 --property running_stats_update "
                      "--seed 0")
    assert "replay: bncheck verify tests/data/scan_models.py:BiasedVarBN --momentum 0.1" \
        in r.stdout
    assert all(c["status"] != "failed" for c in data["checks"])
    assert data["ok"] is False and data["command"].startswith("bncheck scan")  # + sys.argv
    # the replay reproduces the failure on the class alone
    again = cli(*shlex.split(replay)[1:])
    assert again.returncode == 1 and "property running_stats_update failed" in again.stdout


def test_a_train_override_that_keeps_a_batchnorm_training_exits_1_naming_the_block(cli):
    r = cli("scan", f"{MODELS}:train_override", *SHAPE, *FEW, "--property", "eval_forward")
    assert r.returncode == 1, r.stdout + r.stderr
    text = " ".join(r.stdout.split())
    assert "eval_reaches_norm_layers failed after model.eval(), 1 layer(s) still in training " \
           "mode: layer1.1.bn; kept there by StubbornBlock.train() of layer1.1" in text.replace(
               "│ ", "")
    assert "layer1.1.bn failed check eval_reaches_norm_layers" in text


def test_a_frozen_backbone_passes_with_a_note_and_fails_when_strict(cli, tmp_path):
    out = tmp_path / "scan.json"
    r = cli("scan", f"{MODELS}:frozen_backbone", *SHAPE, *FEW, "--property", "eval_forward",
            "--json", out)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    frozen = {c["name"]: c for c in data["checks"]}["frozen_layers"]
    assert frozen["status"] == "note" and frozen["paths"] == ["backbone.1", "backbone.3.bn"]
    assert {lay["path"]: lay["verdict"] for lay in data["layers"]}["backbone.1"] == "frozen"
    strict = cli("scan", f"{MODELS}:frozen_backbone", *SHAPE, *FEW, "--property",
                 "eval_forward", "--strict-frozen")
    assert strict.returncode == 1


def test_a_wrong_hand_fusion_fails_and_a_right_one_passes(cli):
    wrong = cli("scan", f"{MODELS}:wrong_fusion", *SHAPE, *FEW, "--property", "eval_forward")
    assert wrong.returncode == 1
    assert "fusion_matches_eval failed model.fuse() changes the eval output in torch.float64" \
        in " ".join(wrong.stdout.split())
    right = cli("scan", f"{MODELS}:right_fusion", *SHAPE, *FEW, "--property", "eval_forward")
    assert right.returncode == 0, right.stdout + right.stderr
    assert "fusion_matches_eval passed" in right.stdout


def test_onnx_export_of_a_correct_model_passes(cli, tmp_path):
    out = tmp_path / "scan.json"
    r = cli("scan", f"{MODELS}:correct_cnn", *SHAPE, *FEW, "--property", "eval_forward",
            "--onnx", "--json", out)
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"]: c["status"] for c in json.loads(out.read_text())["checks"]}
    assert checks["onnx_export"] == "passed"


def test_the_seed_lenet_is_found_at_its_module_paths_and_fails(cli_subprocess, tmp_path):
    out = tmp_path / "scan.json"
    r = cli_subprocess("scan", "--bn", "tests/data/seed_bn.py:BatchNorm", *FEW, "--property",
                       "train_forward", "--json", out, cwd=REPO)
    assert r.returncode == 1, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert [(lay["path"], lay["verdict"], lay["found_by"]) for lay in data["layers"]] == [
        (p, "failed", "statistics") for p in ("1", "5", "10", "13")]
    (cls,) = data["classes"]
    assert cls["spec"] == "tests/data/seed_bn.py:BatchNorm" and cls["dims"] == [2, 4]
    assert "NameError" in data["layers"][0]["reason"]
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["model_forward"]["status"] == "failed"
    assert "scan: verifying class 1 of 1: tests/data/seed_bn.py:BatchNorm (4 layer(s))" \
        in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_the_typo_fixed_seed_fails_the_model_checks_and_its_export_is_localized(cli, tmp_path):
    out = tmp_path / "scan.json"
    r = cli("scan", "tests/data/models.py:seed_bn_cnn", *SHAPE, *FEW, "--property",
            "stats_are_buffers", "--onnx", "--json", out)
    assert r.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert checks["eval_grad_mode_independence"]["status"] == "failed"
    assert checks["eval_per_sample"]["status"] == "failed"
    assert checks["onnx_export"]["status"] == "failed"
    assert checks["onnx_export"]["paths"] == ["stem.1"]
    assert checks["onnx_export"]["message"].startswith("first diverging layer: stem.1")


@pytest.mark.slow
def test_monai_resnet18_passes(cli_subprocess, tmp_path):
    pytest.importorskip("monai")
    out = tmp_path / "scan.json"
    r = cli_subprocess("scan", "monai.networks.nets:resnet18", "--model-arg", "spatial_dims=2",
                       "--model-arg", "n_input_channels=3", "--input-shape", "2,3,32,32",
                       "--examples", "2", "--calibrate", "2", "--json", out, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert len(data["layers"]) == 20 and "layer3.0.downsample.1" in {
        lay["path"] for lay in data["layers"]}
    assert [c["spec"] for c in data["classes"]] == ["torch.nn:BatchNorm2d"]


@pytest.mark.slow
def test_efficientnet_b0_passes(cli_subprocess, tmp_path):
    pytest.importorskip("efficientnet_pytorch")
    out = tmp_path / "scan.json"
    r = cli_subprocess("scan", "tests/data/models.py:efficientnet_b0", "--input-shape",
                       "2,3,32,32", "--examples", "2", "--calibrate", "2", "--json", out,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert len(data["layers"]) == 49
    (cls,) = data["classes"]
    # efficientnet_pytorch keeps momentum = 1 - 0.99 (0.010000000000000009): declared as kept
    assert cls["declarations"]["momentum"] == pytest.approx(0.01, abs=1e-15)
    assert cls["declarations"]["eps"] == 1e-3


@pytest.mark.parametrize(("args", "message"), [
    ((f"{MODELS}:mixed_custom",), "Expected --input-shape for --model="),
    ((f"{MODELS}:nope", *SHAPE), "has no attribute 'nope'"),
    ((f"{MODELS}:mixed_custom", *SHAPE, "--property", "nope"), "nope"),
    ((f"{MODELS}:mixed_custom", *SHAPE, "--json", "/nonexistent/dir/x.json"), "--json"),
    ((f"{MODELS}:mixed_custom", *SHAPE, "--jobs", "0"), "Expected --jobs"),
    ((f"{MODELS}:mixed_custom", "--input-shape", "2,x"), "--input-shape"),
    (("tests/data/models.py:not_a_module", *SHAPE), "expected a torch.nn.Module"),
    ((f"{MODELS}:mixed_custom", "--bn", "torch", *SHAPE), "--bn"),
    ((f"{MODELS}:mixed_custom", *SHAPE, "--timeout", "nan"), "timeout=nan"),
])
def test_usage_errors_exit_2_with_one_line(cli, args, message):
    r = cli("scan", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_no_normalization_layer_exits_1_saying_nothing_was_verified(cli, tmp_path):
    (tmp_path / "plain.py").write_text(
        "import torch\ndef mlp():\n    return torch.nn.Linear(4, 2)\n")
    r = cli("scan", f"{tmp_path / 'plain.py'}:mlp", "--input-shape", "2,4")
    assert r.returncode == 1 and "no normalization layer found" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the target blocks on linux")
def test_ctrl_c_while_verifying_exits_130_with_a_partial_report(tmp_path):
    mark, out = tmp_path / "worker.pid", tmp_path / "scan.json"
    env = {**os.environ, "BNCHECK_HANG_MARK": str(mark)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bncheck", "scan", f"{MODELS}:hanging_on_float16", *SHAPE, *FEW,
         "--property", "train_forward", "--property", "reduced_precision", "--jobs", "1",
         "--timeout", "300", "--json", str(out)], env=env, cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (mark.exists() and mark.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert f"interrupted (Ctrl-C) after verifying 0 of 1 class(es); partial report written " \
           f"to {out}" in stderr
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["ok"] is False
    assert data["layers"][0]["verdict"] == "not verified"


def test_a_model_that_hangs_is_stopped_after_timeout_and_exits_2(cli):
    r = cli("scan", f"{MODELS}:hanging_forward", *SHAPE, "--timeout", "2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "did not return within 2 s" in r.stderr and "scan_models.py" in r.stderr
