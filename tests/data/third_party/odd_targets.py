# Targets that are not BatchNorms bncheck can verify (usage errors), and one with a bare assert.
import torch
from torch import nn


class NotAModule:
    def __init__(self, num_features):
        self.num_features = num_features


class NeedsMore(nn.Module):
    def __init__(self, num_features, groups):
        super().__init__()


class Flattens(nn.BatchNorm1d):
    def forward(self, x):
        return super().forward(x).flatten(1)


def functional(x, running_mean, running_var):
    return x


class AssertingBN(nn.BatchNorm1d):
    def forward(self, x):
        assert x.shape[0] < 4
        return super().forward(x)
