"""A training-only BatchNorm in the style of course assignments (e.g. the University of
Amsterdam deep-learning course's ``CustomBatchNormManualModule``, copied into many public
repositories): no running statistics at all, batch statistics in every mode, the same as
torch's ``track_running_stats=False``. ``UnbiasedTrainOnlyBN`` normalizes with the unbiased
batch variance (a real defect)."""

import torch
from torch import nn


class TrainOnlyBN(nn.Module):
    def __init__(self, n_neurons, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(n_neurons))
        self.beta = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, x):
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.gamma.view(shape) \
            + self.beta.view(shape)


class UnbiasedTrainOnlyBN(TrainOnlyBN):
    def forward(self, x):
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True)  # unbiased: the defect
        return (x - mean) / torch.sqrt(var + self.eps) * self.gamma.view(shape) \
            + self.beta.view(shape)
