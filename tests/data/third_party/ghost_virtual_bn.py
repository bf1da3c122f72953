# Ghost BatchNorm (Hoffer et al. 2017) as training repos write it: an nn.BatchNorm1d applied to
# each virtual batch of `virtual_batch` rows (statistics per virtual batch; the running
# statistics updated once per virtual batch). Correct; verify with
#   --dims 2 --variant ghost --variant-args virtual_batch=4
import torch
from torch import nn


class GhostBatchNorm1d(nn.Module):
    def __init__(self, num_features, virtual_batch=128, eps=1e-5, momentum=0.1):
        super().__init__()
        self.virtual_batch = virtual_batch
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x):
        if not self.training:
            return self.bn(x)
        return torch.cat([self.bn(part) for part in x.split(self.virtual_batch, 0)], 0)
