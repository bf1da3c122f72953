# A synchronised BatchNorm whose forward all-reduces per-channel sums and counts, then the
# sums of squared deviations (two passes), as hand-written SyncBNs of detection and GAN
# repositories do, but whose running statistics are kept the way timm's
# `distribute_bn(model, world_size, reduce=True)` keeps
# them between epochs: each rank moves its buffers toward its OWN batch's mean and unbiased
# variance (`x.var(unbiased=True)`), and the buffers are then averaged over the ranks. Written
# for bncheck's tests, not copied. A rank holding one value per channel has an unbiased
# variance of 0/0 = NaN, and the average carries it to every rank: running_var is NaN on all
# ranks, which bncheck must name as NaN (not "differs between rank 0 and rank 1").
import torch
import torch.distributed as dist
from torch import nn


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class AveragedBuffersSyncBN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if not self.training:
            mean, var = self.running_mean, self.running_var
        else:
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            count = torch.full((1,), xf.numel() // self.num_features, dtype=xf.dtype)
            c = self.num_features
            sums = torch.cat([xf.sum(dims), count])  # two passes: sum, then squared deviations
            if _world() > 1:
                sums = _AllReduceSum.apply(sums)
            n = sums[-1]
            mean = sums[:c] / n
            sq = ((xf - mean.view(shape)) ** 2).sum(dims)
            if _world() > 1:
                sq = _AllReduceSum.apply(sq)
            var = sq / n
            with torch.no_grad():
                nan = torch.full((c,), float("nan"), dtype=xf.dtype)
                local_var = xf.var(dims, unbiased=True) if xf.numel() else nan
                local_mean = xf.mean(dims) if xf.numel() else nan
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * local_mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * local_var)
                if _world() > 1:  # keep the ranks' buffers in step: average them
                    for buf in (self.running_mean, self.running_var):
                        dist.all_reduce(buf)
                        buf.div_(_world())
                self.num_batches_tracked += 1
        y = (x - mean.view(shape).to(x.dtype)) * torch.rsqrt(var.view(shape) + self.eps).to(
            x.dtype)
        return y * self.weight.view(shape).to(x.dtype) + self.bias.view(shape).to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g
