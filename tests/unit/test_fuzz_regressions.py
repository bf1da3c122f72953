"""Each crash the harnesses in fuzz/ found, as a regression test (the input that found it).

fuzz_reference.py, fuzz_idx.py, fuzz_onnx_check.py and fuzz_cli.py; see fuzz/README.md for what
each one calls a crash and for the runs.
"""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
import torch

import bncheck
from bncheck.engine import oracle
from bncheck.engine.compare import Tolerance, compare
from bncheck.engine.properties._tolerance import forward_tolerance
from bncheck.onnx.localize import first_diverging_node
from bncheck.onnx.verify import ModelFileError, load_onnx
from bncheck.training.data import DataError, read_idx


def test_eval_with_a_subnormal_weight_is_within_the_tolerance():
    # fuzz_reference: weight 1e-40 (subnormal in float32) makes the folded scale
    # weight / sqrt(var + eps) underflow to 0; the exact output 2.4e-35 is representable. The
    # tolerance now covers the subnormal spacing of the folded scale times |x| and |mean|.
    x = torch.tensor([[-7507478016.0]])
    rm, rv = torch.tensor([43137253376.0]), torch.tensor([43137253376.0])
    w = torch.tensor([-9.99994610111476e-41])
    y = bncheck.batch_norm(x, rm, rv, w, None, False, 0.1, 1e-5)
    mean, var = rm.double(), rv.double()
    ref = oracle.normalize(x, mean, var, eps=1e-5, weight=w)
    tol = forward_tolerance(x, mean, var, eps=1e-5, n=1, weight=w.double())
    assert float(ref) != 0.0 and float(y) == 0.0  # the underflow is real
    assert compare(y, ref, tolerance=tol, check_dtype=False) is None


def test_an_overflowing_folded_scale_gives_nan_exactly_where_torch_does():
    # fuzz_reference: a constant channel times weight -1.8e308 / sqrt(eps) = -inf: 0 * inf is
    # NaN in the folded kernel of torch and of the reference (a drop-in for it). Outside the
    # harness's domain, documented; this pins that the reference still matches torch there.
    x = torch.full((1, 4, 3), 8.44879416728888, dtype=torch.float64)
    w = torch.tensor([0.0, -1.7976931348623157e308, -1.7976766183766942e308, 0.0],
                     dtype=torch.float64)
    ours = bncheck.batch_norm(x, None, None, w, None, True)
    theirs = torch.nn.functional.batch_norm(x, None, None, w, None, True)
    assert torch.equal(ours.isnan(), theirs.isnan()) and bool(ours.isnan().any())


@pytest.mark.parametrize("dims", [(0xFFFF0086, 0, 0x210000FF), (0, 2**31, 2**31)])
def test_an_idx_header_with_an_impossible_shape_is_a_data_error(tmp_path, dims):
    # fuzz_idx: a zero dimension makes the data 0 bytes long, but numpy cannot even describe an
    # empty array of that shape: ValueError("array is too big") leaked from read_idx.
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 0x0C, len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
    with pytest.raises(DataError, match="is not a possible array"):
        read_idx(path)


def test_an_onnx_file_that_crashes_the_checker_is_a_model_file_error(tmp_path):
    # fuzz_onnx_check: a mutated BatchNormalization model with tensor data type 39; onnx's C++
    # checker raised ValueError("Invalid tensor data type 39.") through load_onnx.
    path = tmp_path / "m.onnx"
    path.write_bytes(base64.b64decode(
        "CA46oQIKdwoBeAoFc2NhbGUKBGJpYXMKBG1lYW4KA3ZhchIBeRICcm0SAnJ2IhJCYXRjaE5vcm1hbGl6YXRpb2"
        "4qEQoHZXBzaWxvbhWsxSc3oAEBKhIKCG1vbWVudHVtFWZmZj+gAQEqFAoNdHJhaW5pbmdfbW9kZRgBoAECEgJi"
        "bioZCAMQAUIFc2NhbGVKDAAAgD8AAIA/AACAPyoYCAMQJ0IEYmlhc0oMAAAAAAAAAAAAAAAAKhgIAxABQgRtZW"
        "FuSgwAAAAAAAAAPwAAgD8qFwgDEAFCA3ZhckoMAACAPwAAAEAAAEBAWhwKAXgSFwoVCAESEQoDEgFOCgIIAwoC"
        "CAIKAggCYhwKAXkSFwoVCAESEQoDEgFOCgIIAwoCCAIKAggCQgQKABAP"))
    with pytest.raises(ModelFileError, match="Invalid tensor data type 39"):
        load_onnx(path)


def test_a_runtime_that_gives_no_value_for_a_tensor_is_named_not_a_crash():
    # fuzz_onnx_check: onnx.reference returned None for an output another runtime computed;
    # first_diverging_node compared None with an array (TypeError).
    from onnx import helper

    graph = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        "g", [], []))
    tol = Tolerance(1e-5, 1e-6, "test")
    x = np.ones(2, np.float32)
    found = first_diverging_node({"x": x, "a": x, "y": None}, {"x": x, "a": x, "y": x}, graph,
                                 tol)
    assert found is not None and found[:2] == ("y", "Relu") and "gave no value" in found[2]
    shapes = first_diverging_node({"x": x, "a": np.ones(3, np.float32)}, {"x": x, "a": x},
                                  graph, tol)
    assert shapes is not None and shapes[1] == "Identity"


def test_an_argument_with_a_nul_byte_is_a_usage_error(tmp_path):
    # fuzz_cli: `bncheck export 'IT\0z'` reached os.stat: ValueError("embedded null byte").
    from click.testing import CliRunner

    from bncheck.cli import main
    from bncheck.errors import OutputError
    from bncheck.infra.io import check_output_path

    r = CliRunner().invoke(main, ["export", "IT\x00z"])
    assert r.exit_code == 2 and "Expected arguments without NUL bytes" in r.output
    with pytest.raises(OutputError, match="a NUL byte"):
        check_output_path(tmp_path / "a\x00b.json", "--json")


def test_a_constant_channel_of_huge_values_gets_a_bound_not_nan():
    # fuzz_reference: float64 channel constant at 4.98e291 (a stride-0 batch): the bound's
    # terms overflowed float64 and 0 * inf made the allowed error NaN, so even an exact 0 failed.
    x = torch.tensor([[-2.2250738585072014e-308, 4.979855459825399e291]],
                     dtype=torch.float64).expand(2, 2)
    y = bncheck.batch_norm(x, None, None, None, None, True, 0.5, 0.5)
    mean, var = oracle.batch_stats(x)
    tol = forward_tolerance(x, mean, var, eps=0.5)
    assert not bool(torch.as_tensor(tol.atol).isnan().any())
    assert compare(y, oracle.normalize(x, mean, var, eps=0.5), tolerance=tol,
                   check_dtype=False) is None
