"""The distributed property catalogue: N ranks against one float64 oracle on the global batch.

>>> from bncheck.distributed.properties import CATALOGUE
>>> [p.name for p in CATALOGUE][:3]
['sync_forward', 'sync_running_stats', 'sync_input_grad']

Every property draws the world size (2 to N), the split of the global batch over the ranks,
the shape, dtype and configuration, has each rank run its rows, and compares each rank with
the oracle on the concatenated batch of its process group.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.distributed._base import (
    REGISTRY,
    SyncContext,
    SyncProperty,
    expect_input_grads,
    expect_outputs,
    expect_param_grads,
    expect_stats,
    per_block,
    register,
    train_steps,
    upstream_gradient,
)
from bncheck.distributed._worker import Step
from bncheck.distributed.cases import SyncCase, splits, splits_with_empty
from bncheck.engine import oracle
from bncheck.engine.adapter import PropertyFailure
from bncheck.engine.properties._base import check_output, expect_close, stat_values
from bncheck.engine.properties._tolerance import forward_tolerance
from bncheck.engine.strategies import dtype_name
from bncheck.infra.validation import unknown_name

__all__ = ["CATALOGUE", "names", "get"]


def _cases(ctx: SyncContext, *, min_size: int = 1, empty: bool = False,
           partition: bool = False, training: bool = True, reduced: bool = False,
           track_running_stats: bool | None = None, affine: bool = False,
           ) -> st.SearchStrategy[SyncCase]:
    """Sync cases: world size, global case, split (``min_size`` rows per rank, or one empty
    rank), process groups (one, or a drawn partition of all ranks) and running statistics."""
    base = ctx.base
    configs = base.configs(track_running_stats=track_running_stats)
    if affine:
        configs = configs.map(lambda c: dataclasses.replace(c, affine=True))
    dtypes = base.reduced_dtypes if reduced else base.full_dtypes
    n = ctx.max_world_size

    # Strategies are built once per world size and per (batch, channels), not once per draw:
    # building and validating them inside flatmap dominated the cost of each example.
    def for_world(k: int) -> st.SearchStrategy[SyncCase]:
        blocks = (st.sampled_from(ctx.pool.partitions) if partition
                  else st.just((tuple(range(k)),)))
        low = max(2, k * min_size)
        cases = base.cases(dtypes=dtypes, training=training, grad_modes=["enabled"],
                           configs=configs, min_batch=low, max_batch=max(low, 3 * k))

        @functools.cache
        def extras(batch: int, channels: int) -> st.SearchStrategy[Any]:
            sizes = (splits_with_empty(batch, k) if empty
                     else splits(batch, k, min_size=min_size))
            return st.tuples(sizes, blocks, stat_values(channels))

        return cases.flatmap(lambda c: extras(c.shape[0], c.num_features).map(
            lambda e: SyncCase(c, *e)))
    if partition:
        return for_world(n)
    worlds = {k: for_world(k) for k in range(2, n + 1)} if ctx.groups else {n: for_world(n)}
    return ctx.world_sizes().flatmap(worlds.__getitem__)


def _train(ctx: SyncContext, sc: SyncCase, *, backward: bool, hint: str = ""
           ) -> tuple[list[Any], dict[int, Any], Tensor]:
    grad = upstream_gradient(sc.case.shape)
    results = ctx.run(sc, train_steps(sc, grad if backward else None), hint=hint)
    return results, per_block(sc, grad), grad


@register(
    1, "sync_forward",
    checks="each rank's training output equals its rows of the oracle output for the "
           "concatenated global batch (even and uneven splits)",
    catches="an unweighted mean of the rank means, local statistics, statistics over the "
            "wrong group, exceptions or wrong output shapes on a rank",
    tolerance="forward_tolerance for a reduction over the global batch (its n), x8",
    cases=lambda ctx: _cases(ctx),
)
def sync_forward(ctx: SyncContext, sc: SyncCase) -> None:
    results, expected, _ = _train(ctx, sc, backward=False)
    expect_outputs(sc, results, expected)


def _stats_cases(ctx: SyncContext) -> st.SearchStrategy[SyncCase]:
    return _cases(ctx, track_running_stats=True)


@register(
    2, "sync_running_stats",
    checks="after two training steps the running mean and variance on every rank equal the "
           "update with the global batch statistics (unbiased with the global count), are "
           "identical on all ranks, and num_batches_tracked counts the steps",
    catches="Bessel's correction with the local count, running statistics from the local "
            "batch, statistics that differ between ranks",
    tolerance="stats_tolerance over the global batch, x8; identical: bitwise",
    cases=_stats_cases,
)
def sync_running_stats(ctx: SyncContext, sc: SyncCase) -> None:
    second = dataclasses.replace(sc, case=dataclasses.replace(
        sc.case, x=(sc.case.x.to(torch.float64) * 1.5 + 1.0).to(sc.case.dtype)))
    first_x, second_x = sc.rank_inputs(), second.rank_inputs()

    def steps(rank: int, x: Tensor) -> tuple[Step, ...]:
        return (Step(True, first_x[rank]), Step(True, second_x[rank]))

    results = ctx.run(sc, steps)
    grad = upstream_gradient(sc.case.shape)
    expect_stats(ctx, sc, results, per_block(sc, grad), step=0)
    expect_stats(ctx, second, results, per_block(second, grad), step=1)
    for r, res in enumerate(results):
        counts = [s.count for s in res.steps]
        if counts[0] is not None and counts[1] is not None and counts[1] != counts[0] + 1:
            raise PropertyFailure(f"rank {r}: num_batches_tracked went from {counts[0]} to "
                                  f"{counts[1]} in one training step")


@register(
    3, "sync_input_grad",
    checks="each rank's input gradient equals its rows of the gradient of the global batch "
           "(backward of sum(y * g) with a fixed upstream gradient g)",
    catches="a backward that does not all-reduce sum(dy) and sum(dy * (x - mean)) (the "
            "per-rank bias and weight gradient sums): the local gradient of the local "
            "statistics",
    tolerance="gradient_tolerances over the global batch, x8",
    cases=lambda ctx: _cases(ctx),
)
def sync_input_grad(ctx: SyncContext, sc: SyncCase) -> None:
    results, expected, grad = _train(ctx, sc, backward=True)
    expect_outputs(sc, results, expected)
    expect_input_grads(sc, results, expected, grad)


@register(
    4, "sync_param_grad",
    checks="each rank's weight and bias gradients are its share of the global ones (the sum "
           "over its rows, as torch.nn.SyncBatchNorm), and the shares add up to the global "
           "weight and bias gradients",
    catches="weight/bias gradients all-reduced inside the layer (data-parallel training then "
            "sums them again: N times too large), gradients from local statistics",
    tolerance="gradient_tolerances over the global batch, x8",
    cases=lambda ctx: _cases(ctx, affine=True),
)
def sync_param_grad(ctx: SyncContext, sc: SyncCase) -> None:
    results, expected, grad = _train(ctx, sc, backward=True)
    expect_param_grads(sc, results, expected, grad)


_EVAL_HINT = ("In eval mode rank 0 ran two forwards and the other ranks one: a BatchNorm must not "
              "communicate in eval (torch.nn.SyncBatchNorm synchronises only in training); a "
              "collective in eval deadlocks when ranks see different numbers of eval batches.")


@register(
    5, "sync_eval",
    checks="in eval mode no rank communicates (rank 0 runs one more forward than the others) "
           "and each rank's output equals single-process eval of its rows: running statistics, "
           "or its own batch statistics without them; the statistics stay unchanged",
    catches="collectives in eval (deadlock with uneven eval loaders), batch statistics or "
            "synchronised statistics in eval, statistics updated in eval",
    tolerance="forward_tolerance with n=1 (running statistics) or the rank's own n, x8",
    cases=lambda ctx: _cases(ctx, min_size=2),
)
def sync_eval(ctx: SyncContext, sc: SyncCase) -> None:
    def steps(rank: int, x: Tensor) -> tuple[Step, ...]:
        return (Step(False, x),) * (2 if rank == 0 else 1)

    results = ctx.run(sc, steps, hint=_EVAL_HINT)
    c = sc.case
    w, b = (c.weight, c.bias) if c.config.affine else (None, None)
    for r, (res, x) in enumerate(zip(results, sc.rank_inputs(), strict=True)):
        for i, step in enumerate(res.steps):
            check_output(step.y, x, f"rank {r} eval output")
            if res.installed is not None and c.config.track_running_stats:
                mean, var = res.installed
                tol = forward_tolerance(x, mean, var, eps=c.config.eps, n=1, weight=w, bias=b,
                                        dtype=c.dtype)
                why = "running statistics"
            else:
                mean, var = oracle.batch_stats(x)
                tol = forward_tolerance(x, mean, var, eps=c.config.eps, weight=w, bias=b,
                                        dtype=c.dtype)
                why = "its own batch statistics (no running statistics)"
            expected = oracle.normalize(x, mean, var, eps=c.config.eps, weight=w, bias=b)
            expect_close(step.y, expected, tol,
                         f"rank {r} eval output{' (second forward)' if i else ''} vs. "
                         f"single-process eval with {why}")
            if res.installed is not None and step.stats is not None and not (
                    torch.equal(step.stats[0], res.installed[0])
                    and torch.equal(step.stats[1], res.installed[1])):
                raise PropertyFailure(
                    f"rank {r}: an eval forward changed the running statistics (eval must only "
                    f"read them)\nbefore: {[t.tolist() for t in res.installed]}\n"
                    f"after:  {[t.tolist() for t in step.stats]}")


@register(
    6, "sync_uneven",
    checks="with at least one rank holding an empty batch: outputs, running statistics on "
           "every rank (the empty one too), input gradients and weight/bias gradients equal "
           "the global ones",
    catches="a rank with an empty batch that skips the collectives (the others hang), "
            "contributes a count of 1 or a nan mean, or keeps its statistics",
    tolerance="as sync_forward, sync_running_stats, sync_input_grad, sync_param_grad",
    cases=lambda ctx: _cases(ctx, empty=True, track_running_stats=True),
)
def sync_uneven(ctx: SyncContext, sc: SyncCase) -> None:
    empty = [r for r, n in enumerate(sc.sizes) if n == 0]
    results, expected, grad = _train(
        ctx, sc, backward=True,
        hint=f"Rank(s) {empty} had an empty batch: they must still join every collective "
             f"(torch.nn.SyncBatchNorm all-gathers a zero count, and all-reduces zeros in "
             f"backward).")
    expect_outputs(sc, results, expected)
    expect_stats(ctx, sc, results, expected)
    expect_input_grads(sc, results, expected, grad)
    expect_param_grads(sc, results, expected, grad)


def _needs_groups(ctx: SyncContext) -> str | None:
    if not ctx.groups:
        return ("the target's constructor takes no process_group: every case uses all "
                f"{ctx.max_world_size} ranks")
    return None


@register(
    7, "sync_subgroups",
    checks="ranks split into independent process groups (halves, even/odd ranks) each "
           "synchronise only within their group: outputs, running statistics and input "
           "gradients equal the oracle on the group's batch",
    catches="process_group ignored (statistics over the whole world), ranks indexed globally "
            "instead of within the group",
    tolerance="as sync_forward, sync_running_stats and sync_input_grad, per group",
    cases=lambda ctx: _cases(ctx, partition=True, min_size=2, track_running_stats=True),
    requires=_needs_groups,
)
def sync_subgroups(ctx: SyncContext, sc: SyncCase) -> None:
    results, expected, grad = _train(ctx, sc, backward=True)
    expect_outputs(sc, results, expected)
    expect_stats(ctx, sc, results, expected)
    expect_input_grads(sc, results, expected, grad)


def _needs_reduced(ctx: SyncContext) -> str | None:
    if not ctx.base.reduced_dtypes:
        return ("needs float16 or bfloat16; requested dtypes: "
                + ", ".join(dtype_name(d) for d in ctx.base.dtypes))
    return None


@register(
    8, "sync_reduced_precision",
    checks="float16/bfloat16 modules and inputs: each rank's output has the input dtype, is "
           "finite where the oracle is, and is close to it; running statistics close to the "
           "global update where they fit the statistics' dtype",
    catches="statistics or collectives in 16 bits (float16 sums of squares overflow, "
            "bfloat16 sums lose digits), outputs promoted to float32",
    tolerance="forward_tolerance with float32 accumulation and 16-bit output rounding, x8",
    cases=lambda ctx: _cases(ctx, reduced=True, track_running_stats=True),
    requires=_needs_reduced,
)
def sync_reduced_precision(ctx: SyncContext, sc: SyncCase) -> None:
    results, expected, _ = _train(ctx, sc, backward=False)
    for r, res in enumerate(results):
        exp, where = expected[r]
        y = res.steps[0].y
        want = exp.y[where]
        bad = torch.isfinite(want.to(sc.case.dtype)) & ~torch.isfinite(y.to(torch.float64))
        if bool(bad.any()):
            raise PropertyFailure(
                f"rank {r} {dtype_name(sc.case.dtype)} training output: {int(bad.sum())} / "
                f"{bad.numel()} values are inf or nan where the oracle is finite (first at "
                f"index {tuple(int(i) for i in bad.nonzero()[0])}); the largest |x| in the "
                f"global batch is {float(exp.x.abs().max()):g}")
    expect_outputs(sc, results, expected, what=f"{dtype_name(sc.case.dtype)} training output")
    expect_stats(ctx, sc, results, expected, representable_only=True)


#: Every distributed property, in catalogue order.
CATALOGUE: tuple[SyncProperty, ...] = tuple(sorted(REGISTRY.values(), key=lambda p: p.number))


def names() -> list[str]:
    """The distributed property names in catalogue order."""
    return [p.name for p in CATALOGUE]


def get(name: str) -> SyncProperty:
    """The distributed property ``name``; :class:`~bncheck.errors.InvalidArgument` lists them."""
    if name not in REGISTRY:
        raise unknown_name("distributed property", name, names())
    return REGISTRY[name]

