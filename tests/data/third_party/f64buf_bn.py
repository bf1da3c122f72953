import torch
from torch import nn

class F64BN(nn.Module):
    """Running stats kept as float64 buffers regardless of module dtype."""
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features, dtype=torch.float64))
        self.register_buffer("running_var", torch.ones(num_features, dtype=torch.float64))
        self.eps, self.momentum = eps, momentum

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            xd = x.double()
            mean = xd.mean(dims)
            var = xd.var(dims, unbiased=False)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * (var.detach() * n / (n - 1)).to(self.running_var.dtype))
        else:
            mean, var = self.running_mean.double(), self.running_var.double()
        y = (x.double() - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return (y * self.weight.double().reshape(shape) + self.bias.double().reshape(shape)).to(x.dtype)
