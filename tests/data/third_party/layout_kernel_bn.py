# A hand-written "kernel" in the style of Triton/CUDA BatchNorm code that indexes the input's
# storage as contiguous NCHW (offset n*C*HW + c*HW + hw). Right for contiguous inputs, wrong
# for channels_last, permuted, strided and expanded ones. Defect owned by train_forward (the
# oracle on every layout).
import torch
from torch import nn


def _as_nchw(x):
    n, c = x.shape[0], x.shape[1]
    hw = x.numel() // (n * c) if n * c else 0
    return torch.as_strided(x, (n, c, hw), (c * hw, hw, 1))  # assumes contiguous strides


class ContiguousKernelBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        v = _as_nchw(x)
        if self.training:
            mean = v.mean(dim=(0, 2))
            var = ((v - mean[None, :, None]) ** 2).mean(dim=(0, 2))
            cnt = v.shape[0] * v.shape[2]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(
                    self.momentum * var * cnt / (cnt - 1))
        else:
            mean, var = self.running_mean, self.running_var
        y = (v - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.reshape(x.shape)
