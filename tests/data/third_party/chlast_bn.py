import torch
from torch import nn

class ChannelsLastBN(nn.Module):
    """Moves channels last, normalizes rows of a (N*spatial, C) matrix, moves them back."""
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.eps, self.momentum = eps, momentum

    def forward(self, x):
        perm = [0] + list(range(2, x.dim())) + [1]
        inv = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        xl = x.permute(*perm)
        flat = xl.reshape(-1, x.shape[1])
        if self.training:
            mean = flat.mean(0)
            var = ((flat - mean) ** 2).mean(0)
            n = flat.shape[0]
            with torch.no_grad():
                self.num_batches_tracked += 1
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.copy_((1 - mom) * self.running_mean + mom * mean)
                self.running_var.copy_((1 - mom) * self.running_var + mom * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        y = (flat - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
        return y.reshape(xl.shape).permute(*inv).contiguous()
