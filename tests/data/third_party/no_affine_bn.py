# Takes torch's keyword arguments but supports only affine=True (raises otherwise), and never
# counts num_batches_tracked. The constructor flag is reported once (declare
# --fixed affine=true); the count is running_stats_update's.
import torch
import torch.nn.functional as F
from torch import nn


class NoAffineBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        if not affine:
            raise NotImplementedError("affine=False is not supported")
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)
