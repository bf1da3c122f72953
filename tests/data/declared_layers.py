"""Correct BatchNorms that need a declaration to be verified (issue 16's cases)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class EpsIgnoringBN(nn.BatchNorm1d):
    """Takes ``eps`` but always computes with 1e-3 (declare ``--eps 1e-3``)."""

    def __init__(self, num_features: int, eps: float = 1e-3, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=1e-3, momentum=momentum)


class FlatOrImageBN(nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` that also takes ``(N, C)`` input (``_check_input_dim``
    overridden, as many codebases do): declare ``--dims 2,4``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {input.dim()}D input)")


def _all_reduce(t: Tensor, group: Any) -> Tensor:
    from torch.distributed import nn as dist_nn

    return dist_nn.functional.all_reduce(t, group=group)  # differentiable


class RenamedSyncBN(nn.Module):
    """A correct synchronised BatchNorm (torch's convention) whose attributes are ``scale``,
    ``shift``, ``exp_mean`` and ``exp_var``: declare them with ``--names``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 process_group: Any = None) -> None:
        super().__init__()
        self.eps, self.momentum, self.process_group = eps, momentum, process_group
        self.scale = nn.Parameter(torch.ones(num_features))
        self.shift = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("exp_mean", torch.zeros(num_features))
        self.register_buffer("exp_var", torch.ones(num_features))

    def _synced(self) -> bool:
        return (dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1)

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xf = x.to(work)
        if not self.training:
            mean, var = self.exp_mean.to(work), self.exp_var.to(work)
        else:
            dims = [0, *range(2, x.dim())]
            count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=work)
            total = torch.cat([xf.sum(dims), count])
            if self._synced():
                total = _all_reduce(total, self.process_group)
            n = total[-1]
            mean = total[:-1] / n
            sq = (xf - mean.reshape(shape)).square().sum(dims)
            if self._synced():
                sq = _all_reduce(sq, self.process_group)
            var = sq / n
            with torch.no_grad():
                m = self.momentum
                unbiased = var * n / (n - 1)
                self.exp_mean.mul_(1 - m).add_(m * mean.to(self.exp_mean.dtype))
                self.exp_var.mul_(1 - m).add_(m * unbiased.to(self.exp_var.dtype))
        y = (xf - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        y = y * self.scale.to(work).reshape(shape) + self.shift.to(work).reshape(shape)
        return y.to(x.dtype)
