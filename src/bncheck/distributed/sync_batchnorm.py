"""The reference synchronised BatchNorm: ``torch.nn.SyncBatchNorm``'s semantics on any device and
any ``torch.distributed`` backend, gloo on CPU included.

>>> import torch, bncheck
>>> bn = bncheck.SyncBatchNorm(3)       # no process group initialised: plain BatchNorm
>>> y = bn(torch.randn(4, 3, 5, 5))
>>> int(bn.num_batches_tracked)
1

In training, inside an initialised process group of more than one rank, every rank all-gathers
its per-channel ``(mean, biased variance, count)`` and combines them weighted by the counts
(Chan's parallel formula: ``mean = sum(n_r * mean_r) / n``, ``var = sum(n_r * (var_r +
(mean_r - mean)**2)) / n``), so the statistics are those of the concatenated global batch even
when per-rank batches are uneven or empty. The running variance moves toward the *unbiased*
global variance ``var * n / (n - 1)`` with the global count ``n``. The backward all-reduces the
per-channel sums ``sum(dy)`` and ``sum(dy * (x - mean))`` so that each rank's input gradient is
its slice of the global one. As in torch, the weight and bias gradients stay per-rank (each
rank's share of the global gradient): data-parallel training all-reduces parameter gradients.

Written from the formula in plain torch ops (no ``torch.batch_norm_*`` kernels); float16 and
bfloat16 inputs are reduced in float32. Without an initialised process group, in eval mode, and
for a process group of one rank it is :class:`bncheck.BatchNorm`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bncheck.errors import InvalidArgument, InvalidArgumentType
from bncheck.infra.validation import check_type
from bncheck.reference import BatchNorm, compute_dtype, reduction_dims

__all__ = ["SyncBatchNorm"]


def _check_process_group(group: Any) -> None:
    """``None`` (the default group) or a ``torch.distributed`` process group."""
    kind = getattr(dist, "ProcessGroup", object)  # absent where torch has no distributed
    if group is not None and not isinstance(group, kind):
        raise InvalidArgumentType(f"Expected process_group to be None or a torch.distributed "
                                  f"process group (dist.new_group(...)), received "
                                  f"process_group={group!r}")


def _view(v: Tensor, ndim: int) -> Tensor:
    return v.reshape([1, -1] + [1] * (ndim - 2))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode synchronised batch norm over ``group`` (``world_size`` ranks, > 1)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, eps: float,
                momentum: float, group: Any, world_size: int) -> Tensor:
        channels, nd = input.shape[1], input.dim()
        cdtype = compute_dtype(input.dtype)
        x = input.to(cdtype)
        count = input.numel() // channels
        dims = reduction_dims(nd)
        if count > 0:
            mean_r = x.mean(dim=dims)
            var_r = (x - _view(mean_r, nd)).square().mean(dim=dims)  # biased, two-pass
        else:  # an empty batch still joins the collective, with weight 0
            mean_r = var_r = torch.zeros(channels, dtype=cdtype, device=input.device)
        local = torch.cat([mean_r, var_r, torch.full((1,), float(count), dtype=cdtype,
                                                       device=input.device)])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        table = torch.stack(gathered)
        means, variances = table[:, :channels], table[:, channels:2 * channels]
        counts = table[:, 2 * channels:]
        total = float(counts.sum())
        if total <= 1:
            per_rank = [int(c) for c in counts.flatten().tolist()]
            raise InvalidArgument(
                f"Expected more than 1 value per channel across the process group when "
                f"training, got {int(total)} in total (values per channel on each rank: "
                f"{per_rank})")
        mean = (counts * means).sum(dim=0) / total
        var = (counts * (variances + (means - mean).square())).sum(dim=0) / total
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype),
                                                       alpha=momentum)
            if running_var is not None:
                unbiased = var * (total / (total - 1))  # the global count
                running_var.copy_(running_var.to(cdtype) * (1.0 - momentum)
                                  + unbiased * momentum)
        y = (x - _view(mean, nd)) * _view(invstd, nd)
        if weight is not None:
            y = y * _view(weight.to(cdtype), nd)
        if bias is not None:
            y = y + _view(bias.to(cdtype), nd)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.group, ctx.total = group, total
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        channels, nd = input.shape[1], input.dim()
        cdtype = mean.dtype
        dims = reduction_dims(nd)
        g = grad_output.to(cdtype)
        xmu = input.to(cdtype) - _view(mean, nd)
        if input.numel() > 0:
            sum_dy = g.sum(dim=dims)
            sum_dy_xmu = (g * xmu).sum(dim=dims)
        else:
            sum_dy = sum_dy_xmu = torch.zeros(channels, dtype=cdtype, device=input.device)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Every rank's input gradient needs the global sums; an empty rank joins with zeros.
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            mean_dy, mean_dy_xmu = sums[:channels] / ctx.total, sums[channels:] / ctx.total
            scale = invstd if weight is None else invstd * weight.to(cdtype)
            grad_input = ((g - _view(mean_dy, nd) - xmu * _view(invstd.square() * mean_dy_xmu,
                                                                  nd))
                          * _view(scale, nd)).to(input.dtype)
        # The weight and bias gradients are this rank's share (as torch.nn.SyncBatchNorm):
        # data-parallel training sums them over ranks with the other parameters' gradients.
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(BatchNorm):
    """A synchronised BatchNorm, drop-in for ``torch.nn.SyncBatchNorm``, that runs on CPU.

    >>> import torch, bncheck
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    >>> net = bncheck.SyncBatchNorm.convert_sync_batchnorm(net)
    >>> type(net[1]).__name__
    'SyncBatchNorm'

    In each of ``N`` processes of a gloo group (``torch.distributed.init_process_group("gloo",
    ...)``), ``bn(x_rank)`` then normalises with the statistics of the concatenated global batch.

    Args:
        num_features: C, the channel count.
        eps, momentum, affine, track_running_stats: as :class:`bncheck.BatchNorm`.
        process_group: the group whose ranks share statistics (default: the whole world).
        device, dtype: of the parameters and buffers.
        bias: keyword-only; ``False`` learns a weight but no bias (torch >= 2.x's ``bias``).

    Raises:
        InvalidArgument: as :class:`bncheck.BatchNorm`; in synchronised training, also when the
            whole group holds at most one value per channel (every rank raises it).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        if affine and not bias:
            self.register_parameter("bias", None)
        _check_process_group(process_group)
        self.process_group = process_group

    def reset_parameters(self) -> None:
        """Reset the statistics, weight to 1 and bias (if any) to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _sync_group(self) -> tuple[Any, int] | None:
        """The process group and its size when this forward synchronises, else None."""
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return None
        group = self.process_group or dist.group.WORLD
        world_size = dist.get_world_size(group)
        return (group, world_size) if world_size > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        sync = self._sync_group()
        if sync is None:  # eval, one rank, or no process group: no communication
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average
                factor = 1.0 / float(self.num_batches_tracked)
        running = ((self.running_mean, self.running_var) if self.track_running_stats
                   else (None, None))
        out: Tensor = _SyncBatchNormFunction.apply(input, self.weight, self.bias, *running,
                                                   self.eps, factor, *sync)
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any | None = None
                               ) -> nn.Module:
        """Replace every BatchNorm in ``module`` (torch's ``_BatchNorm`` subclasses, including
        ``torch.nn.SyncBatchNorm``, and :class:`bncheck.BatchNorm`) by a :class:`SyncBatchNorm`
        sharing its parameters and buffers, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``.

        Returns:
            ``module`` with its BatchNorms replaced, or a new :class:`SyncBatchNorm` when
            ``module`` itself is one.

        Raises:
            InvalidArgumentType: ``module`` is not a ``torch.nn.Module``, or ``process_group``
                not a process group.
        """
        check_type(nn.Module, module, "module")
        _check_process_group(process_group)
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm | BatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group,
                      bias=not module.affine or module.bias is not None)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
