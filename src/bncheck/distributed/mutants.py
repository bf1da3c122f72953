"""Buggy synchronised BatchNorms, each with one realistic defect, to prove the distributed
properties have teeth.

>>> from bncheck.distributed.mutants import MUTANTS
>>> MUTANTS["local_bessel"].killer
'sync_running_stats'

Each mutant is :class:`CleanSync` (a correct synchronised BatchNorm written the other common
way: two differentiable all-reduces, of ``(count, sum(x))`` and of ``sum((x - mean)**2)``)
with one step overridden. :func:`run_mutants` runs the distributed catalogue against each on
one set of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bncheck.engine.mutants import Mutant, MutantResult, judge
from bncheck.reference import batch_norm, compute_dtype, reduction_dims

__all__ = ["CleanSync", "MUTANTS", "run_mutants"]


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


class _AllReduce(torch.autograd.Function):
    """Sum over ``group``; the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        out = grad.clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


class CleanSync(nn.Module):
    """A correct synchronised BatchNorm (torch convention, affine, tracking running statistics);
    the mutants override one step of it."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 process_group: Any | None = None) -> None:
        super().__init__()
        self.eps, self.momentum, self.process_group = eps, momentum, process_group
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    # -- the steps a mutant overrides -------------------------------------------------------
    def group(self) -> Any:
        return self.process_group or dist.group.WORLD

    def all_reduce(self, t: Tensor) -> Tensor:
        """A differentiable sum over the group (its backward all-reduces the gradient)."""
        out: Tensor = _AllReduce.apply(t, self.group())
        return out

    def global_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Global mean, biased variance and count, two-pass over the group."""
        dims = reduction_dims(x.dim())
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = self.all_reduce(torch.cat([count, x.sum(dim=dims)]))
        n, mean = totals[0], totals[1:] / totals[0]
        var = self.all_reduce((x - _view(mean, x)).square().sum(dim=dims)) / n
        return mean, var, n

    def update(self, x: Tensor, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """Blend the global statistics into the running ones (unbiased, global count)."""
        self.blend(mean, var * (n / (n - 1)))

    def blend(self, mean: Tensor, unbiased: Tensor) -> None:
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.copy_(self.running_mean * (1 - m) + m * mean.detach())
            self.running_var.copy_(self.running_var * (1 - m) + m * unbiased.detach())

    def eval_forward(self, input: Tensor) -> Tensor:
        return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                          False, 0.0, self.eps)

    def synchronised(self) -> bool:
        return (self.training and dist.is_initialized()
                and dist.get_world_size(self.group()) > 1)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return self.eval_forward(input)
        if not self.synchronised():
            with torch.no_grad():
                self.num_batches_tracked += 1
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            return batch_norm(input, self.running_mean, self.running_var, self.weight,
                              self.bias, True, m, self.eps)
        x = input.to(compute_dtype(input.dtype))
        mean, var, n = self.global_stats(x)
        self.update(x, mean, var, n)
        y = (x - _view(mean, x)) / torch.sqrt(_view(var, x) + self.eps)
        return (y * _view(self.weight, x) + _view(self.bias, x)).to(input.dtype)


def _local_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dims = reduction_dims(x.dim())
    n = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype)
    mean = x.mean(dim=dims)
    return mean, (x - _view(mean, x)).square().mean(dim=dims), n


class UnweightedMean(CleanSync):
    def global_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dims = reduction_dims(x.dim())
        ones = torch.ones(1, dtype=x.dtype, device=x.device)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = self.all_reduce(torch.cat([ones, count, x.mean(dim=dims)]))
        mean = totals[2:] / totals[0]  # the mean of the rank means
        var = self.all_reduce((x - _view(mean, x)).square().sum(dim=dims)) / totals[1]
        return mean, var, totals[1]


class LocalBessel(CleanSync):
    def update(self, x: Tensor, mean: Tensor, var: Tensor, n: Tensor) -> None:
        local = torch.tensor(float(x.numel() // x.shape[1]), dtype=var.dtype)
        self.blend(mean, var * (local / (local - 1)))


class LocalRunningStats(CleanSync):
    def update(self, x: Tensor, mean: Tensor, var: Tensor, n: Tensor) -> None:
        local_mean, local_var, local = _local_stats(x.detach())
        self.blend(local_mean, local_var * (local / (local - 1)))


class BackwardNoAllReduce(CleanSync):
    def all_reduce(self, t: Tensor) -> Tensor:
        total = t.detach().clone()
        dist.all_reduce(total, group=self.group())
        return t + (total - t.detach())  # forward: global sums; backward: local only


class ParamGradAllReduced(CleanSync):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 process_group: Any | None = None) -> None:
        super().__init__(num_features, eps, momentum, process_group)
        for p in (self.weight, self.bias):
            p.register_hook(self._sum_over_ranks)

    def _sum_over_ranks(self, grad: Tensor) -> Tensor:
        if not dist.is_initialized():
            return grad
        total = grad.clone()
        dist.all_reduce(total, group=self.group())
        return total


class Float16AllReduce(CleanSync):
    wire = torch.float32

    def forward(self, input: Tensor) -> Tensor:
        self.wire = input.dtype  # "send 16-bit inputs' sums in 16 bits: half the traffic"
        return super().forward(input)

    def all_reduce(self, t: Tensor) -> Tensor:
        if self.wire in (torch.float16, torch.bfloat16):
            return super().all_reduce(t.to(self.wire)).to(t.dtype)
        return super().all_reduce(t)


class EvalAllReduce(CleanSync):
    def eval_forward(self, input: Tensor) -> Tensor:
        if dist.is_initialized() and dist.get_world_size(self.group()) > 1:
            with torch.no_grad():  # "keep the ranks' statistics in step"
                stats = torch.cat([self.running_mean, self.running_var])
                dist.all_reduce(stats, group=self.group())
                k = dist.get_world_size(self.group())
                c = self.running_mean.numel()
                self.running_mean.copy_(stats[:c] / k)
                self.running_var.copy_(stats[c:] / k)
        return super().eval_forward(input)


class EmptyRankSkips(CleanSync):
    def forward(self, input: Tensor) -> Tensor:
        if self.training and input.shape[0] == 0:
            return input.clone()  # "nothing to normalise"
        return super().forward(input)


class IgnoresProcessGroup(CleanSync):
    def group(self) -> Any:
        return dist.group.WORLD


def _m(name: str, factory: Callable[..., nn.Module], defect: str, killer: str
       ) -> tuple[str, Mutant]:
    return name, Mutant(name, factory, defect, killer)


MUTANTS: dict[str, Mutant] = dict([
    _m("unweighted_mean", UnweightedMean,
       "global mean = unweighted mean of the rank means (wrong for uneven batches)",
       "sync_forward"),
    _m("local_bessel", LocalBessel,
       "running variance made unbiased with the local count n_r/(n_r-1), not n/(n-1)",
       "sync_running_stats"),
    _m("local_running_stats", LocalRunningStats,
       "running statistics updated from the local batch (ranks drift apart)",
       "sync_running_stats"),
    _m("backward_no_allreduce", BackwardNoAllReduce,
       "backward does not all-reduce the weight/bias gradient sums sum(dy), sum(dy*(x-mean)) "
       "used by the input gradient", "sync_input_grad"),
    _m("param_grad_allreduced", ParamGradAllReduced,
       "weight/bias gradients all-reduced in the layer (DDP sums them again)",
       "sync_param_grad"),
    _m("float16_allreduce", Float16AllReduce,
       "16-bit inputs: the sums are all-reduced in the input dtype (float16 overflows)",
       "sync_reduced_precision"),
    _m("eval_allreduce", EvalAllReduce,
       "eval all-reduces the running statistics (deadlock with uneven eval batches)",
       "sync_eval"),
    _m("empty_rank_skips", EmptyRankSkips,
       "a rank with an empty batch skips the collectives (the others hang)", "sync_uneven"),
    _m("ignores_process_group", IgnoresProcessGroup,
       "process_group ignored: statistics over the whole world", "sync_subgroups"),
])


def run_mutants(names: Sequence[str] | None = None, *, world_size: int, profile: str = "ci",
                examples: int | None = None, seed: int = 0, timeout: float | None = None,
                every_property: bool = False,
                on_result: Callable[[MutantResult], None] | None = None) -> list[MutantResult]:
    """Run each mutant (without shrinking) against the distributed property meant to kill it,
    the rest of the catalogue only when it survives (:func:`bncheck.engine.mutants.meant_first`;
    ``every_property``: all of it), on one set of ``world_size`` ranks started once."""
    from bncheck.distributed.launcher import DEFAULT_TIMEOUT, WorkerPool
    from bncheck.distributed.properties import names as catalogue
    from bncheck.distributed.verify import target_spec, verify_distributed
    from bncheck.infra.validation import check_timeout, unknown_name

    chosen = list(MUTANTS) if not names else list(names)
    unknown = [n for n in chosen if n not in MUTANTS]
    if unknown:
        raise unknown_name("distributed mutant", unknown[0], MUTANTS)
    results = []
    check_timeout(timeout)
    with WorkerPool(world_size, timeout=DEFAULT_TIMEOUT if timeout is None else timeout
                    ) as pool:
        for name in chosen:
            m = MUTANTS[name]

            def verify_some(properties: list[str] | None, m: Mutant = m) -> list[Any]:
                return verify_distributed(target_spec(m.factory), world_size=world_size,
                                          pool=pool, label=m.name,
                                          declaration=m.declaration, properties=properties,
                                          profile=profile, examples=examples, seed=seed,
                                          shrink=False).results

            results.append(judge(m, verify_some, catalogue(), every_property=every_property,
                                 on_result=on_result))
    return results
