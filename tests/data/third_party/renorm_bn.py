# Batch Renormalization (Ioffe 2017) as torch ports write it: an nn.BatchNorm2d subclass whose
# training forward multiplies by r and adds d, both from the batch std and the running std
# sqrt(running_var + eps), clipped by r_max and d_max and detached; plain BatchNorm while
# num_batches_tracked < warmup; eval and the running update are BatchNorm's. Correct; verify with
#   --dims 4 --variant batch-renorm --variant-args r_max=3,d_max=5,warmup=0
# (r_max, d_max and warmup are constructor arguments: bncheck passes the declared values).
import torch
from torch import nn


class BatchRenorm2d(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, r_max=3.0, d_max=5.0, warmup=0):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.r_max, self.d_max, self.warmup = r_max, d_max, warmup

    def forward(self, x):
        if not self.training or x.shape[0] == 0:
            return super().forward(x)
        dims, xin = (0, 2, 3), x
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # as torch does
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        std = torch.sqrt(var + self.eps)
        if int(self.num_batches_tracked) < self.warmup:
            r, d = torch.ones_like(std), torch.zeros_like(mean)
        else:
            running_std = torch.sqrt(self.running_var.to(x.dtype) + self.eps)
            r = (std.detach() / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean.detach() - self.running_mean.to(x.dtype)) / running_std).clamp(-self.d_max,
                                                                          self.d_max)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.num_batches_tracked += 1
            w = 1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), w)
            self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), w)
        xhat = (x - mean[None, :, None, None]) / std[None, :, None, None]
        xhat = xhat * r[None, :, None, None] + d[None, :, None, None]
        y = xhat * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(xin.dtype)
