"""``bncheck export``/``check`` on bad input, in process (click's runner): outputs checked before
any work, a user's layer that raises, checkpoints that are not state_dicts, bad source options,
Ctrl-C. One paragraph on stderr, the right exit code, earlier files intact."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.errors import TargetError
from bncheck.onnx import source as source_module

DATA = Path(__file__).parents[1] / "data"
MODELS = str(DATA / "models.py")
RAISING_BN = f"{MODELS}:RaisingBN"


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command starts building a model."""
    def build(*_a: object, **_k: object) -> None:
        raise AssertionError("the command started work before checking its outputs")

    monkeypatch.setattr(source_module.ModelSource, "build", build)


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize(("out", "message"), [
    ("{d}/missing/m.onnx", "Expected OUT in an existing folder, received OUT="),
    ("/proc/m.onnx", "Cannot write OUT='/proc/m.onnx': folder '/proc' is not writable"),
    ("{d}", "Expected OUT to be a file path"),
    ("{d}/m.json", "Expected OUT to end in .onnx"),
])
def test_outputs_are_checked_before_any_work(tmp_path: Path, out: str, message: str) -> None:
    code, _, err = invoke("export", out.format(d=tmp_path))
    assert code == 2 and err.startswith("Error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_sibling_that_is_a_directory_is_caught_before_any_work(
        tmp_path: Path, no_work: None) -> None:
    (tmp_path / "m.json").mkdir()
    code, _, err = invoke("export", tmp_path / "m.onnx")
    assert code == 2 and "OUT (its manifest)" in err and "is a directory" in err


@pytest.mark.parametrize("command", ["export", "check"])
def test_a_layer_that_raises_names_the_users_file_and_line(tmp_path: Path, command: str,
                                                          lenet_torch_onnx: bytes) -> None:
    target = tmp_path / "m.onnx"
    if command == "check":
        target.write_bytes(lenet_torch_onnx)
    code, _, err = invoke(command, target, "--bn", RAISING_BN)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "ValueError: running_var went negative" in lines[0]
    assert f"at {MODELS}:" in lines[0] and "(in forward)" in lines[0]
    assert "--debug shows the traceback" in lines[0]
    with pytest.raises(TargetError) as info:  # --debug: the traceback, the user's error inside
        invoke(command, target, "--bn", RAISING_BN, "--debug")
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(("make", "message", "absent"), [
    (lambda p: torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), p),
     "holds a pickled torch.nn.modules.container.Sequential object, not a state_dict (was a "
     "whole model saved with torch.save(model)?)", None),
    (lambda p: p.write_bytes(random.Random(0).randbytes(64) + b"\x80"),
     "is not a file written by torch.save", "weights_only=False"),
    (lambda p: p.write_bytes(b"\x80\x02" + random.Random(0).randbytes(200)),
     "cannot be read as a state_dict (", "weights_only=False"),
    (lambda p: torch.save({"model": {"w": torch.zeros(1)}}, p),
     "its entry 'model' looks like one: torch.save(checkpoint['model'], path)", None),
])
def test_checkpoints_that_are_not_state_dicts(tmp_path: Path, make, message: str,  # type: ignore[no-untyped-def]
                                              absent: str | None) -> None:
    ckpt = tmp_path / "c.pt"
    make(ckpt)
    code, _, err = invoke("export", tmp_path / "o.onnx", "--checkpoint", ckpt)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    if absent:
        assert absent not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--model-arg", "x=1"], "--model-arg needs --model"),
    (["--input-shape", "1,3"], "--input-shape needs --model"),
    (["--model", "torch.nn:Linear"], "Expected --input-shape for --model='torch.nn:Linear'"),
    (["--model", "torch.nn:Linear", "--bn", "torch", "--input-shape", "1,2"],
     "--bn replaces LeNet-BN's BatchNorm"),
    (["--model", "torch.nn:Linear", "--input-shape", "1,x"],
     "Expected --input-shape as comma-separated positive integers"),
    (["--model", "torch.nn:Linear", "--input-shape", "2,4", "--model-arg", "4=in_features"],
     "Expected --model-arg as KEY=VALUE"),
    (["--model", f"{MODELS}:nope", "--input-shape", "2,4"], "has no attribute 'nope'"),
    (["--model", f"{MODELS}:not_a_module", "--input-shape", "2,4"],
     "returned Tensor, expected a torch.nn.Module"),
    (["--model", "torch.nn:Linear", "--input-shape", "2,4", "--model-arg", "in_features=4"],
     "building torch.nn:Linear(in_features=4): TypeError"),
    (["--calibrate", "-1"], "Expected --calibrate to be an integer >= 0"),
])
def test_bad_source_options(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = invoke("export", tmp_path / "o.onnx", *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


def test_ctrl_c_exits_130_and_leaves_earlier_files_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bncheck.onnx.export as export_module

    files = {tmp_path / f"m.{ext}": f"earlier {ext}".encode() for ext in ("onnx", "json", "npz")}
    for path, data in files.items():
        path.write_bytes(data)

    def interrupted(*_a: object, **_k: object) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "export_onnx", interrupted)
    code, _, err = invoke("export", tmp_path / "m.onnx", "--bn", "torch", "--calibrate", "1")
    assert code == 130 and "interrupted (Ctrl-C)" in err
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.npz", "m.onnx"]


def test_check_without_source_asks_for_the_symbolic_dimensions(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
         tmp_path / "m.onnx")
    code, _, err = invoke("check", tmp_path / "m.onnx")
    assert code == 2 and "symbolic dimensions H (dim 2), W (dim 3)" in err
    assert "give --input-shape" in err
    code, out, err = invoke("check", tmp_path / "m.onnx", "--input-shape", "2,3,4,4")
    assert code == 0, out + err
    code, _, err = invoke("check", tmp_path / "m.onnx", "--input-shape", "2,5,4,4")
    assert code == 2 and "to fit its shape (N, 3, H, W)" in err
