import torch
from torch import nn

class KerasBN(nn.Module):
    """Keras-style: moving = m*moving + (1-m)*batch, m=0.99, biased var, (1,C,1,1) params."""
    def __init__(self, num_features, num_dims=4, momentum=0.99, epsilon=1e-3):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))
        self.momentum = momentum
        self.epsilon = epsilon

    def forward(self, x):
        axes = [0] + list(range(2, x.dim()))
        if self.training:
            mean = x.mean(dim=axes, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
            with torch.no_grad():
                self.moving_mean.mul_(self.momentum).add_((1 - self.momentum) * mean.reshape(self.moving_mean.shape))
                self.moving_var.mul_(self.momentum).add_((1 - self.momentum) * var.reshape(self.moving_var.shape))
        else:
            mean, var = self.moving_mean, self.moving_var
            if x.dim() != mean.dim():
                mean = mean.reshape([1, -1] + [1] * (x.dim() - 2))
                var = var.reshape([1, -1] + [1] * (x.dim() - 2))
        inv = torch.rsqrt(var + self.epsilon)
        g = self.gamma.reshape([1, -1] + [1] * (x.dim() - 2))
        b = self.beta.reshape([1, -1] + [1] * (x.dim() - 2))
        return (x - mean) * inv * g + b
