# Batch normalization as RealNVP-style normalizing flows write it (Dinh et al. 2017, "we use
# batch normalization ... with running averages"): in training the running averages are
# updated with the batch first and the batch is then normalized with them, so the layer is an
# invertible function of its input. A design, not BatchNorm in training: bncheck gives it one
# training_mode finding, and the training properties' failures are its consequences.
import torch
from torch import nn


class RunningAverageBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.lerp_(x.mean(dims), self.momentum)
                self.running_var.lerp_(x.var(dims) if n > 1 else self.running_var,
                                       self.momentum)
                self.num_batches_tracked += 1
        mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) \
            + self.bias.view(shape)
