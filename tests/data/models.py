"""Small model factories for `bncheck export --model tests/data/models.py:NAME` and the tests.

Each is called with keyword arguments only (``--model-arg``) and builds a fresh model; bncheck
seeds the RNG around the call.
"""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from seed_bn_fixed import BatchNorm as SeedBatchNorm  # noqa: E402


def mlp_bn1d(in_features=16, hidden=32, classes=5):
    """An MLP with BatchNorm1d after each hidden Linear: input (N, in_features)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, classes))


class Block(nn.Module):
    """Conv -> BN -> ReLU -> Conv -> BN, plus the input (a residual block)."""

    def __init__(self, channels, bn=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = bn(channels)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = bn(channels)

    def forward(self, x):
        return self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x)


class SmallCNN(nn.Module):
    """A stem (Conv + BN) and two residual blocks: input (N, 3, H, W), 4 logits."""

    def __init__(self, channels=8, bn=nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), bn(channels), nn.ReLU())
        self.layer1 = nn.Sequential(Block(channels, bn), Block(channels, bn))
        self.head = nn.Linear(channels, 4)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def small_cnn(channels=8):
    """SmallCNN with torch.nn.BatchNorm2d."""
    return SmallCNN(channels)


def seed_bn_cnn(channels=8):
    """SmallCNN built with the seed notebook's BatchNorm (tests/data/seed_bn_fixed.py)."""
    return SmallCNN(channels, bn=lambda c: SeedBatchNorm(c, num_dims=4))


class RaisingBN(nn.BatchNorm2d):
    """A BatchNorm whose forward raises: a user's bug, to be reported with file and line."""

    def forward(self, x):
        raise ValueError("running_var went negative")


def two_inputs(features=6):
    """Two inputs (N, features) each through its own BatchNorm1d, summed."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.BatchNorm1d(features), nn.BatchNorm1d(features)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    return TwoInputs()


def not_a_module():
    return torch.zeros(3)


def efficientnet_b0(num_classes=10):
    """lukemelas' EfficientNet-B0 (efficientnet_pytorch), random init: its MemoryEfficientSwish
    is a custom autograd Function; BNs with momentum 0.01 and eps 1e-3."""
    from efficientnet_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-b0", num_classes=num_classes)
