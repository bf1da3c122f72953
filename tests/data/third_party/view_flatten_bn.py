# A BatchNorm in the style of course code that flattens the spatial dims with .view: correct on
# contiguous and channels-last inputs, but x.view(N, C, -1) raises on an input whose spatial
# strides are transposed (what x.transpose(2, 3) gives: a valid input torch's BatchNorm takes).
# Owned by train_forward (the target raises); .reshape(...) fixes it.
import torch
from torch import nn


class ViewFlattenBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        n, c = x.shape[:2]
        flat = x.view(n, c, -1)  # the defect: needs compatible strides
        if self.training:
            mean = flat.mean((0, 2))
            var = flat.var((0, 2), unbiased=False)
            m = flat.shape[0] * flat.shape[2]
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * m / (m - 1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        y = (flat - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)
        y = y * self.weight[:, None] + self.bias[:, None]
        return y.view(x.shape)
