"""Small models for `bncheck scan tests/data/scan_models.py:NAME --input-shape 2,3,8,8`.

Each hides one defect (or none) where a user would meet it: inside someone else's model.

- `mixed_custom`: three correct BatchNorm classes (torch's, a subclass, a from-scratch one) and
  one defective from-scratch class (`BiasedVarBN`: biased running variance) at two module paths.
- `train_override`: a block whose `train()` keeps its BatchNorm in training after `model.eval()`.
- `frozen_backbone`: a backbone whose BatchNorms `train()` keeps in eval with their parameters
  frozen (deliberate fine-tuning: reported, not a failure).
- `wrong_fusion` / `right_fusion`: a `fuse()` that folds each BatchNorm into the Conv before it;
  the wrong one forgets eps.
- `correct_cnn`: torch's BatchNorm2d only; everything passes.
- `normalizer`: a data-normalizing layer with fixed `mean`/`var` buffers (not a BatchNorm) and
  one BatchNorm1d.
"""

import torch
from torch import nn


class ScratchBN(nn.Module):
    """A correct BatchNorm written from scratch (torch's conventions; 2-D and 4-D inputs)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _unbiased(self, var, n):
        return var * n / (n - 1)

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        # statistics in float32 for float16/bfloat16 inputs, as torch computes them
        wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xf = x.to(wide)
        if self.training:
            mean = xf.mean(dim=dims)
            var = xf.var(dim=dims, unbiased=False)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                m = self.momentum
                self.running_mean.copy_((1 - m) * self.running_mean.to(wide) + m * mean)
                self.running_var.copy_((1 - m) * self.running_var.to(wide)
                                       + m * self._unbiased(var, n))
        else:
            mean, var = self.running_mean.to(wide), self.running_var.to(wide)
        x_hat = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = x_hat * self.weight.to(wide).view(shape) + self.bias.to(wide).view(shape)
        return y.to(x.dtype)


class BiasedVarBN(ScratchBN):
    """The defect: the running variance averages the biased batch variance."""

    def _unbiased(self, var, n):
        return var


class MyBatchNorm2d(nn.BatchNorm2d):
    """A torch subclass that only adds a name."""


class Block(nn.Module):
    def __init__(self, channels, bn):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = bn(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x


class MixedCustom(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.layer1 = nn.Sequential(Block(channels, MyBatchNorm2d), Block(channels, ScratchBN))
        self.layer2 = nn.Sequential(Block(channels, BiasedVarBN), Block(channels, BiasedVarBN))
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def mixed_custom(channels=4):
    """One defective class (BiasedVarBN at layer2.0.bn and layer2.1.bn) among correct ones."""
    return MixedCustom(channels)


class StubbornBlock(Block):
    """``train()`` puts its BatchNorm in training whatever mode is asked for."""

    def train(self, mode=True):
        super().train(mode)
        self.bn.train(True)
        return self


class TrainOverride(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.layer1 = nn.Sequential(Block(channels, nn.BatchNorm2d),
                                    StubbornBlock(channels, nn.BatchNorm2d))
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        return self.head(self.layer1(self.stem(x)).mean(dim=(2, 3)))


def train_override(channels=4):
    """``layer1.1`` (a StubbornBlock) keeps ``layer1.1.bn`` in training after ``eval()``."""
    return TrainOverride(channels)


class FrozenBackbone(nn.Module):
    """Fine-tuning a head: the backbone's BatchNorms stay in eval and their parameters frozen."""

    def __init__(self, channels=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1),
                                      nn.BatchNorm2d(channels), nn.ReLU(),
                                      Block(channels, nn.BatchNorm2d))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(channels, channels), nn.BatchNorm1d(channels),
                                  nn.Linear(channels, 3))

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x):
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def frozen_backbone(channels=4):
    """Backbone BatchNorms kept in eval by ``train()`` (a note); the head's BatchNorm1d trains."""
    return FrozenBackbone(channels)


def _fold(conv, bn, eps):
    scale = bn.weight / torch.sqrt(bn.running_var + eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      padding=conv.padding, bias=True).to(conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class FusableNet(nn.Module):
    def __init__(self, channels=4, forget_eps=False):
        super().__init__()
        self.forget_eps = forget_eps
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 3)

    def fuse(self):
        """Fold each BatchNorm into its Conv (eval only)."""
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
            c, b = getattr(self, conv), getattr(self, bn)
            setattr(self, conv, _fold(c, b, 0.0 if self.forget_eps else b.eps))
            setattr(self, bn, nn.Identity())
        return self

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def wrong_fusion(channels=4):
    """``fuse()`` folds with eps=0: the fused model differs from the eval model."""
    return FusableNet(channels, forget_eps=True)


def right_fusion(channels=4):
    """``fuse()`` folds with the layer's eps: equal to the eval model."""
    return FusableNet(channels)


def correct_cnn(channels=4):
    """torch's BatchNorm2d in two blocks; every check passes."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels),
                         nn.ReLU(), Block(channels, nn.BatchNorm2d), nn.Flatten())


class Normalize(nn.Module):
    """Input normalization with fixed statistics: holds ``mean``/``var`` but is no BatchNorm."""

    def __init__(self, channels=3):
        super().__init__()
        self.register_buffer("mean", torch.full((channels,), 0.5))
        self.register_buffer("var", torch.full((channels,), 0.25))

    def forward(self, x):
        return (x - self.mean.view(1, -1, 1, 1)) / self.var.view(1, -1, 1, 1).sqrt()


def normalizer(channels=4):
    """A Normalize input layer (not a BatchNorm) and one BatchNorm2d."""
    return nn.Sequential(Normalize(3), nn.Conv2d(3, channels, 3, padding=1),
                         nn.BatchNorm2d(channels))


def hanging_on_float16(channels=4):
    """torch's BatchNorm2d, except that float16 inputs never return (tests/data/hanging_bn.py):
    the model runs; verifying its class hangs in reduced_precision (for the Ctrl-C tests)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hanging_bn import LoopsOnFloat16

    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), LoopsOnFloat16(channels))


class _Spins(nn.Module):
    def forward(self, x):
        while True:
            pass


def hanging_forward(channels=4):
    """A model whose forward never returns (for the --timeout test)."""
    return nn.Sequential(nn.Conv2d(3, channels, 3), nn.BatchNorm2d(channels), _Spins())
