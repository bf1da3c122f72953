"""The reference BatchNorm, a from-scratch drop-in for ``F.batch_norm`` and ``nn.BatchNorm*d``.

Written from the formula (no call into ``F.batch_norm``, ``torch.batch_norm`` or a native
BatchNorm kernel; the arithmetic lives in :mod:`bncheck.reference._kernels`). It fixes every defect
of the
seed notebook:

* training normalizes with the *batch* variance (biased), not the moving variance;
* the running variance moves toward the batch variance (unbiased, as PyTorch stores it);
* the mode comes from ``training`` / ``module.training``, never from ``torch.is_grad_enabled()``;
* running statistics are buffers updated in place under ``no_grad`` and never carry a graph.

It behaves as torch 2.13 does where torch is defined: ``bias=False``, an empty batch in training
(empty output and gradients, statistics unchanged, the batch still counted), ``eps=0`` outside
training. float16/bfloat16 inputs are computed in float32 and returned in the input dtype;
running statistics keep their own dtype (float32 by default), as PyTorch's mixed-precision
BatchNorm does. It validates where torch does, with torch's error types and words, keeps torch's
``state_dict`` semantics, and runs under ``torch.compile``, ``torch.export``, ``torch.func`` and
forward-mode AD (docs/reference.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.errors import InvalidArgument, InvalidArgumentType
from bncheck.infra.validation import check_type, describe
from bncheck.reference import _kernels
from bncheck.reference._kernels import compute_dtype, reduction_dims

__all__ = ["batch_norm", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "InvalidInput", "compute_dtype", "reduction_dims"]


class InvalidInput(InvalidArgument, RuntimeError):
    """An input torch's native BatchNorm refuses with a ``RuntimeError`` (a statistic or
    parameter of the wrong size, statistics missing in eval): also a ``RuntimeError``, so code
    that catches torch's error catches bncheck's, and an :class:`InvalidArgument` (``ValueError``)
    as every bncheck argument error."""


def _check_input(input: Any) -> None:
    """What torch checks before it computes, as its own errors would say it (torch raises
    ``AttributeError``/``NotImplementedError``/``IndexError`` from its internals for these;
    bncheck says what was expected and received, as a ``TypeError``/``ValueError``)."""
    if not isinstance(input, Tensor):
        raise InvalidArgumentType(
            f"Expected input to be a torch.Tensor, received input={describe(input)}"
        )
    if not input.is_floating_point():
        raise InvalidArgumentType(
            f"Expected input to have a floating dtype (float16, bfloat16, float32, float64), "
            f"received input of dtype {input.dtype}"
        )
    if input.dim() < 2 and not (input.dim() == 1 and input.numel() == 0):
        raise InvalidArgument(
            f"Expected input with at least 2 dims (N, C, *) (or an empty 1-dim tensor, which "
            f"torch returns as it is), received input of shape {tuple(input.shape)} "
            f"({input.dim()} dims)"
        )


def _check_channel_tensor(t: Any, name: str, channels: int) -> None:
    """torch's ``check_dims_match_num_input_features``, its wording first."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise InvalidArgumentType(f"Expected {name} to be a torch.Tensor or None, "
                                  f"received {name}={describe(t)}")
    if not t.is_floating_point():
        raise InvalidArgumentType(
            f"Expected {name} to have a floating dtype, received {name} of dtype {t.dtype}")
    if t.numel() != channels:
        raise InvalidInput(
            f"{name} should contain {channels} elements not {t.numel()} (one value per "
            f"channel, from input.shape[1]; received {name} of shape {tuple(t.shape)})"
        )


def _check_number(value: Any, name: str) -> None:
    """``eps`` and ``momentum`` are numbers (torch's ``double`` arguments); their range is
    checked only where torch checks it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(
            f"Expected {name} to be a float, received {name}={describe(value)}"
            + (" (None means a cumulative average, which only the BatchNorm module can keep)"
               if value is None and name == "momentum" else ""))


def _check_eps(eps: Any, training: bool) -> None:
    """torch 2.13's ``F.batch_norm`` rule and wording: ``> 0`` in training (a constant channel
    has variance 0), ``>= 0`` otherwise. Like torch, NaN passes (and gives NaN)."""
    _check_number(eps, "eps")
    if training and eps <= 0.0:
        raise InvalidArgument(
            f"batch_norm eps must be positive during training, but got {eps}: Expected eps > "
            f"0.0, received eps={eps!r} (training normalizes with batch statistics, and a "
            f"constant channel has variance 0)")
    if eps < 0.0:
        raise InvalidArgument(f"batch_norm eps must be non-negative, but got {eps}: Expected "
                              f"eps >= 0.0, received eps={eps!r}")


def _values_per_channel(input: Tensor) -> int:
    """N times the spatial size: what torch checks (``_verify_batch_size``), C not included."""
    return input.shape[0] * math.prod(input.shape[2:])


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    compiled: bool = False,
) -> Tensor:
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    >>> import torch, bncheck
    >>> x = torch.randn(8, 3, 4, 4)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = bncheck.batch_norm(x, rm, rv, training=True)
    >>> bool(torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5))
    True

    Args:
        input: ``(N, C, *)`` floating tensor of 2 or more dims (or an empty 1-dim tensor,
            returned as torch returns it). In training, an empty batch gives an
            empty output and leaves the running statistics unchanged (as torch does).
        running_mean, running_var: ``(C,)`` statistics. In training they are updated in place
            (when given) with ``new = (1 - momentum) * old + momentum * batch``, the running
            variance from the *unbiased* batch variance; in eval they normalize the input.
        weight, bias: optional ``(C,)`` affine parameters.
        training: normalize with batch statistics (biased variance) and update the running ones.
        momentum: weight of the batch statistic in the update (a number; like torch, its
            range is not checked).
        eps: added to the variance inside the square root; ``>= 0``, and ``> 0`` in training
            (checked here, with torch's wording).
        compiled: compute training mode with ``torch.compile``-generated kernels (faster on
            large inputs once compiled; the first call per dtype and rank compiles for seconds).
            Eval mode, and training under ``torch.inference_mode``, run the eager kernels.

    Returns:
        A tensor of the input's shape, dtype and memory layout.

    Raises:
        InvalidArgument: under 2 dims, one value per channel in training, bad ``eps``
            (``ValueError``, as torch).
        InvalidInput: a statistic or parameter without one value per channel, running
            statistics missing in eval (also a ``RuntimeError``, as torch's).
        InvalidArgumentType: non-tensor or non-floating input, a non-number
            ``eps``/``momentum``.

    docs/reference.md lists what of torch's contract is matched and what is not.
    """
    _check_input(input)
    if training and input.dim() >= 2 and _values_per_channel(input) == 1:
        raise InvalidArgument(
            "Expected more than 1 value per channel when training, "
            f"got input size {input.shape}"
        )
    _check_eps(eps, training)
    _check_number(momentum, "momentum")
    if input.dim() == 1:  # empty (checked above): torch returns it as it is
        return input.clone()
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if not training and t is None:
            raise InvalidInput(f"{name} must be defined in evaluation mode "
                               f"(received {name}=None with training=False)")
        _check_channel_tensor(t, name, channels)
    for name, t in (("weight", weight), ("bias", bias)):
        _check_channel_tensor(t, name, channels)
    if not training:
        assert running_mean is not None and running_var is not None
        return _kernels.eval_forward(input, running_mean, running_var, weight, bias, eps)

    if input.numel() == 0:
        return _empty_batch(input, weight, bias)
    stats = None if running_mean is None and running_var is None else (
        running_mean, running_var, momentum)
    return _kernels.train(input, weight, bias, eps, stats, compiled=compiled)


def _empty_batch(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An empty output, still connected to ``weight`` and ``bias`` (their gradients are zeros,
    as torch's are)."""
    y = input.to(compute_dtype(input.dtype), copy=True)
    view = [1, input.shape[1]] + [1] * (input.dim() - 2)
    if weight is not None:
        y = y * weight.view(view)
    if bias is not None:
        y = y + bias.view(view)
    return y.to(input.dtype)


class BatchNorm(nn.Module):
    """A BatchNorm module for ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``.

    >>> import torch, bncheck
    >>> bn = bncheck.BatchNorm(3)
    >>> y = bn(torch.randn(4, 3, 5, 5))       # train mode: batch statistics, stats updated
    >>> int(bn.num_batches_tracked)
    1
    >>> _ = bn.eval()(torch.randn(1, 3, 5, 5))  # eval mode: running statistics, batch of 1 is fine

    The mode comes from ``self.training`` only. The signature, buffers and parameters are those
    of torch 2.13's ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so state dicts load either way.

    Args:
        num_features: C, the channel count.
        eps: added to the variance inside the square root; checked at the forward, as torch
            checks it (``>= 0``, and ``> 0`` where batch statistics are used).
        momentum: weight of the batch statistic in the running update; ``None`` keeps a
            cumulative (equal-weight) average over all batches seen.
        affine: learn a per-channel ``weight`` (and ``bias``, unless ``bias=False``).
        track_running_stats: keep running statistics; when False, eval mode also
            normalizes with batch statistics (as torch does).
        device, dtype: of the parameters and buffers.
        bias: with ``affine``, learn a ``bias`` too (torch 2.13's keyword).
        compiled: compute training mode with ``torch.compile`` (see :func:`batch_norm`).
    """

    _version = 2
    #: An empty batch is valid input (as for torch's classes): ``bncheck verify`` runs its
    #: ``empty_batch`` property on the reference without being told.
    accepts_empty_batches = True
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None
    #: The ranks ``bncheck verify`` draws for this class.
    _allowed_dims: tuple[int, ...] = (2, 3, 4, 5)
    #: The ranks the forward accepts (torch's ``_check_input_dim``); None: any rank
    #: ``F.batch_norm`` accepts (2 and more, and an empty 1-dim tensor).
    _checked_dims: tuple[int, ...] | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        # As torch: num_features is checked here (torch's own errors: TypeError, RuntimeError),
        # eps and momentum where they are used (eps at the forward, momentum nowhere).
        check_type(int, num_features, "num_features")
        if num_features < 0:
            raise InvalidInput(f"Expected num_features >= 0, received num_features="
                               f"{num_features!r} (torch: negative dimension)")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.compiled = bool(compiled)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
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
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}"
                + (", compiled=True" if self.compiled else ""))

    def _check_input_dim(self, input: Tensor) -> None:
        """torch's ``_check_input_dim`` of ``nn.BatchNorm{1,2,3}d`` (its wording, a
        ``ValueError``); the generic class leaves ranks to :func:`batch_norm`, as torch's
        ``F.batch_norm`` does. Channels are checked by :func:`batch_norm` (torch's
        ``RuntimeError``), against whichever of the statistics and parameters exist."""
        _check_input(input)
        if self._checked_dims is not None and input.dim() not in self._checked_dims:
            want = " or ".join(f"{d}D" for d in self._checked_dims)
            raise InvalidArgument(
                f"expected {want} input (got {input.dim()}D input): received input of shape "
                f"{tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)  # a buffer: autograd records nothing here
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        args = (input, self.running_mean if track else None,
                self.running_var if track else None, self.weight, self.bias, use_batch_stats,
                factor, self.eps)
        return batch_norm(*args, compiled=True) if self.compiled else batch_norm(*args)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # As torch: a checkpoint from before num_batches_tracked existed (version < 2), or
            # one with no version (load_state_dict({}, strict=False)), keeps the current count
            # (0 for a meta-device module).
            nbt = self.num_batches_tracked
            state_dict[key] = (nbt if nbt is not None and nbt.device != torch.device("meta")
                               else torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C)`` and ``(N, C, L)``, as ``nn.BatchNorm1d``."""

    _allowed_dims = _checked_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C, H, W)``, as ``nn.BatchNorm2d``."""

    _allowed_dims = _checked_dims = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` restricted to ``(N, C, D, H, W)``, as ``nn.BatchNorm3d``."""

    _allowed_dims = _checked_dims = (5,)
