"""Running statistics on real activations: how far each BatchNorm's running mean and variance
are from the exact statistics of its inputs over the whole training set.

>>> from bncheck.training.data import synthetic_dataset
>>> from bncheck.reference.lenet import lenet_bn
>>> from bncheck.training import population_gaps
>>> gaps = population_gaps(lenet_bn("torch"), synthetic_dataset(64), batch_size=32)
>>> [g.layer for g in gaps]
[1, 5, 10, 13]

The inputs are taken in eval mode (every earlier BatchNorm normalizing with its running
statistics): the activations the layer sees at inference, where its running statistics are used.
The exact statistics are accumulated in float64 per batch and merged with Chan et al.'s pairwise
update, so they do not depend on the batch size. A fresh model's running statistics (0 and 1)
are far off; after training they lag the final weights by about ``1 / momentum`` batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bncheck.engine.oracle import channel_view, count_per_channel, reduce_dims
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import check_positive_int, check_type
from bncheck.training.data import Dataset, batches

__all__ = ["PopulationGap", "population_gaps"]


@dataclass(frozen=True)
class PopulationGap:
    """One BatchNorm layer's running statistics against its inputs' exact statistics.

    ``mean_gap``: the largest ``|running_mean - mean| / std`` over channels (in units of the
    channel's population standard deviation), at ``mean_channel``. ``var_gap``: the largest
    ``|running_var / var - 1|`` (relative), at ``var_channel``. ``var`` is the unbiased
    population variance, the quantity the running variance estimates.
    """

    layer: int
    name: str
    channels: int
    values_per_channel: int
    mean_gap: float
    mean_channel: int
    var_gap: float
    var_channel: int


@dataclass(frozen=True)
class _Moments:
    """Count, mean and sum of squared deviations per channel (float64, on the CPU)."""

    n: int
    mean: Tensor
    m2: Tensor

    @staticmethod
    def of(x: Tensor) -> _Moments:
        x = x.detach().to("cpu", torch.float64)
        dims = reduce_dims(x.dim())
        mean = x.mean(dim=dims)
        return _Moments(count_per_channel(x.shape), mean,
                        (x - channel_view(mean, x.dim())).square().sum(dim=dims))

    def merge(self, other: _Moments) -> _Moments:
        """Chan, Golub and LeVeque's pairwise update: exact in exact arithmetic."""
        total = self.n + other.n
        delta = other.mean - self.mean
        return _Moments(total, self.mean + delta * (other.n / total),
                        self.m2 + other.m2 + delta.square() * (self.n * other.n / total))


def bn_buffer(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` (``running_mean``, ``running_var``, ...) as a tensor."""
    value = getattr(module, name, None)
    if not isinstance(value, Tensor):
        raise InvalidArgument(f"Expected {type(module).__name__}.{name} to be a tensor, "
                              f"received {type(value).__name__}")
    return value


def _bn_layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    found = []
    for index, (name, module) in enumerate(model.named_children()):
        mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
        if isinstance(mean, Tensor) and isinstance(var, Tensor):
            found.append((index, name, module))
    return found


def population_gaps(model: nn.Module, data: Dataset, *,
                    batch_size: int = 256) -> list[PopulationGap]:
    """Per BatchNorm child of ``model`` (one with ``running_mean``/``running_var`` tensors): the
    gap between its running statistics and the exact statistics of its inputs over ``data``.

    The model is run in eval mode without gradients and left in eval mode; nothing changes.

    Raises:
        InvalidArgument: ``model`` has no BatchNorm child with running statistics.
    """
    check_type(nn.Module, model, "model")
    check_type(Dataset, data, "data")
    check_positive_int(batch_size, "batch_size")
    layers = _bn_layers(model)
    if not layers:
        raise InvalidArgument("Expected model to have BatchNorm children with running_mean and "
                              "running_var tensors, received a model without any")
    moments: dict[int, _Moments] = {}

    def capture(index: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            batch = _Moments.of(args[0])
            moments[index] = moments[index].merge(batch) if index in moments else batch
        return hook

    handles = [module.register_forward_pre_hook(capture(i)) for i, _, module in layers]
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for x, _ in batches(data, batch_size=batch_size):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    gaps = []
    for index, name, module in layers:
        m = moments[index]
        var = m.m2 / max(m.n - 1, 1)
        running_mean = bn_buffer(module, "running_mean").detach().to("cpu", torch.float64)
        running_var = bn_buffer(module, "running_var").detach().to("cpu", torch.float64)
        mean_gap = (running_mean - m.mean).abs() / var.sqrt().clamp_min(1e-150)
        var_gap = (running_var / var.clamp_min(1e-300) - 1).abs()
        gaps.append(PopulationGap(index, f"{name}: {type(module).__name__}({len(running_mean)})",
                                  len(running_mean), m.n, float(mean_gap.max()),
                                  int(mean_gap.argmax()), float(var_gap.max()),
                                  int(var_gap.argmax())))
    return gaps
