# Batch Renorm with a warm-up, in the style of ports that keep their own step counter: it
# checks `self.step < self.warmup`, but `self.step` is a Python attribute never incremented
# (num_batches_tracked is the count that moves), so the warm-up never ends and the layer stays
# plain BatchNorm forever. Declared
#   --dims 4 --variant batch-renorm --variant-args r_max=3,d_max=5,warmup=5000
# it passes every case that starts at count 0; train_forward fails once num_batches_tracked is
# installed past the warm-up (a long horizon).
import torch
from torch import nn


class RenormStuckWarmup(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, r_max=3.0, d_max=5.0,
                 warmup=5000):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.r_max, self.d_max, self.warmup, self.step = r_max, d_max, warmup, 0

    def forward(self, x):
        if not self.training or self.step < self.warmup:  # the defect: self.step never moves
            return super().forward(x)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        std, running_std = torch.sqrt(var + self.eps), torch.sqrt(self.running_var + self.eps)
        r = (std.detach() / running_std).clamp(1 / self.r_max, self.r_max)
        d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
            self.num_batches_tracked += 1
        xhat = (x - mean[:, None, None]) / std[:, None, None] * r[:, None, None] + d[:, None, None]
        return xhat * self.weight[:, None, None] + self.bias[:, None, None]
