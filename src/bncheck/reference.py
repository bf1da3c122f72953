"""The reference BatchNorm, a from-scratch drop-in for ``F.batch_norm`` and ``nn.BatchNorm*d``.

Written in plain torch ops (no call into ``F.batch_norm`` or ``torch.batch_norm``), so autograd
derives the backward. It fixes every defect of the seed notebook:

* training normalizes with the *batch* variance (biased), not the moving variance;
* the running variance moves toward the batch variance (unbiased, as PyTorch stores it);
* the mode comes from ``training`` / ``module.training``, never from ``torch.is_grad_enabled()``;
* running statistics are buffers updated in place under ``no_grad`` and never carry a graph.

float16/bfloat16 inputs are computed in float32 and returned in the input dtype; running
statistics keep their own dtype (float32 by default), as PyTorch's mixed-precision BatchNorm does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bncheck._validation import check_eps, check_momentum, check_positive_int, describe
from bncheck.errors import InvalidArgument, InvalidArgumentType

__all__ = ["batch_norm", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_REDUCED = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype BatchNorm arithmetic runs in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in _REDUCED else dtype


def reduction_dims(ndim: int) -> list[int]:
    """The dims a BatchNorm reduces over for an ``ndim``-dim input: all but the channel dim 1."""
    return [0, *range(2, ndim)]


def _check_input(input: Any, allowed_dims: tuple[int, ...] = (2, 3, 4, 5)) -> None:
    if not isinstance(input, Tensor):
        raise InvalidArgumentType(
            f"Expected input to be a torch.Tensor, received input={describe(input)}"
        )
    if not input.is_floating_point():
        raise InvalidArgumentType(
            f"Expected input to have a floating dtype (float16, bfloat16, float32, float64), "
            f"received input of dtype {input.dtype}"
        )
    if input.dim() not in allowed_dims:
        lo, hi = min(allowed_dims), max(allowed_dims)
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise InvalidArgument(
            f"Expected input with {want} dims (N, C, *), received input of shape "
            f"{tuple(input.shape)} ({input.dim()} dims)"
        )


def _check_channel_tensor(t: Any, name: str, channels: int) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise InvalidArgumentType(f"Expected {name} to be a torch.Tensor or None, "
                                  f"received {name}={describe(t)}")
    if not t.is_floating_point():
        raise InvalidArgumentType(
            f"Expected {name} to have a floating dtype, received {name} of dtype {t.dtype}")
    if t.numel() != channels:
        raise InvalidArgument(
            f"Expected {name} to hold one value per channel ({channels}, from input.shape[1]), "
            f"received {name} of shape {tuple(t.shape)}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    >>> import torch, bncheck
    >>> x = torch.randn(8, 3, 4, 4)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = bncheck.batch_norm(x, rm, rv, training=True)
    >>> bool(torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5))
    True

    Args:
        input: ``(N, C, *)`` floating tensor, 2 to 5 dims.
        running_mean, running_var: ``(C,)`` statistics. In training they are updated in place
            (when given) with ``new = (1 - momentum) * old + momentum * batch``, the running
            variance from the *unbiased* batch variance; in eval they normalize the input.
        weight, bias: optional ``(C,)`` affine parameters.
        training: normalize with batch statistics (biased variance) and update the running ones.
        momentum: weight of the batch statistic in the update, in ``[0, 1]``.
        eps: added to the variance inside the square root; must be positive.

    Returns:
        A tensor of the input's shape and dtype.

    Raises:
        InvalidArgument: bad dims, channel mismatch, one value per channel in training,
            missing running statistics in eval, bad ``eps``/``momentum``.
        InvalidArgumentType: non-tensor or non-floating input.
    """
    _check_input(input)
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_channel_tensor(t, name, channels)
    check_eps(eps)
    check_momentum(momentum, allow_none=False)
    if not training and (running_mean is None or running_var is None):
        raise InvalidArgument(
            "Expected running_mean and running_var when training=False, received "
            f"running_mean={describe(running_mean)}, running_var={describe(running_var)}"
        )

    dims = reduction_dims(input.dim())
    bshape = [1, channels] + [1] * (input.dim() - 2)
    cdtype = compute_dtype(input.dtype)
    x = input.to(cdtype)
    if training:
        count = input.numel() // channels if channels else 0
        if count <= 1:
            raise InvalidArgument(
                "Expected more than 1 value per channel when training, "
                f"got input size {input.shape}"
            )
        mean = x.mean(dim=dims)
        var = (x - mean.view(bshape)).square().mean(dim=dims)  # biased, two-pass
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1.0 - momentum).add_(
                    mean.detach().to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                unbiased = var.detach() * (count / (count - 1))
                # Blend in the compute dtype, then store: a float16 batch variance may overflow
                # even when the blended running variance does not.
                running_var.copy_(running_var.to(cdtype) * (1.0 - momentum)
                                  + unbiased * momentum)
    else:
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(cdtype)
        var = running_var.to(cdtype)

    y = (x - mean.view(bshape)) * torch.rsqrt(var + eps).view(bshape)
    if weight is not None:
        y = y * weight.to(cdtype).view(bshape)
    if bias is not None:
        y = y + bias.to(cdtype).view(bshape)
    return y.to(input.dtype)


class BatchNorm(nn.Module):
    """A BatchNorm module for ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``.

    >>> import torch, bncheck
    >>> bn = bncheck.BatchNorm(3)
    >>> y = bn(torch.randn(4, 3, 5, 5))       # train mode: batch statistics, stats updated
    >>> int(bn.num_batches_tracked)
    1
    >>> _ = bn.eval()(torch.randn(1, 3, 5, 5))  # eval mode: running statistics, batch of 1 is fine

    The mode comes from ``self.training`` only. Buffers and parameters have the names of
    ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so state dicts load either way.

    Args:
        num_features: C, the channel count.
        eps: added to the variance inside the square root.
        momentum: weight of the batch statistic in the running update; ``None`` keeps a
            cumulative (equal-weight) average over all batches seen.
        affine: learn a per-channel ``weight`` and ``bias``.
        track_running_stats: keep running statistics; when False, eval mode also
            normalizes with batch statistics (as torch does).
    """

    _version = 2
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None
    _allowed_dims: tuple[int, ...] = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_features, "num_features")
        check_eps(eps)
        check_momentum(momentum, allow_none=True)
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch count to 0."""
        if self.track_running_stats:
            self.running_mean.zero_()  # type: ignore[union-attr]
            self.running_var.fill_(1)  # type: ignore[union-attr]
            self.num_batches_tracked.zero_()  # type: ignore[union-attr]

    def reset_parameters(self) -> None:
        """Reset the statistics, weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def _check_input_dim(self, input: Tensor) -> None:
        _check_input(input, self._allowed_dims)
        if input.shape[1] != self.num_features:
            raise InvalidArgument(
                f"Expected input with {self.num_features} channels (num_features) in dim 1, "
                f"received input of shape {tuple(input.shape)} ({input.shape[1]} channels)"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # Checkpoints from before num_batches_tracked existed: start the count at 0.
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C)`` and ``(N, C, L)``, as ``nn.BatchNorm1d``."""

    _allowed_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C, H, W)``, as ``nn.BatchNorm2d``."""

    _allowed_dims = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C, D, H, W)``, as ``nn.BatchNorm3d``."""

    _allowed_dims = (5,)
