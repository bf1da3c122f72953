# The style of many GAN repositories' own BatchNorm for (N, C) inputs: buffers registered, but
# reassigned from batch statistics that are not detached (the buffers then carry the autograd
# graph), and the running variance averages the biased batch variance while declaring
# torch's convention. Defects: stats_are_buffers (graph), running_stats_update (biased).
import torch
from torch import nn


class CustomBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=0, keepdim=True)
            var = x.var(dim=0, unbiased=False, keepdim=True)
            self.running_mean = (1 - self.momentum) * self.running_mean \
                + self.momentum * mean.squeeze(0)
            self.running_var = (1 - self.momentum) * self.running_var \
                + self.momentum * var.squeeze(0)
        else:
            mean = self.running_mean.unsqueeze(0)
            var = self.running_var.unsqueeze(0)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta
