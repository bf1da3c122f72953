"""The adapter finds parameters and statistics under either naming and shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bncheck.engine.adapter import PropertyFailure, Target, TargetRaised
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data"


def test_torch_names_and_configurable_kwargs():
    t = Target.from_object(torch.nn.BatchNorm2d)
    assert t.dims == (4,)
    assert t.configurable == {"eps", "momentum", "affine", "track_running_stats", "bias"}
    bn = t.build(3, ndim=4, eps=0.1, momentum=0.5)
    assert bn.module.eps == 0.1 and bn.module.momentum == 0.5
    bn.set_params(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    assert bn.params()[1].tolist() == [4.0, 5.0, 6.0]
    assert bn.num_batches_tracked() == 0


def test_seed_style_names_and_broadcast_shapes():
    t = Target.from_object(load_target(f"{DATA / 'seed_bn_fixed.py'}:BatchNorm"))
    assert t.dims == (2, 4) and t.configurable == frozenset()
    bn = t.build(2, ndim=4)
    assert (bn.weight_name, bn.mean_name) == ("gamma", "moving_mean")
    bn.set_stats(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert tuple(bn.module.moving_mean.shape) == (1, 2, 1, 1)
    assert bn.stats()[1].tolist() == [3.0, 4.0]
    assert bn.num_batches_tracked() is None


def test_known_dims():
    assert Target.from_object(torch.nn.BatchNorm1d).dims == (2,)
    assert Target.from_object(torch.nn.BatchNorm3d).dims == (5,)
    assert Target.from_object(lambda n: torch.nn.BatchNorm1d(n)).dims == (2, 4)


def test_missing_stats_and_target_exceptions():
    bn = Target.from_object(torch.nn.BatchNorm1d).build(2, ndim=2, track_running_stats=False)
    assert not bn.has_stats
    with pytest.raises(PropertyFailure, match="no running statistics found"):
        bn.require_stats()
    with pytest.raises(TargetRaised, match="raised RuntimeError: .* in forward"):
        bn.call(torch.zeros(2, 3))

    def broken(n: int) -> torch.nn.Module:
        raise ValueError("nope")

    with pytest.raises(TargetRaised, match="ValueError: nope"):
        Target.from_object(broken).build(2, ndim=2)


def test_momentum_none_drawn_only_where_the_constructor_declares_it():
    class FloatOnly(torch.nn.Module):
        def __init__(self, num_features, momentum=0.1):
            super().__init__()

    class DefaultNone(torch.nn.Module):
        def __init__(self, num_features, momentum=None):
            super().__init__()

    class Annotated(torch.nn.Module):
        def __init__(self, num_features, momentum: float | None = 0.1):
            super().__init__()

    def factory(num_features, momentum=0.1):
        return torch.nn.BatchNorm1d(num_features, momentum=momentum)

    assert not Target.from_object(FloatOnly).cumulative
    assert not Target.from_object(factory).cumulative
    assert Target.from_object(DefaultNone).cumulative
    assert Target.from_object(Annotated).cumulative
    assert Target.from_object(torch.nn.BatchNorm2d).cumulative
