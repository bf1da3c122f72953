# Channels-last BatchNorm in the style of ports from JAX/TF code: inputs are (N, C), (N, L, C)
# or (N, H, W, C), and the layer uses its own attribute names. Correct; verify it with
#   --channel-axis -1 --names weight=scale,bias=shift,running_mean=exp_mean,running_var=exp_var
import torch
from torch import nn


class NHWCBatchNorm(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.scale = nn.Parameter(torch.ones(num_features))
        self.shift = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("exp_mean", torch.zeros(num_features))
        self.register_buffer("exp_var", torch.ones(num_features))

    def forward(self, x):
        reduce = tuple(range(x.dim() - 1))  # every axis but the last
        if self.training:
            mu = x.mean(dim=reduce)
            sigma2 = x.var(dim=reduce, unbiased=False)
            n = x.numel() // x.shape[-1]
            with torch.no_grad():
                self.exp_mean.lerp_(mu, self.momentum)
                self.exp_var.lerp_(sigma2 * n / (n - 1), self.momentum)
        else:
            mu, sigma2 = self.exp_mean, self.exp_var
        return (x - mu) * torch.rsqrt(sigma2 + self.eps) * self.scale + self.shift
