"""Mutants of the declared variants (:mod:`bncheck.engine.variants`): a correct Batch Renorm and a
correct ghost BatchNorm, each with one realistic defect, killed by the property that owns it.

>>> from bncheck.engine.mutants import MUTANTS
>>> MUTANTS["renorm_r_from_variance"].killer
'train_forward'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bncheck.engine.mutants import _REDUCED, MUTANTS, Clean, Mutant, _m, _view

__all__ = ["RenormClean", "GhostClean", "VARIANT_MUTANTS", "RENORM_ARGS", "GHOST_ARGS"]

#: The declarations the variant mutants (and their clean versions) are verified with.
RENORM_ARGS = (("r_max", 3.0), ("d_max", 5.0), ("warmup", 0))
GHOST_ARGS = (("virtual_batch", 4),)


class RenormClean(Clean):
    """A correct Batch Renorm (Ioffe 2017): r and d from the batch std and the running std
    ``sqrt(running_var + eps)``, clipped, detached; plain BatchNorm during the warm-up."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 r_max: float = 3.0, d_max: float = 5.0, warmup: int = 0):
        super().__init__(num_features, eps, momentum)
        self.r_max, self.d_max, self.warmup = r_max, d_max, warmup

    def warm(self) -> bool:
        return int(self.num_batches_tracked) < self.warmup

    def rd(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.sqrt(self.running_var.to(var.dtype) + self.eps)
        r = (torch.sqrt(var + self.eps) / sigma).clamp(1 / self.r_max, self.r_max)
        d = ((mean - self.running_mean.to(mean.dtype)) / sigma).clamp(-self.d_max, self.d_max)
        return r.detach(), d.detach()

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        x = input.float() if input.dtype in _REDUCED else input
        mean, var = self.batch_stats(x)
        if self.warm():
            r, d = torch.ones_like(var), torch.zeros_like(mean)
        else:
            r, d = self.rd(mean, var)
        self.update(mean.detach(), var.detach(), input.numel() // input.shape[1])
        xhat = (x - _view(mean, x)) / torch.sqrt(_view(var, x) + self.eps)
        y = (xhat * _view(r, x) + _view(d, x)) * _view(self.weight.to(x.dtype), x)
        return (y + _view(self.bias.to(x.dtype), x)).to(input.dtype)


class RenormRFromVariance(RenormClean):
    """r = clip(var_B / var) from the variances, not the standard deviations."""

    def rd(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        r, d = super().rd(mean, var)
        sigma2 = self.running_var.to(var.dtype) + self.eps
        return ((var + self.eps) / sigma2).clamp(1 / self.r_max, self.r_max).detach(), d


class RenormInvertedWarmup(RenormClean):
    """Renormalizes during the warm-up and is plain BatchNorm after it."""

    def warm(self) -> bool:
        return not super().warm()


class RenormGradThroughRD(RenormClean):
    """r and d keep their gradient (the paper stops it)."""

    def rd(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.sqrt(self.running_var.to(var.dtype) + self.eps)
        r = (torch.sqrt(var + self.eps) / sigma).clamp(1 / self.r_max, self.r_max)
        d = ((mean - self.running_mean.to(mean.dtype)) / sigma).clamp(-self.d_max, self.d_max)
        return r, d


class GhostClean(Clean):
    """A correct ghost BatchNorm: each virtual batch of ``virtual_batch`` rows normalized with
    its own statistics, the running statistics updated once per virtual batch."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 virtual_batch: int = 4):
        super().__init__(num_features, eps, momentum)
        self.virtual_batch = virtual_batch

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        return torch.cat([super(GhostClean, self).forward(p)
                          for p in input.split(self.virtual_batch, 0)], 0)


class GhostUpdateOnce(GhostClean):
    """Normalizes per virtual batch but updates the running statistics once, from the whole
    batch."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        x = input.float() if input.dtype in _REDUCED else input
        parts = []
        for p in x.split(self.virtual_batch, 0):
            mean, var = self.batch_stats(p)
            parts.append(self.normalize(p, mean, var))
        mean, var = self.batch_stats(x)
        self.update(mean.detach(), var.detach(), input.numel() // input.shape[1])
        return torch.cat(parts, 0).to(input.dtype)


#: Each mutant's declaration (Mutant.declaration): its variant and the variant's arguments.
_RENORM: dict[str, Any] = {"variant": "batch-renorm", "variant_args": dict(RENORM_ARGS)}
_GHOST: dict[str, Any] = {"variant": "ghost", "variant_args": dict(GHOST_ARGS)}

VARIANT_MUTANTS: dict[str, Mutant] = dict([
    _m("renorm_r_from_variance", RenormRFromVariance,
       "Batch Renorm's r from the variances instead of the standard deviations",
       "train_forward", **_RENORM),
    _m("renorm_inverted_warmup", RenormInvertedWarmup,
       "Batch Renorm renormalizes during the warm-up and is plain BatchNorm after it",
       "train_forward", **_RENORM),
    _m("renorm_grad_through_rd", RenormGradThroughRD,
       "Batch Renorm's r and d keep their gradient (the paper stops it)", "gradients",
       **_RENORM),
    _m("ghost_whole_batch", Clean,
       "ghost BatchNorm with statistics over the whole batch (no virtual batches)",
       "train_forward", **_GHOST),
    _m("ghost_update_once", GhostUpdateOnce,
       "ghost BatchNorm updating its running statistics once per batch, from the whole batch",
       "running_stats_update", **_GHOST),
])
MUTANTS.update(VARIANT_MUTANTS)  # both import orders register them (bncheck.engine.mutants too)
