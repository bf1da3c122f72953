"""BatchNorm variants people ship, each with its own float64 oracle written from its paper.

>>> import torch
>>> from bncheck.engine.variants import Variant, ghost_train
>>> v = Variant.from_declaration("ghost", {"virtual_batch": 2})
>>> x = torch.tensor([[0.0], [2.0], [10.0], [14.0]])
>>> ghost_train(x, eps=0.0, virtual_batch=v.virtual_batch).flatten()
tensor([-1.,  1., -1.,  1.], dtype=torch.float64)

* ``batch-renorm`` (Ioffe 2017, "Batch Renormalization"): in training
  ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias`` with ``sigma_B = sqrt(var_B + eps)``
  (biased batch variance), ``r = clip(sigma_B / sigma, 1 / r_max, r_max)`` and
  ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` from the running mean ``mu`` and running std
  ``sigma`` before the step (``sqrt(running_var + eps)`` where the variance is stored), both
  treated as constants by the gradient. While ``num_batches_tracked < warmup`` it is plain
  BatchNorm (``r = 1``, ``d = 0``). Eval and the running-statistics update are BatchNorm's.
* ``ghost`` (Hoffer et al. 2017, "Train longer, generalize better"): the batch is split into
  virtual batches of ``virtual_batch`` consecutive rows, each normalized with its own
  statistics, and the running statistics are updated once per virtual batch, in order (as a
  wrapper calling ``nn.BatchNorm`` on each chunk does; ``num_batches_tracked`` counts chunks).
  Cases draw batches that are multiples of ``virtual_batch`` (at least two virtual batches), so
  ``x.split(V)`` and ``x.chunk(N // V)`` agree.

Independent of :mod:`bncheck.reference` and :mod:`bncheck.engine.oracle`'s own BatchNorm on purpose:
sums over the reduction axes in float64, straight from the formulas above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bncheck.errors import InvalidArgument, InvalidArgumentType

__all__ = ["VARIANTS", "Variant", "renorm_train", "renorm_rd", "ghost_train", "ghost_chunks"]

#: Each variant's arguments: type and default (None: required).
VARIANTS: dict[str, dict[str, tuple[type, Any]]] = {
    "batch-renorm": {"r_max": (float, 3.0), "d_max": (float, 5.0), "warmup": (int, 0)},
    "ghost": {"virtual_batch": (int, None)},
}


@dataclass(frozen=True)
class Variant:
    """A declared variant and its arguments (validated: :meth:`from_declaration`)."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_declaration(cls, name: Any, args: Mapping[str, Any] | None = None) -> Variant:
        """Validate ``variant=name`` and ``variant_args=args`` (strings are converted, as the
        CLI's ``--variant-args r_max=3,d_max=5`` gives them)."""
        if name not in VARIANTS:
            raise InvalidArgument(f"Expected variant to be one of {sorted(VARIANTS)}, received "
                                  f"variant={name!r}")
        args = dict(args or {})
        spec = VARIANTS[name]
        unknown = sorted(set(args) - set(spec))
        if unknown:
            raise InvalidArgument(f"Expected variant_args keys from {sorted(spec)} for "
                                  f"variant={name!r}, received variant_args={args!r}")
        out: dict[str, Any] = {}
        for key, (kind, default) in spec.items():
            value = args.get(key, default)
            if value is None:
                raise InvalidArgument(f"variant={name!r} needs variant_args {key}=..., "
                                      f"received variant_args={args!r}")
            out[key] = _convert(kind, value, key)
        if name == "batch-renorm":
            if out["r_max"] < 1.0 or out["d_max"] < 0.0 or out["warmup"] < 0:
                raise InvalidArgument(f"Expected r_max >= 1, d_max >= 0 and warmup >= 0, "
                                      f"received variant_args={out!r}")
        elif out["virtual_batch"] < 2:
            raise InvalidArgument(f"Expected virtual_batch >= 2 (a virtual batch of one row "
                                  f"has no variance), received "
                                  f"virtual_batch={out['virtual_batch']!r}")
        return cls(name, tuple(sorted(out.items())))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    @property
    def virtual_batch(self) -> int:
        return int(self.kwargs["virtual_batch"])

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'{k}={v:g}' for k, v in self.args)})"


def _convert(kind: type, value: Any, key: str) -> Any:
    if isinstance(value, bool):
        raise InvalidArgumentType(f"Expected variant_args {key} to be {kind.__name__}, "
                                  f"received {key}={value!r}")
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise InvalidArgumentType(f"Expected variant_args {key} to be {kind.__name__}, "
                                  f"received {key}={value!r}") from None
    if kind is int and float(value) != converted:
        raise InvalidArgumentType(f"Expected variant_args {key} to be an integer, received "
                                  f"{key}={value!r}")
    return converted


def _dims(nd: int) -> tuple[int, ...]:
    return (0, *range(2, nd))


def _view(v: Tensor, nd: int) -> Tensor:
    return v.reshape([1, -1] + [1] * (nd - 2))


def _stats(x64: Tensor) -> tuple[Tensor, Tensor]:
    n = x64.numel() // x64.shape[1]
    mean = x64.sum(dim=_dims(x64.dim())) / n
    var = (x64 - _view(mean, x64.dim())).square().sum(dim=_dims(x64.dim())) / n
    return mean, var


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    nd = y.dim()
    if weight is not None:
        y = y * _view(weight.to(torch.float64), nd)
    if bias is not None:
        y = y + _view(bias.to(torch.float64), nd)
    return y


def renorm_rd(x: Tensor, *, eps: float, running_mean: Tensor, running_std: Tensor,
              r_max: float, d_max: float) -> tuple[Tensor, Tensor]:
    """Batch Renorm's ``(r, d)`` per channel (float64, no gradient)."""
    mean, var = _stats(x.detach().to(torch.float64))
    sigma_b = torch.sqrt(var + eps)
    sigma = running_std.detach().to(torch.float64)
    r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
    d = ((mean - running_mean.detach().to(torch.float64)) / sigma).clamp(-d_max, d_max)
    return r, d


def renorm_train(x: Tensor, *, eps: float, running_mean: Tensor, running_std: Tensor,
                 r_max: float, d_max: float, warm: bool, weight: Tensor | None = None,
                 bias: Tensor | None = None) -> Tensor:
    """Batch Renorm's training output in float64 (``warm``: still in the warm-up, plain
    BatchNorm). Differentiable in ``x``, ``weight`` and ``bias``; ``r`` and ``d`` are not."""
    x64 = x.to(torch.float64)
    nd = x64.dim()
    mean, var = _stats(x64)
    y = (x64 - _view(mean, nd)) / _view(torch.sqrt(var + eps), nd)
    if not warm:
        r, d = renorm_rd(x64, eps=eps, running_mean=running_mean, running_std=running_std,
                         r_max=r_max, d_max=d_max)
        y = y * _view(r, nd) + _view(d, nd)
    return _affine(y, weight, bias)


def ghost_chunks(x: Tensor, virtual_batch: int) -> tuple[Tensor, ...]:
    """The virtual batches: ``virtual_batch`` consecutive rows each (the last may be shorter)."""
    return tuple(x.split(virtual_batch, dim=0))


def ghost_train(x: Tensor, *, eps: float, virtual_batch: int, weight: Tensor | None = None,
                bias: Tensor | None = None) -> Tensor:
    """Ghost BatchNorm's training output in float64: each virtual batch normalized with its
    own mean and biased variance. Differentiable in ``x``, ``weight`` and ``bias``."""
    parts = []
    for chunk in ghost_chunks(x.to(torch.float64), virtual_batch):
        mean, var = _stats(chunk)
        nd = chunk.dim()
        parts.append((chunk - _view(mean, nd)) / _view(torch.sqrt(var + eps), nd))
    return _affine(torch.cat(parts, dim=0), weight, bias)
