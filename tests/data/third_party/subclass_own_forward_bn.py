# An nn.BatchNorm2d subclass with its own forward, as fused/custom-kernel repos write them: the
# arithmetic is right for the momentum it is built with, but the forward uses self.momentum as a
# number (momentum=None, which the inherited signature offers, raises) and divides by the batch
# size (an empty batch, which torch's class accepts, makes NaN statistics). Both are contracts it
# inherits from torch.nn.BatchNorm2d, not arithmetic: reported apart, each with the declaration
# that says the layer does not offer it; so are affine=False, track_running_stats=False and
# bias=False. Declared  --dims 4 --momentum 0.1 --no-empty-batches
# --fixed affine=true,track_running_stats=true,bias=true  it passes.
import torch
from torch import nn


class OwnForwardBN2d(nn.BatchNorm2d):
    def forward(self, x):
        if not self.training:
            return super().forward(x)
        xin = x  # statistics in float32 for 16-bit inputs, as torch does
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
            self.num_batches_tracked += 1
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(xin.dtype)
