"""The strategies themselves: what they draw stays inside what they promise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bncheck.engine import strategies as bst
from bncheck.engine.conventions import ONNX
from bncheck.errors import InvalidArgument, InvalidArgumentType


@given(st.data(), st.sets(st.sampled_from([2, 3, 4, 5]), min_size=1))
def test_shapes_respect_dims_and_bounds(data, dims):
    shape = data.draw(bst.shapes(dims=sorted(dims), max_batch=5, max_channels=3, max_side=3))
    assert len(shape) in dims
    assert 2 <= shape[0] <= 5 and 1 <= shape[1] <= 3
    assert all(1 <= s <= 3 for s in shape[2:])


@given(bst.bn_cases(dims=(2, 3, 4, 5), dtypes=list(bst.DTYPES), training=True))
def test_training_cases_are_legal(case):
    assert case.x.shape == case.shape and case.x.dtype == case.dtype
    assert case.x.numel() // case.shape[1] >= 2  # more than one value per channel
    assert case.mode.training
    assert case.weight.shape == case.bias.shape == (case.shape[1],)
    assert bool(torch.isfinite(case.x).all())
    if case.layout == "non_contiguous":
        assert not case.x.is_contiguous()
    assert case.describe().startswith(f"shape={case.shape}")


@given(bst.bn_cases(training=False))
def test_eval_cases_may_have_batch_one(case):
    assert case.shape[0] >= 1 and not case.mode.training


@given(bst.inputs((4, 2), torch.float16, kinds=["constant"]))
def test_constant_channels_have_zero_variance(x):
    assert bool((x.to(torch.float64).var(dim=0) == 0).all())


@given(bst.inputs((6, 1), torch.float32, kinds=["offset"]))
def test_offset_channels_have_mean_much_larger_than_spread(x):
    x64 = x.to(torch.float64)
    assert float(x64.mean().abs()) >= 9.0 * float((x64 - x64.mean()).abs().max())


@given(bst.bn_configs(convention=ONNX, min_batch_weight=0.05, max_batch_weight=0.3,
                      allow_cumulative=False))
def test_onnx_momentum_is_one_minus_batch_weight(cfg):
    assert cfg.momentum is not None and 0.7 <= cfg.momentum <= 0.95


@given(bst.modes(training=True, grad_modes=["no_grad", "inference_mode"]))
def test_modes(mode):
    assert mode.training and mode.grad != "enabled"
    with mode.context():
        assert not torch.is_grad_enabled()


@given(bst.dtypes(dtypes=["float16", "bfloat16"]))
def test_dtypes_by_name(dtype):
    assert dtype in (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("factory,kwargs,error,match", [
    (bst.shapes, {"dims": (1,)}, InvalidArgument, r"dims=\(1,\) \(1 is not one of them\)"),
    (bst.shapes, {"dims": ()}, InvalidArgument, r"at least one value in dims"),
    (bst.shapes, {"dims": 4}, InvalidArgument, r"Expected dims to be a sequence"),
    (bst.shapes, {"min_batch": 3, "max_batch": 2}, InvalidArgument,
     r"Cannot have max_batch=2 < min_batch=3"),
    (bst.shapes, {"max_channels": 0}, InvalidArgument, r"max_channels=0"),
    (bst.shapes, {"min_side": 2.0}, InvalidArgumentType, r"min_side"),
    (bst.dtypes, {"dtypes": "float32"}, InvalidArgument, r"did you mean dtypes=\['float32'\]"),
    (bst.dtypes, {"dtypes": [torch.int32]}, InvalidArgument, r"torch.int32 is not one of them"),
    (bst.modes, {"grad_modes": ["enable"]}, InvalidArgument, r"'enable' is not one of them"),
    (bst.modes, {"training": 1}, InvalidArgumentType, r"training"),
    (bst.bn_configs, {"eps": 0.0}, InvalidArgument, r"eps > 0.0, received eps=0.0"),
    (bst.bn_configs, {"momentum": 2.0}, InvalidArgument, r"momentum=2.0"),
    (bst.bn_configs, {"affine": "yes"}, InvalidArgumentType, r"affine"),
    (bst.bn_configs, {"min_batch_weight": 0.5, "max_batch_weight": 0.2}, InvalidArgument,
     r"Cannot have max_batch_weight=0.2 < min_batch_weight=0.5"),
    (bst.bn_configs, {"convention": "torch"}, InvalidArgumentType, r"convention"),
    (bst.bn_cases, {"training": True, "min_batch": 1}, InvalidArgument,
     r"Cannot have min_batch=1 < 2 unless training=False"),
    (bst.bn_cases, {"kinds": ["gaussian"]}, InvalidArgument, r"'gaussian' is not one of them"),
    (bst.bn_cases, {"layouts": ["strided"]}, InvalidArgument, r"'strided' is not one of them"),
    (bst.bn_cases, {"configs": 3}, InvalidArgument, r"configs=3"),
    (bst.channel_values, {"kind": "gaussian"}, InvalidArgument, r"'gaussian' is not one of"),
    (bst.channel_values, {"kind": "wide", "dtype": torch.int8}, InvalidArgument, r"torch.int8"),
])
def test_invalid_arguments(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


@pytest.mark.parametrize("args,error,match", [
    (((3,), torch.float32), InvalidArgument, r"shape=\(3,\)"),
    (([2, 3], torch.float32), InvalidArgumentType, r"shape"),
    (((2, 3), torch.int64), InvalidArgument, r"torch.int64 is not one of them"),
])
def test_invalid_inputs_arguments(args, error, match):
    with pytest.raises(error, match=match):
        bst.inputs(*args)


@given(bst.channel_values("wide", torch.float16))
def test_wide_channels_overflow_float16_squares(spec):
    offset, spread = spec
    assert spread**2 > 65504 and abs(offset) <= 10


@given(st.data())
def test_shapes_wide_channels(data):
    shape = data.draw(bst.shapes(max_channels=3, wide_channels=17))
    assert 1 <= shape[1] <= 17


def test_shapes_wide_channels_are_drawn():
    from hypothesis import find

    assert find(bst.shapes(max_channels=3, wide_channels=17), lambda s: s[1] > 8)[1] == 9
