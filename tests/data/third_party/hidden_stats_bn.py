# Correct, but its statistics live under names bncheck does not guess (_rm, _rv): declare them
# with --names running_mean=_rm,running_var=_rv. Undeclared, the properties that need the
# statistics say so, and differential compares only what does not depend on them.
import torch
import torch.nn.functional as F
from torch import nn


class HiddenStatsBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("_rm", torch.zeros(num_features))
        self.register_buffer("_rv", torch.ones(num_features))

    def forward(self, x):
        return F.batch_norm(x, self._rm, self._rv, self.weight, self.bias, self.training,
                            self.momentum, self.eps)
