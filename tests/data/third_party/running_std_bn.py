# Keeps a running standard deviation instead of a variance, in broadcast-shaped (1, C, 1, 1)
# buffers, as some normalization papers' reference code does. Correct under
#   --running-stat std --names running_var=running_std
import torch
from torch import nn


class RunningStdBN(nn.Module):
    def __init__(self, num_features, num_dims=4, momentum=0.1, eps=1e-5):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_std", torch.ones(shape))
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        if self.training:
            mean = x.mean(dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_std.mul_(1 - m).add_(m * (var * n / (n - 1)).sqrt())
        else:
            mean, var = self.running_mean, self.running_std ** 2
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias
