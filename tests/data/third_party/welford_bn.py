import torch
from torch import nn

class WelfordBN(nn.Module):
    """Statistics in float32-or-better via torch.var(unbiased=False); running var unbiased."""
    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        C = x.shape[1]
        xt = x.transpose(0, 1).reshape(C, -1)
        acc = xt.float() if x.dtype in (torch.float16, torch.bfloat16) else xt
        if self.training:
            mean = acc.mean(1)
            var = torch.var(acc, dim=1, unbiased=False)
            n = acc.shape[1]
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(self.running_var.dtype))
        else:
            mean, var = self.running_mean.to(acc.dtype), self.running_var.to(acc.dtype)
        y = (acc - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        y = y * self.weight[:, None].to(acc.dtype) + self.bias[:, None].to(acc.dtype)
        y = y.to(x.dtype)
        return y.reshape(C, x.shape[0], *x.shape[2:]).transpose(0, 1)
