"""Fast in-process checks of bncheck.onnx: opset rules, atomic writes, placement, localization."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from bncheck.engine.target import bn_factory, load_target
from bncheck.errors import InvalidArgument, OutputError
from bncheck.onnx import build_model, export_onnx, make_inputs
from bncheck.onnx.export import check_opset, write_atomic
from bncheck.onnx.localize import localize
from bncheck.onnx.placement import bn_placement

SEED_BN = str(Path(__file__).parents[1] / "data" / "seed_bn_fixed.py") + ":BatchNorm"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("opset", "exporter", "message"), [
    (17, "dynamo", "Expected opset in [18, 23] for the dynamo exporter, received opset=17"),
    (24, "dynamo", "received opset=24"),
    (6, "torchscript", "Expected opset in [7, 20] for the torchscript exporter"),
    (21, "torchscript", "received opset=21"),
    (18, "onnxscript", "Expected exporter to be one of ['dynamo', 'torchscript']"),
])
def test_bad_opsets_and_exporters(opset: int, exporter: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_opset(opset, exporter)


def test_write_atomic_leaves_existing_files_intact_on_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "m.onnx", tmp_path / "m.json"
    a.write_bytes(b"old onnx")
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="No space left"):
        write_atomic({a: b"new onnx", b: b"{}"})
    assert a.read_bytes() == b"old onnx" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left


@pytest.fixture(scope="module")
def seed_model():  # type: ignore[no-untyped-def]
    return build_model(bn_factory(load_target(SEED_BN)))


def test_placement_of_torchscript_exports() -> None:
    model = build_model("torch")
    graph = onnx.load_from_string(export_onnx(model, exporter="torchscript"))
    kinds = [p.kind for p in bn_placement(graph)]
    assert kinds == ["folded", "folded", "node", "node"]
    assert bn_placement(graph)[0].detail == "folded into Conv (layer 0)"


def test_placement_flags_the_seed_batch_statistics(seed_model) -> None:  # type: ignore[no-untyped-def]
    graph = onnx.load_from_string(export_onnx(seed_model, exporter="torchscript"))
    for p in bn_placement(graph):
        assert p.kind == "batch-statistics"
        assert "ReduceMean over the batch axis" in p.detail


def test_localize_names_the_first_seed_batchnorm(seed_model) -> None:  # type: ignore[no-untyped-def]
    data = export_onnx(seed_model, exporter="torchscript", keep_bn=True)
    found = localize(data, seed_model, make_inputs(5, seed=3))
    assert found is not None and found.layer == "1"
    assert str(found) == ("layer 1: BatchNorm(6) — exported graph normalizes with batch "
                          "statistics (ReduceMean over the batch axis) [graph node '/1/Add']")


def test_localize_finds_nothing_in_a_good_export() -> None:
    model = build_model("scratch")
    assert localize(export_onnx(model, exporter="torchscript"), model,
                    make_inputs(5, seed=3)) is None


def test_build_model_is_deterministic_and_calibrated() -> None:
    a, b = build_model("torch", seed=4), build_model("torch", seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert va.equal(vb), k
    assert not a.training
    assert float(a[10].running_var.mean()) < 0.5  # far from a fresh layer's 1


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"),
                    reason="the alternate signal stack is read through glibc")
def test_openvino_leaves_the_signal_stack_as_it_was_and_ctrl_c_works():
    # OpenVINO's CPU plugin installs an alternate signal stack and frees it with the compiled
    # model: the next Ctrl-C after `bncheck check` crashed with SIGSEGV instead of exiting 130.
    import ctypes
    import signal
    import time

    import numpy as np
    from onnx import TensorProto, helper

    from bncheck.onnx.runtimes.openvino import OpenVino

    plugin = OpenVino("f32")
    if plugin.unavailable():
        pytest.skip(plugin.unavailable())

    class Stack(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                    ("ss_size", ctypes.c_size_t)]

    def stack() -> tuple[int | None, int, int]:
        st = Stack()
        ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st))
        return st.ss_sp, st.ss_flags, st.ss_size

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    before = stack()
    run = plugin.load(model.SerializeToString(), model)
    run({"x": np.ones((2, 3), np.float32)})
    del run
    assert stack() == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
