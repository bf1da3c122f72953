# A Keras-style layer written in torch: channels last, gamma/beta/moving_mean/moving_variance,
# moving = momentum * moving + (1 - momentum) * batch with momentum 0.99, epsilon 1e-3, biased
# variance, and the mode as a call argument (`training=`), not module.train(). Correct in
# float32 and float64 under
#   --convention keras --mode-argument training --names running_var=moving_variance
# In float16 it computes the batch variance in 16 bits, where squared deviations above 255.9
# overflow (Keras itself computes the moments of float16 inputs in float32): reduced_precision
# fails unless --dtypes float32,float64 declares the scope it is written for.
import torch
from torch import nn


class KerasStyleBN(nn.Module):
    def __init__(self, num_features, momentum=0.99, epsilon=1e-3):
        super().__init__()
        self.momentum, self.epsilon = momentum, epsilon
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_variance", torch.ones(num_features))

    def forward(self, inputs, training=None):
        axes = list(range(inputs.dim() - 1))
        if training:
            mean = inputs.mean(dim=axes)
            variance = ((inputs - mean) ** 2).mean(dim=axes)
            with torch.no_grad():
                self.moving_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.moving_variance.mul_(self.momentum).add_((1 - self.momentum) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return (inputs - mean) * torch.rsqrt(variance + self.epsilon) * self.gamma + self.beta
