"""Conventions: the torch and onnx presets, per-axis overrides, the update rule."""

from __future__ import annotations

import pytest
import torch

from bncheck.engine.conventions import ONNX, TORCH, Convention, convention
from bncheck.errors import InvalidArgument


def test_presets_describe_the_same_ema_from_both_sides():
    old, batch = torch.tensor([1.0]), torch.tensor([3.0])
    assert TORCH.update(old, batch, momentum=0.1, steps=1).item() == pytest.approx(1.2)
    assert ONNX.update(old, batch, momentum=0.9, steps=1).item() == pytest.approx(1.2)


def test_running_variance_axis():
    v = torch.tensor([2.0])
    assert TORCH.running_variance(v, 4).item() == pytest.approx(2.0 * 4 / 3)
    assert ONNX.running_variance(v, 4).item() == 2.0


def test_cumulative_average_for_momentum_none():
    for conv in (TORCH, ONNX):
        assert conv.batch_weight(None, 1) == 1.0
        assert conv.batch_weight(None, 4) == 0.25


def test_torch_momentum_translation():
    assert TORCH.torch_momentum(0.1) == 0.1
    assert ONNX.torch_momentum(0.9) == pytest.approx(0.1)
    assert ONNX.torch_momentum(None) is None


def test_per_axis_override_d2l():
    d2l = convention("torch", running_var="biased")
    assert (d2l.momentum_weights, d2l.running_var, d2l.momentum) == ("batch", "biased", 0.1)
    assert "running_var=biased" in d2l.name
    assert convention("onnx") is ONNX


@pytest.mark.parametrize("kwargs,match", [
    ({"momentum_weights": "new"}, "momentum_weights='new'"),
    ({"running_var": "sample"}, "running_var='sample'"),
    ({"momentum": 1.5}, "momentum=1.5"),
])
def test_invalid_conventions(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        Convention(**kwargs)


def test_unknown_preset():
    with pytest.raises(InvalidArgument,
                       match=r"one of \['flax', 'keras', 'onnx', 'torch'\].*convention='caffe'"):
        convention("caffe")
