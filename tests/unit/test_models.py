"""LeNet-BN: the seed's architecture, two BatchNorm variants, deterministic, interchangeable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bncheck
from bncheck.errors import InvalidArgument, InvalidArgumentType
from bncheck.reference.lenet import BN_LAYER_INDICES, lenet_bn


def test_architecture_is_the_seeds():
    net = lenet_bn("torch")
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Conv2d", "BatchNorm2d", "Sigmoid", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "Sigmoid", "MaxPool2d", "Flatten",
        "Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid", "Linear",
    ]
    assert [net[i].num_features for i in BN_LAYER_INDICES] == [6, 16, 120, 84]
    assert sum(p.numel() for p in net.parameters()) == 44426 + 2 * (6 + 16 + 120 + 84)


def test_scratch_variant_uses_the_reference():
    net = lenet_bn("scratch")
    assert all(isinstance(net[i], bncheck.BatchNorm) for i in BN_LAYER_INDICES)


def test_same_seed_same_weights_across_variants_and_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = lenet_bn("scratch", seed=3), lenet_bn("torch", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = lenet_bn("scratch", seed=4)
    assert not torch.equal(c[0].weight, a[0].weight)


@pytest.mark.parametrize("training", [True, False])
def test_variants_agree_and_weights_transfer(training):
    a = lenet_bn("scratch", seed=1)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a.train()
    a(x)  # non-trivial running statistics
    b = lenet_bn("torch", seed=99)
    b.load_state_dict(a.state_dict())
    a.train(training)
    b.train(training)
    torch.testing.assert_close(a(x), b(x))
    c = lenet_bn("scratch", seed=5)
    c.load_state_dict(b.state_dict())
    torch.testing.assert_close(c.train(training)(x), b(x))


def test_custom_factory():
    seen = []

    def factory(num_features: int, num_dims: int) -> nn.Module:
        seen.append((num_features, num_dims))
        return nn.Identity()

    net = lenet_bn(factory)
    assert seen == [(6, 4), (16, 4), (120, 2), (84, 2)]
    assert net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_bad_arguments():
    with pytest.raises(InvalidArgument, match=r"bn=.*'keras'"):
        lenet_bn("keras")
    with pytest.raises(InvalidArgumentType, match=r"bn"):
        lenet_bn(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType, match=r"seed"):
        lenet_bn("torch", seed="0")  # type: ignore[arg-type]
