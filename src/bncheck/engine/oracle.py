"""The float64 specification oracle: batch normalization written straight from the formula.

>>> import torch
>>> from bncheck.engine.oracle import batch_stats, normalize
>>> x = torch.tensor([[1.0], [3.0]])
>>> mean, var = batch_stats(x)
>>> mean, var                      # per channel; the variance is the biased one
(tensor([2.], dtype=torch.float64), tensor([1.], dtype=torch.float64))
>>> normalize(x, mean, var, eps=0.0).flatten()
tensor([-1.,  1.], dtype=torch.float64)

Independent of :mod:`bncheck.reference` on purpose: explicit sums over the reduction axes (all
but the channel axis 1) in float64, ``y = weight * (x - mean) / sqrt(var + eps) + bias``, and
nothing else. Inputs of any floating dtype are first converted exactly to float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reduce_dims", "count_per_channel", "batch_stats", "normalize", "channel_view",
           "train_forward"]


def reduce_dims(ndim: int) -> tuple[int, ...]:
    """The axes BatchNorm reduces over: every axis of ``(N, C, *)`` except the channel axis 1."""
    return (0, *range(2, ndim))


def count_per_channel(shape: tuple[int, ...] | torch.Size) -> int:
    """How many values each channel's statistics average: ``N * prod(spatial)``."""
    n = 1
    for i, s in enumerate(shape):
        if i != 1:
            n *= int(s)
    return n


def channel_view(values: Tensor, ndim: int) -> Tensor:
    """A ``(C,)`` tensor shaped ``(1, C, 1, ...)`` to broadcast over an ``ndim``-dim input."""
    return values.reshape([1, -1] + [1] * (ndim - 2))


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and *biased* variance of ``x`` in float64: ``sum(x) / n`` and
    ``sum((x - mean)**2) / n``."""
    x64 = x.detach().to(torch.float64)
    dims = reduce_dims(x64.dim())
    n = count_per_channel(x64.shape)
    mean = x64.sum(dim=dims) / n
    var = (x64 - channel_view(mean, x64.dim())).square().sum(dim=dims) / n
    return mean, var


def normalize(x: Tensor, mean: Tensor, var: Tensor, *, eps: float,
              weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` in float64, per channel (``(C,)`` args).

    Differentiable in ``x``, ``mean``, ``var``, ``weight`` and ``bias`` when they require grad.
    """
    x64 = x.to(torch.float64)
    nd = x64.dim()
    y = (x64 - channel_view(mean.to(torch.float64), nd)) / torch.sqrt(
        channel_view(var.to(torch.float64), nd) + eps)
    if weight is not None:
        y = y * channel_view(weight.to(torch.float64), nd)
    if bias is not None:
        y = y + channel_view(bias.to(torch.float64), nd)
    return y


def train_forward(x: Tensor, *, eps: float, weight: Tensor | None = None,
                  bias: Tensor | None = None) -> Tensor:
    """Training-mode output: normalize with the batch mean and biased batch variance."""
    x64 = x.detach().to(torch.float64)
    mean, var = batch_stats(x64)
    return normalize(x64, mean, var, eps=eps, weight=weight, bias=bias)
