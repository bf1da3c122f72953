"""Realistic defective BatchNorms (not bncheck mutants); each docstring names the defect."""
import torch
from torch import nn

def vshape(x):
    return [1, -1] + [1] * (x.dim() - 2)

def rdims(x):
    return [0] + list(range(2, x.dim()))

class Base(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.eps, self.momentum = eps, momentum


def _stats(x):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    d = rdims(x)
    return xf.mean(d), xf.var(d, unbiased=False), x.numel() // x.shape[1]


def _update(self, mean, var, n):
    with torch.no_grad():
        self.num_batches_tracked += 1
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - m).add_(m * (var * n / max(n - 1, 1)).to(self.running_var.dtype))


def _norm(self, x, mean, var):
    s = vshape(x)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = (xf - mean.reshape(s)) / torch.sqrt(var.reshape(s) + self.eps)
    return (y * self.weight.reshape(s) + self.bias.reshape(s)).to(x.dtype)


class Unbiased2DOnly(Base):
    """Normalizes with the n-1 variance, only for 2D inputs."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            if x.dim() == 2:
                var = var * n / (n - 1)
            _update(self, mean, var if x.dim() != 2 else var * (n - 1) / n, n)
        else:
            mean, var = self.running_mean, self.running_var
        return _norm(self, x, mean, var)


class UpdateThenNormalize(Base):
    """Updates running stats first, then normalizes training with the updated running stats."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
        return _norm(self, x, self.running_mean, self.running_var)


class MomentumBoth(Base):
    """new = m*batch + m*old."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum
                self.running_mean.copy_(m * mean + m * self.running_mean)
                self.running_var.copy_(m * var * n / (n - 1) + m * self.running_var)
        else:
            mean, var = self.running_mean, self.running_var
        return _norm(self, x, mean, var)


class EpsAfterSqrtEval(Base):
    """eps added after sqrt only in eval."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            return _norm(self, x, mean, var)
        s = vshape(x)
        y = (x - self.running_mean.reshape(s)) / (torch.sqrt(self.running_var.reshape(s)) + self.eps)
        return y * self.weight.reshape(s) + self.bias.reshape(s)


class WeightBeforeMean(Base):
    """y = (w*x - mean(x)) / std + b."""
    def forward(self, x):
        s = vshape(x)
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x * self.weight.reshape(s) - mean.reshape(s)) / torch.sqrt(var.reshape(s) + self.eps)
        return y + self.bias.reshape(s)


class MeanDim0Only4D(Base):
    """For 4D inputs the mean is over dim 0 only (var is right)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            if x.dim() == 4:
                m0 = x.mean(0, keepdim=True)
                y = (x - m0) / torch.sqrt(var.reshape(vshape(x)) + self.eps)
                return y * self.weight.reshape(vshape(x)) + self.bias.reshape(vshape(x))
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)


class RunningStd(Base):
    """running_var updated with the std instead of the var."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, (var * n / (n - 1)).sqrt() * (n - 1) / n, n)
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)


class NoCount(Base):
    """num_batches_tracked never incremented."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            self.num_batches_tracked -= 1
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)


class InplaceGraph(Base):
    """Stats reassigned from the batch stats with their graph (plain assign keeps buffer name)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            m = self.momentum
            self.num_batches_tracked += 1
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + m * var * n / (n - 1)
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)


class EvalBatchStatsIfBig(Base):
    """In eval, uses batch stats when batch > 1."""
    def forward(self, x):
        if self.training or x.shape[0] > 1:
            mean, var, n = _stats(x)
            if self.training:
                _update(self, mean, var, n)
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)


class Fp16EvalFloat32(Base):
    """Eval output of 16-bit inputs returned as float32."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            return _norm(self, x, mean, var)
        s = vshape(x)
        xf = x.float()
        y = (xf - self.running_mean.float().reshape(s)) / torch.sqrt(self.running_var.float().reshape(s) + self.eps)
        return y * self.weight.float().reshape(s) + self.bias.float().reshape(s)


class BiasIgnoredNoAffine(Base):
    """affine flag: bias only applied together with weight; here bias dropped when weight is used."""
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum)
        if not affine:
            self.weight = None
            self.bias = None

    def forward(self, x):
        s = vshape(x)
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.reshape(s)) / torch.sqrt(var.reshape(s) + self.eps)
        if self.weight is not None:
            y = y * self.weight.reshape(s)  # bias forgotten
        return y


class EpsSquared(Base):
    """eps inside sqrt but squared: sqrt(var + eps**2)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
        else:
            mean, var = self.running_mean, self.running_var
        s = vshape(x)
        y = (x - mean.reshape(s)) / torch.sqrt(var.reshape(s) + self.eps ** 2)
        return y * self.weight.reshape(s) + self.bias.reshape(s)


class DetachedMeanGrad(Base):
    """Mean detached in training (gradient misses the mean term)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            mean = mean.detach()
        else:
            mean, var = self.running_mean, self.running_var
        return _norm(self, x, mean, var)


class VarFromCenteredByRunning(Base):
    """Batch variance computed around the running mean instead of the batch mean."""
    def forward(self, x):
        s = vshape(x)
        if self.training:
            mean = x.mean(rdims(x))
            var = ((x - self.running_mean.reshape(s)) ** 2).mean(rdims(x))
            n = x.numel() // x.shape[1]
            _update(self, mean, var, n)
        else:
            mean, var = self.running_mean, self.running_var
        return _norm(self, x, mean, var)


class BatchOneEvalBroken(Base):
    """Eval: squeezes the batch dim (breaks batch 1 with spatial dims)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            _update(self, mean, var, n)
            return _norm(self, x, mean, var)
        return _norm(self, x.squeeze(0), self.running_mean, self.running_var).reshape(x.shape) if x.dim() == 2 else _norm(self, x, self.running_mean, self.running_var)


class ChannelTailBug(Base):
    """Channels past a vector width of 8 get the biased running variance (tail loop bug)."""
    def forward(self, x):
        if self.training:
            mean, var, n = _stats(x)
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum
                unb = var * n / (n - 1)
                unb[8:] = var[8:]
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unb.to(self.running_var.dtype))
            return _norm(self, x, mean, var)
        return _norm(self, x, self.running_mean, self.running_var)
