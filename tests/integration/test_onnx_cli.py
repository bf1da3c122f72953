"""``bncheck export`` and ``bncheck check`` end to end: real onnxruntime and onnx.reference, real
files in tmp_path. Real subprocesses for the default export, a check against its goldens and
``--debug``; the rest in-process with click's runner (the same code path, without a new
interpreter's 2-3 s of imports and the exporter's first-use cost each time)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

SEED_BN = str(Path(__file__).parents[1] / "data" / "seed_bn_fixed.py") + ":BatchNorm"
CLI = Callable[..., Any]  # conftest's cli / cli_subprocess
#: The tests that read the default export run on one xdist worker, which builds it once.
DEFAULT_EXPORT = pytest.mark.xdist_group("onnx_default_export")


@pytest.fixture(scope="module")
def default_export(tmp_path_factory: pytest.TempPathFactory,
                   cli_subprocess: CLI) -> tuple[Path, str]:
    """`bncheck export lenet.onnx` with every default (dynamo, optimized, bn=scratch), as a user
    runs it: a real subprocess."""
    out = tmp_path_factory.mktemp("default") / "lenet.onnx"
    result = cli_subprocess("export", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


@DEFAULT_EXPORT
def test_default_export_verifies_and_writes_its_files(default_export: tuple[Path, str]) -> None:
    out, stdout = default_export
    for name in ("onnxruntime CPU", "DISABLE_ALL", "ENABLE_ALL", "onnx.reference",
                 "batch independence", "grad modes", "BN placement"):
        assert name in stdout
    # CUDA is reported, never silent: skipped here, run where it exists.
    assert "onnxruntime CUDA" in stdout and "torch CUDA" in stdout
    if not torch.cuda.is_available():
        assert "skipped: torch CUDA: torch.cuda.is_available() is False" in stdout
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["verified"] is True
    assert manifest["source"]["exporter"] == "dynamo" and manifest["opset"] >= 18
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28],
                                   "dtype": "float32"}]
    assert manifest["outputs"][0]["name"] == "logits"
    assert [p["kind"] for p in manifest["bn_placement"]] == ["decomposed"] * 4
    runtimes = {r["runtime"] for r in manifest["results"] if r["verdict"] == "ok"}
    assert {"onnxruntime CPU", "onnx.reference"} <= runtimes
    assert all(r["verdict"] in ("ok", "skipped") for r in manifest["results"])
    onnx.checker.check_model(onnx.load(out), full_check=True)
    with np.load(out.with_suffix(".npz")) as golden:
        assert golden["input"].shape == (16, 1, 28, 28) and golden["logits"].shape == (16, 10)


@DEFAULT_EXPORT
def test_check_against_the_manifest_goldens(default_export: tuple[Path, str],
                                            cli_subprocess: CLI) -> None:
    out, _ = default_export
    result = cli_subprocess("check", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256 matches" in result.stdout and "vs golden" in result.stdout


@DEFAULT_EXPORT
def test_check_against_a_tampered_golden_fails(default_export: tuple[Path, str],
                                               tmp_path: Path, cli: CLI) -> None:
    out, _ = default_export
    model = tmp_path / "m.onnx"
    model.write_bytes(out.read_bytes())
    manifest = json.loads(out.with_suffix(".json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with np.load(out.with_suffix(".npz")) as g:
        arrays = {k: g[k] for k in g.files}
    arrays["logits"][3, 2] += 0.01
    np.savez(tmp_path / manifest["golden"]["file"], **arrays)  # type: ignore[arg-type]
    result = cli("check", model)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "logits (onnxruntime CPU DISABLE_ALL, batch 5, vs golden): Mismatched elements: 1 / 50" \
        in result.stderr
    assert "at index (3, 2)" in result.stderr
    assert "localization: no PyTorch source" in result.stderr


@DEFAULT_EXPORT
def test_check_localizes_a_changed_running_variance(default_export: tuple[Path, str],
                                                   tmp_path: Path, cli: CLI) -> None:
    """The export against a source whose layer-5 BatchNorm has another running variance: the
    first diverging layer is 5, not the Conv before it nor the layers after."""
    from bncheck.onnx import build_model

    out, _ = default_export
    state = build_model("scratch", seed=0).state_dict()
    state["5.running_var"] = state["5.running_var"] * 1.5
    ckpt = tmp_path / "changed.pt"
    torch.save(state, ckpt)
    result = cli("check", out, "--bn", "scratch", "--checkpoint", ckpt)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first diverging layer: layer 5: BatchNorm(16) — exported graph's BatchNorm " \
           "(decomposed into elementwise ops (Mul, Add)) differs from the eager layer" \
           in result.stderr


@pytest.mark.parametrize(("bn", "args", "kinds"), [
    ("torch", ["--keep-bn"], ["node"] * 4),
    ("torch", ["--exporter", "torchscript"], ["folded", "folded", "node", "node"]),
    ("scratch", ["--exporter", "torchscript", "--keep-bn"], ["decomposed"] * 4),
])
def test_export_variants_verify(tmp_path: Path, bn: str, args: list[str],
                                kinds: list[str], cli: CLI) -> None:
    out = tmp_path / "v.onnx"
    result = cli("export", out, "--bn", bn, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert [p["kind"] for p in manifest["bn_placement"]] == kinds
    if "node" in kinds:
        assert "BatchNormalization node (training_mode=0)" in result.stdout
    # The same file checks against its PyTorch source too.
    again = cli("check", out, "--bn", bn)
    assert again.returncode == 0, again.stdout + again.stderr


def test_checkpoint_and_old_opset_export(tmp_path: Path, cli: CLI) -> None:
    """A state_dict checkpoint instead of calibration; opset 13 with BatchNormalization nodes,
    which onnx.reference computes with its inference kernel (its BatchNormalization-9 is wrong:
    docs/onnx.md "Opsets")."""
    from bncheck.onnx import build_model

    ckpt = tmp_path / "lenet.pt"
    torch.save(build_model("torch", seed=5).state_dict(), ckpt)
    out = tmp_path / "old.onnx"
    result = cli("export", out, "--bn", "torch", "--checkpoint", ckpt, "--exporter",
                     "torchscript", "--opset", "13", "--keep-bn")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "n/a: onnx.reference" not in result.stdout
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["opset"] == 13 and manifest["source"]["checkpoint"] == str(ckpt)
    # A fixed batch size is a valid signature: check runs the batch the graph allows.
    model = onnx.load(out)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 16
    onnx.save(model, out)
    again = cli("check", out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sha256 differs" in again.stdout


def test_seed_batchnorm_fails_names_layer_1_and_writes_nothing(tmp_path: Path, cli: CLI) -> None:
    out = tmp_path / "lenet.onnx"
    before = b"an earlier export that must survive byte for byte"
    out.write_bytes(before)
    result = cli("export", out, "--bn", SEED_BN)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("first diverging layer: layer 1: BatchNorm(6) — exported graph normalizes with "
            "batch statistics (ReduceMean over the batch axis)") in result.stderr
    assert "batch independence" in result.stdout and "FAIL" in result.stdout
    assert "nothing written" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.onnx"]


def test_keep_failed_writes_the_failed_export(tmp_path: Path, cli: CLI) -> None:
    out = tmp_path / "seed.onnx"
    result = cli("export", out, "--bn", SEED_BN, "--exporter", "torchscript",
                     "--keep-failed")
    assert result.returncode == 1
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["verified"] is False
    assert manifest["bn_placement"][0]["kind"] == "batch-statistics"
    # check against the seed's eager model: the eval model itself depends on grad mode.
    again = cli("check", out, "--bn", SEED_BN)
    assert again.returncode == 1
    assert "eval output depends on grad mode" in again.stdout


def _wrong_signature(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _bad_checkpoint(path: Path) -> None:
    torch.save({"0.weight": torch.zeros(6, 1, 5, 5), "extra": torch.zeros(1)}, path)


def _write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


BAD = [
    ("not-onnx", lambda d: _write(d / "m.onnx", b"this is not a protobuf\n"),
     ["check", "{d}/m.onnx"], "is not an ONNX model"),
    ("truncated", lambda d: _write(d / "m.onnx", d.joinpath("full.onnx").read_bytes()[:4000]),
     ["check", "{d}/m.onnx"], "m.onnx"),
    ("wrong-signature", lambda d: _wrong_signature(d / "m.onnx"),
     ["check", "{d}/m.onnx", "--bn", "torch"], "wrong input signature"),
    ("missing-file", None, ["check", "{d}/none.onnx"], "does not exist"),
    ("missing-manifest", lambda d: _write(d / "m.onnx", d.joinpath("full.onnx").read_bytes()),
     ["check", "{d}/m.onnx", "--manifest", "{d}/none.json"], "no manifest"),
    ("checkpoint-without-bn", lambda d: _write(d / "m.onnx", d.joinpath("full.onnx").read_bytes()),
     ["check", "{d}/m.onnx", "--checkpoint", "{d}/c.pt"], "--checkpoint and --model-arg need"),
    ("opset-out-of-range", None, ["export", "{d}/o.onnx", "--opset", "99"],
     "Expected opset in [18, 23]"),
    ("opset-below-dynamo", None, ["export", "{d}/o.onnx", "--opset", "13"],
     "use --exporter torchscript"),
    ("missing-checkpoint", None, ["export", "{d}/o.onnx", "--checkpoint", "{d}/none.pt"],
     "no such file"),
    ("checkpoint-wrong-keys", lambda d: _bad_checkpoint(d / "c.pt"),
     ["export", "{d}/o.onnx", "--checkpoint", "{d}/c.pt"], "does not fit LeNet-BN (bn=scratch)"),
    ("missing-target", None, ["export", "{d}/o.onnx", "--bn", "{d}/nope.py:BN"],
     "does not exist"),
    ("missing-out-folder", None, ["export", "{d}/no/such/o.onnx"], "does not exist"),
    ("out-not-onnx", None, ["export", "{d}/o.json"], "Expected OUT to end in .onnx"),
]


@pytest.mark.parametrize(("setup", "argv", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, lenet_torch_onnx: bytes, setup,
                                          argv, message: str, cli: CLI) -> None:
    (tmp_path / "full.onnx").write_bytes(lenet_torch_onnx)
    if setup is not None:
        setup(tmp_path)
    result = cli(*[a.format(d=tmp_path) for a in argv])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "o.onnx").exists()


def test_debug_shows_the_traceback(tmp_path: Path, cli_subprocess: CLI) -> None:
    result = cli_subprocess("check", tmp_path / "none.onnx", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


@DEFAULT_EXPORT
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_run_on_a_gpu(default_export: tuple[Path, str]) -> None:
    import onnxruntime

    _, stdout = default_export
    assert "torch CUDA" in stdout and "skipped: torch CUDA" not in stdout
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert "skipped: onnxruntime CUDA" not in stdout
