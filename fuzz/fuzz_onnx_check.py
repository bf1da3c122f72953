"""Fuzz ``bncheck check MODEL.onnx`` (no source, no manifest) with mutated ONNX bytes and graphs.

Runs what the command runs: :func:`bncheck.onnx.verify.load_onnx` (parse, onnx.checker, shape
inference, signature) and :func:`bncheck.onnx.standalone.verify_standalone` (every runtime
against onnxruntime CPU, batch independence, BatchNormalization nodes). The input's first byte
picks raw bytes (libFuzzer mutates the serialized protobuf) or a structural mutation of one of
the seed graphs: attributes (epsilon, momentum, training_mode) set to any value, input shapes
and element types changed, the opset changed, nodes retyped, dropped or duplicated, initializers
reshaped or truncated.

A crash is: an exception other than bncheck's documented errors (``BNCheckError``: not ONNX, fails
onnx.checker, an unsupported signature, ...) or a hang; a runtime that fails on a model is a row
of the report, not a crash.

    python fuzz/fuzz_onnx_check.py --seconds 300
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["bncheck"]):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import bncheck.onnx.graph  # noqa: F401 - instrumented for coverage
    from bncheck.errors import BNCheckError
    from bncheck.onnx.standalone import verify_standalone
    from bncheck.onnx.verify import load_onnx

WORK = Path(tempfile.mkdtemp(prefix="bncheck-fuzz-onnx-"))
OPS = ["BatchNormalization", "Identity", "Relu", "Add", "Conv", "Gemm", "Flatten", "Mul",
       "ReduceMean", "NoSuchOp"]
TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64,
         TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16]


def _bn_model(training: int = 0, opset: int = 15) -> onnx.ModelProto:
    c = 3
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             (("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", np.arange(c) * 0.5),
              ("var", np.arange(1, c + 1) * 1.0))]
    outs = ["y"] + (["rm", "rv"] if training else [])
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outs,
                            epsilon=1e-5, momentum=0.9, training_mode=training)
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", c, 2, 2])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", c, 2, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_bn() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.full((2, 1, 3, 3), 0.1, np.float32), "w")
    inits = [w] + [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
                   (("s", 1.5), ("b", 0.1), ("m", 0.2), ("v", 2.0))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _identity() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


SEEDS = [_bn_model(), _bn_model(training=1), _conv_bn(), _identity()]


def _mutate(fdp: atheris.FuzzedDataProvider) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
    g = model.graph
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0 and g.node:
            node = g.node[fdp.ConsumeIntInRange(0, len(g.node) - 1)]
            name = ["epsilon", "momentum", "training_mode", "pads"][fdp.ConsumeIntInRange(0, 3)]
            del node.attribute[:]
            if name == "training_mode":
                node.attribute.append(helper.make_attribute(name, fdp.ConsumeIntInRange(-2, 3)))
            elif name == "pads":
                node.attribute.append(helper.make_attribute(
                    name, [fdp.ConsumeIntInRange(-1, 3) for _ in range(4)]))
            else:
                node.attribute.append(helper.make_attribute(name, fdp.ConsumeFloat()))
        elif kind == 1 and g.input:
            dims = g.input[0].type.tensor_type.shape.dim
            if dims:
                d = dims[fdp.ConsumeIntInRange(0, len(dims) - 1)]
                if fdp.ConsumeBool():
                    d.dim_value = fdp.ConsumeIntInRange(0, 6)
                else:
                    d.dim_param = fdp.ConsumeUnicodeNoSurrogates(3) or "N"
        elif kind == 2 and g.input:
            g.input[0].type.tensor_type.elem_type = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)]
        elif kind == 3:
            model.opset_import[0].version = fdp.ConsumeIntInRange(1, 25)
        elif kind == 4 and g.node:
            g.node[fdp.ConsumeIntInRange(0, len(g.node) - 1)].op_type = OPS[
                fdp.ConsumeIntInRange(0, len(OPS) - 1)]
        elif kind == 5 and g.node:
            i = fdp.ConsumeIntInRange(0, len(g.node) - 1)
            if fdp.ConsumeBool():
                del g.node[i]
            else:
                g.node.append(g.node[i])
        elif kind == 6 and g.initializer:
            t = g.initializer[fdp.ConsumeIntInRange(0, len(g.initializer) - 1)]
            arr = numpy_helper.to_array(t)
            n = fdp.ConsumeIntInRange(0, 4)
            t.CopyFrom(numpy_helper.from_array(
                np.resize(arr, n).astype(arr.dtype) * fdp.ConsumeFloat(), t.name))
        elif kind == 7 and g.output:
            g.output[0].type.tensor_type.elem_type = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)]
    return bytes(model.SerializeToString())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fdp = atheris.FuzzedDataProvider(data[1:])
    body = data[1:] if data[0] % 2 == 0 else _mutate(fdp)
    path = WORK / "model.onnx"
    path.write_bytes(body)
    try:
        loaded, _ = load_onnx(path)
        verify_standalone(loaded, input_shapes=[], seed=0, where=str(path))
    except BNCheckError:
        return


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _runner import main

    for i, seed in enumerate(SEEDS):  # the committed corpus: raw bytes of each seed graph
        target = Path(__file__).parent / "corpus" / "onnx" / f"seed{i}"
        if not target.exists():
            target.write_bytes(b"\x00" + seed.SerializeToString())
    main("onnx", test_one_input, timeout=60)
