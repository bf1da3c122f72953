"""What the distributed properties share: the context (target, pool of ranks), the registry, the
float64 expectation for a block's concatenated batch, and per-rank comparisons.

Each property draws a :class:`~bncheck.distributed.cases.SyncCase`, has the ranks run it, and
compares every rank with the float64 oracle (:mod:`bncheck.engine.oracle`) applied to the global
batch
of the rank's process group, with the single-process tolerance rules
(:mod:`bncheck.engine.properties._tolerance`) for a reduction over that global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.distributed._worker import RankResult, RankTask, Step
from bncheck.distributed.cases import SyncCase
from bncheck.distributed.launcher import RankFailure, WorkerPool
from bncheck.engine import oracle
from bncheck.engine.adapter import PropertyFailure
from bncheck.engine.compare import compare
from bncheck.engine.conventions import Convention
from bncheck.engine.properties import Context
from bncheck.engine.properties._base import check_output, expect_close
from bncheck.engine.properties._tolerance import (
    forward_tolerance,
    gradient_tolerances,
    stats_tolerance,
)
from bncheck.engine.strategies import dtype_name
from bncheck.errors import RankAbort

__all__ = ["SyncContext", "SyncProperty", "REGISTRY", "register", "RankAbort", "Expected",
           "expected_train", "upstream_gradient", "per_block", "train_steps", "expect_outputs",
           "expect_input_grads", "expect_param_grads", "expect_stats"]


@dataclass
class SyncContext:
    """A target under distributed verification and the running ranks.

    ``base`` is the single-process context (target and dtypes: configurations and cases are
    drawn as there); ``spec`` is how the ranks import the target; ``groups`` whether its
    constructor takes ``process_group`` (else every case uses all ranks).
    """

    base: Context
    spec: str
    pool: WorkerPool
    groups: bool
    examples: int = field(default=0)

    @property
    def max_world_size(self) -> int:
        return self.pool.world_size

    def world_sizes(self) -> st.SearchStrategy[int]:
        """World sizes to draw: 2 to N, or N for targets without a ``process_group``."""
        n = self.max_world_size
        return st.integers(2, n) if self.groups else st.just(n)

    def run(self, sc: SyncCase, steps: Callable[[int, Tensor], tuple[Step, ...]], *,
            hint: str = "") -> list[RankResult]:
        """Run ``steps(rank, rank_input)`` on each rank of ``sc``; the ranks' results.

        Raises:
            RankAbort: a rank died, hung or raised (``hint`` is added to the message).
        """
        c, cfg = sc.case, sc.case.config
        inputs = sc.rank_inputs()
        tasks: list[RankTask | None] = [None] * self.max_world_size
        for rank in range(sc.world_size):
            block = sc.group_of(rank)
            tasks[rank] = RankTask(
                self.spec, self.base.target.declaration, c.num_features, c.ndim, c.dtype,
                cfg.eps, cfg.momentum, cfg.affine, cfg.track_running_stats,
                None if len(block) == self.max_world_size else block,
                c.weight, c.bias, sc.stats, steps(rank, inputs[rank]))
        self.examples += 1
        try:
            answers = self.pool.run(tasks)
        except RankFailure as e:
            lines = [f"rank {r}: {why}" for r, why in e.failures.items()]
            raise RankAbort("\n".join(lines) + (f"\n{hint}" if hint else ""), sc) from None
        return answers[:sc.world_size]


@dataclass(frozen=True)
class SyncProperty:
    """A named distributed check: what it checks, the defect it catches, its tolerance."""

    number: int
    name: str
    checks: str
    catches: str
    tolerance: str
    cases: Callable[[SyncContext], st.SearchStrategy[Any]]
    run: Callable[[SyncContext, Any], None]
    requires: Callable[[SyncContext], str | None]

    def skip_reason(self, ctx: SyncContext) -> str | None:
        return self.requires(ctx)

    def describe(self, case: Any) -> str:
        return case.describe() if isinstance(case, SyncCase) else repr(case)

    def check(self, ctx: SyncContext, case: Any) -> None:
        """Run the property once on ``case``; raise ``PropertyFailure`` if it does not hold."""
        self.run(ctx, case)


REGISTRY: dict[str, SyncProperty] = {}


def _always(ctx: SyncContext) -> str | None:
    return None


def register(number: int, name: str, *, checks: str, catches: str, tolerance: str,
             cases: Callable[[SyncContext], st.SearchStrategy[Any]],
             requires: Callable[[SyncContext], str | None] = _always,
             ) -> Callable[[Callable[[SyncContext, Any], None]],
                           Callable[[SyncContext, Any], None]]:
    """Add the decorated ``run(ctx, case)`` to :data:`REGISTRY` as property ``name``."""

    def deco(run: Callable[[SyncContext, Any], None]) -> Callable[[SyncContext, Any], None]:
        REGISTRY[name] = SyncProperty(number, name, checks, catches, tolerance, cases, run,
                                      requires)
        return run

    return deco


# -- the float64 expectation for one block's global batch ---------------------------------------
def upstream_gradient(shape: tuple[int, ...] | torch.Size) -> Tensor:
    """A fixed, non-constant upstream gradient for an output of ``shape`` (float64)."""
    n = 1
    for s in shape:
        n *= int(s)
    return torch.cos(torch.arange(n, dtype=torch.float64) * 1.7).reshape(tuple(shape))


@dataclass(frozen=True)
class Expected:
    """The oracle on a block's concatenated batch (``raw``, in the case's dtype; ``x``, float64):
    statistics, output and gradients."""

    raw: Tensor
    x: Tensor
    mean: Tensor
    var: Tensor
    y: Tensor
    dx: Tensor
    dweight: Tensor | None
    dbias: Tensor | None
    xhat: Tensor


def expected_train(x: Tensor, grad: Tensor, *, eps: float, weight: Tensor | None,
                   bias: Tensor | None) -> Expected:
    """Training forward and backward of ``(y * grad).sum()`` in float64 from the formula."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    dims, n = oracle.reduce_dims(x64.dim()), oracle.count_per_channel(x64.shape)
    w = None if weight is None else weight.detach().to(torch.float64).requires_grad_(True)
    b = None if bias is None else bias.detach().to(torch.float64).requires_grad_(True)
    mean = x64.sum(dim=dims) / n
    var = (x64 - oracle.channel_view(mean, x64.dim())).square().sum(dim=dims) / n
    y = oracle.normalize(x64, mean, var, eps=eps, weight=w, bias=b)
    leaves = [t for t in (x64, w, b) if t is not None]
    grads = torch.autograd.grad(y, leaves, grad.to(torch.float64))
    dx, dw, db = grads[0], (grads[1] if w is not None else None), (
        grads[-1] if b is not None else None)
    xhat = (x64 - oracle.channel_view(mean, x64.dim())) / torch.sqrt(
        oracle.channel_view(var, x64.dim()) + eps)
    return Expected(x.detach(), x64.detach(), mean.detach(), var.detach(), y.detach(), dx, dw, db,
                    xhat.detach())


def _block_slices(sc: SyncCase, block: tuple[int, ...]) -> dict[int, slice]:
    """Where each rank's rows sit inside its block's concatenated batch."""
    out, start = {}, 0
    for r in block:
        out[r] = slice(start, start + sc.sizes[r])
        start += sc.sizes[r]
    return out


def per_block(sc: SyncCase, grad: Tensor) -> dict[int, tuple[Expected, slice]]:
    """For every rank: the expectation of its block and where its rows are in it."""
    c = sc.case
    out: dict[int, tuple[Expected, slice]] = {}
    for block in sc.blocks:
        w, b = (c.weight, c.bias) if c.config.affine else (None, None)
        exp = expected_train(sc.block_rows(block), sc.block_rows(block, grad), eps=c.config.eps,
                             weight=w, bias=b)
        for r, where in _block_slices(sc, block).items():
            out[r] = (exp, where)
    return out


# -- per-rank comparisons -----------------------------------------------------------------------
def expect_outputs(sc: SyncCase, results: Sequence[RankResult], expected: dict[int, Any], *,
                   step: int = 0, what: str = "training output") -> None:
    """Every rank's output is its rows of its block's oracle output."""
    c = sc.case
    inputs = sc.rank_inputs()
    for r, res in enumerate(results):
        exp, where = expected[r]
        y = res.steps[step].y
        check_output(y, inputs[r], f"rank {r} {what}")
        w, b = (c.weight, c.bias) if c.config.affine else (None, None)
        tol = forward_tolerance(exp.x, exp.mean, exp.var, eps=c.config.eps, weight=w, bias=b,
                                dtype=c.dtype)
        expect_close(y, exp.y[where], tol,
                     f"rank {r} {what} (rows {where.start}..{where.stop - 1} of its group's "
                     f"batch of {exp.x.shape[0]})")


def expect_input_grads(sc: SyncCase, results: Sequence[RankResult],
                       expected: dict[int, Any], grad: Tensor) -> None:
    """Every rank's input gradient is its rows of the global input gradient."""
    c = sc.case
    for r, res in enumerate(results):
        exp, where = expected[r]
        dx = res.steps[0].dx
        if dx is None:
            raise PropertyFailure(f"rank {r}: no input gradient after backward (the output "
                                  f"does not depend on the input through autograd)")
        if tuple(dx.shape) != tuple(exp.dx[where].shape):
            raise PropertyFailure(f"rank {r} input gradient: shape {tuple(dx.shape)} != input "
                                  f"shape {tuple(exp.dx[where].shape)}")
        w = c.weight if c.config.affine else None
        tdx, _, _ = gradient_tolerances(exp.x, exp.mean, exp.var, eps=c.config.eps,
                                        grad=sc.block_rows(sc.group_of(r), grad), weight=w,
                                        training=True, dtype=c.dtype)
        expect_close(dx, exp.dx[where], tdx,
                     f"rank {r} input gradient (rows {where.start}..{where.stop - 1} of its "
                     f"group's batch of {exp.x.shape[0]})")


def expect_param_grads(sc: SyncCase, results: Sequence[RankResult], expected: dict[int, Any],
                       grad: Tensor) -> None:
    """Each rank's weight/bias gradient is its share (its rows' sum), and the shares of a group
    add up to the group's global gradient (what data-parallel training's all-reduce forms)."""
    c = sc.case
    if not c.config.affine:
        return
    nd = c.ndim
    dims = oracle.reduce_dims(nd)
    for block in sc.blocks:
        exp, _ = expected[block[0]]
        _, tw, tb = gradient_tolerances(exp.x, exp.mean, exp.var, eps=c.config.eps,
                                        grad=sc.block_rows(block, grad), weight=c.weight,
                                        training=True, dtype=c.dtype)
        g = sc.block_rows(block, grad)
        slices = _block_slices(sc, block)
        shares = {"weight": {r: (g[s] * exp.xhat[s]).sum(dim=dims) for r, s in slices.items()},
                  "bias": {r: g[s].sum(dim=dims) for r, s in slices.items()}}
        for name, tol, full in (("weight", tw, exp.dweight), ("bias", tb, exp.dbias)):
            total = torch.zeros(c.num_features, dtype=torch.float64)
            for r in block:
                got = getattr(results[r].steps[0], f"d{name}")
                if got is None:
                    raise PropertyFailure(f"rank {r}: no {name} gradient after backward")
                expect_close(got, shares[name][r], tol,
                             f"rank {r} {name} gradient (its share: the sum over its "
                             f"{sc.sizes[r]} rows; torch.nn.SyncBatchNorm leaves the sum over "
                             f"ranks to data-parallel training)")
                total = total + got.to(torch.float64)
            expect_close(total, full, tol,
                         f"{name} gradient summed over ranks {list(block)} vs. the global "
                         f"{name} gradient")


def expect_stats(ctx: SyncContext, sc: SyncCase, results: Sequence[RankResult],
                 expected: dict[int, Any], *, step: int = 0,
                 representable_only: bool = False) -> None:
    """Every rank's running statistics equal its group's global update (unbiased with the
    group's count, the declared convention) and are identical on the ranks of a group.

    NaN is named as NaN, for all the group's ranks at once (:func:`nan_report`), never as a
    difference between ranks: two ranks holding NaN at the same places hold the same values."""
    conv = ctx.base.target.convention
    for block in sc.blocks:
        exp, _ = expected[block[0]]
        updates: dict[int, _Update] = {}
        for r in block:
            res = results[r]
            before = res.installed if step == 0 else res.steps[step - 1].stats
            after = res.steps[step].stats
            if before is None or after is None:
                raise PropertyFailure(f"rank {r}: no running statistics found (looked for "
                                      f"running_mean/running_var, moving_mean/moving_var)")
            updates[r] = _expected_update(conv, sc, exp, before, after, res.steps[step].count,
                                          step=step)
        for i, name in enumerate(("running_mean", "running_var")):
            got = {r: u.after[i] for r, u in updates.items()}
            text = nan_report(name, got, {r: u.want[i] for r, u in updates.items()},
                              step=step)
            if text is not None:
                raise PropertyFailure(text)
        for r in block:
            _expect_update(conv, sc, r, exp, updates[r], step=step,
                           representable_only=representable_only)
        first = updates[block[0]].after
        for r in block[1:]:
            for i, name in enumerate(("running_mean", "running_var")):
                text = rank_difference(name, block[0], first[i], r, updates[r].after[i])
                if text is not None:
                    raise PropertyFailure(text)


def _places(mask: Tensor) -> str:
    """``k / n elements (channels i, j, ...)`` for the elements ``mask`` selects."""
    where = mask.flatten().nonzero().flatten().tolist()
    shown = ", ".join(map(str, where[:8])) + (", ..." if len(where) > 8 else "")
    plural = "s" if len(where) > 1 else ""
    return f"{len(where)} / {mask.numel()} elements (channel{plural} {shown})"


def _ranks(ranks: Sequence[int]) -> str:
    names = [f"rank {r}" for r in ranks]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def nan_report(name: str, got: dict[int, Tensor], want: dict[int, Tensor], *,
               step: int) -> str | None:
    """The failure text when some ranks' statistic ``name`` is NaN where the expected update
    is not (which ranks, how many elements, where), else ``None``.

    >>> import torch
    >>> nan = float("nan")
    >>> got, want = torch.tensor([nan, 1.0]), torch.tensor([0.9, 1.0])
    >>> print(nan_report("running_var", {0: got, 1: got}, {0: want, 1: want}, step=0))
    ... # doctest: +NORMALIZE_WHITESPACE
    running_var is NaN on rank 0 and rank 1 after training step 1: 1 / 2 elements
    (channel 0) on each, where the global update is finite
    Expected: [0.9, 1.0]
    """
    bad = {r: torch.isnan(g) & ~torch.isnan(want[r].to(torch.float64)) for r, g in got.items()
           if g.shape == want[r].shape}
    ranks = [r for r, b in bad.items() if bool(b.any())]
    if not ranks:
        return None
    places = {r: _places(bad[r]) for r in ranks}
    if len(set(places.values())) == 1:
        where = f"{places[ranks[0]]}{' on each' if len(ranks) > 1 else ''}"
    else:
        where = "; ".join(f"rank {r}: {places[r]}" for r in ranks)
    clean = [r for r in got if r not in ranks]
    tail = f" (not on {_ranks(clean)})" if clean else ""
    return (f"{name} is NaN on {_ranks(ranks)} after training step {step + 1}: {where}, where "
            f"the global update is finite{tail}\n"
            f"Expected: {[round(v, 6) for v in want[ranks[0]].tolist()]}")


def rank_difference(name: str, a_rank: int, a: Tensor, b_rank: int, b: Tensor) -> str | None:
    """The failure text when two ranks of a group hold different values of ``name`` (NaN at
    the same places is the same value; NaN at different places is named as NaN), else
    ``None``."""
    values = f"(ranks must hold identical statistics):\nrank {a_rank}: {a.tolist()}\n" \
             f"rank {b_rank}: {b.tolist()}"
    if a.shape == b.shape:
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if bool(((a == b) | (nan_a & nan_b)).all()):
            return None
        if not torch.equal(nan_a, nan_b):
            parts = [f"NaN on rank {r} at {_places(mine & ~other)} and not on rank {o}"
                     for r, mine, other, o in ((a_rank, nan_a, nan_b, b_rank),
                                               (b_rank, nan_b, nan_a, a_rank))
                     if bool((mine & ~other).any())]
            return f"{name} is {'; '.join(parts)} after a synchronised training step {values}"
    return (f"{name} differs between rank {a_rank} and rank {b_rank} after a synchronised "
            f"training step {values}")


@dataclass(frozen=True)
class _Update:
    """A rank's statistics after a step and the expected update (float64), with tolerances."""

    after: tuple[Tensor, Tensor]
    want: tuple[Tensor, Tensor]
    batch: tuple[Tensor, Tensor]
    tol: tuple[Any, Any]
    n: int


def _expected_update(conv: Convention, sc: SyncCase, exp: Expected,
                     before: tuple[Tensor, Tensor], after: tuple[Tensor, Tensor],
                     count: int | None, *, step: int) -> _Update:
    c = sc.case
    n = oracle.count_per_channel(exp.x.shape)
    steps = count if count is not None else step + 1
    momentum = c.config.momentum
    w = conv.batch_weight(momentum, steps)
    corr = conv.correction(n)
    tm, tv = stats_tolerance(exp.raw, before[0], before[1], exp.mean, exp.var, weight=w,
                             correction=corr, stat_dtype=c.dtype)
    exp_m = conv.update(before[0], exp.mean, momentum=momentum, steps=steps)
    run_var = conv.running_variance(exp.var, n)
    exp_v = conv.update(before[1], run_var, momentum=momentum, steps=steps)
    return _Update(after, (exp_m, exp_v), (exp.mean, run_var), (tm, tv), n)


def _expect_update(conv: Convention, sc: SyncCase, rank: int, exp: Expected, u: _Update, *,
                   step: int, representable_only: bool) -> None:
    c = sc.case
    momentum, stat_dtype = c.config.momentum, c.dtype
    for got, want, batch, tol, name in zip(u.after, u.want, u.batch, u.tol,
                                            ("running_mean", "running_var"), strict=True):
        keep = torch.ones_like(want, dtype=torch.bool)
        if representable_only:  # as single-process reduced_precision: see there
            keep = torch.isfinite(want.to(stat_dtype)) & torch.isfinite(batch.to(stat_dtype))
            overflow = keep & ~torch.isfinite(got)
            if bool(overflow.any()):
                ch = int(overflow.nonzero()[0])
                raise PropertyFailure(
                    f"rank {rank} {dtype_name(c.dtype)} {name} is {float(got[ch]):g} at channel "
                    f"{ch} where the exact value {float(want[ch]):g} fits in "
                    f"{dtype_name(stat_dtype)} (sums or collectives in 16 bits that overflow, "
                    f"or a division by a zero count?)")
        kept = tol.restricted(keep)
        m = compare(got[keep], want.to(stat_dtype).to(torch.float64)[keep], rtol=kept.rtol,
                    atol=kept.atol, name=f"rank {rank} {name} after training step {step + 1}",
                    check_dtype=False)
        if m is not None:
            rule = conv.describe().split(": ", 1)[1]
            raise PropertyFailure(
                f"{m}\nExpected ({rule}; global count n={u.n} over ranks "
                f"{list(sc.group_of(rank))}, momentum {momentum}): "
                f"{[round(v, 6) for v in want.tolist()]}\n"
                f"Got: {[round(v, 6) for v in got.tolist()]}\nTolerance: {tol.reason}")


def train_steps(sc: SyncCase, grad: Tensor | None = None
                ) -> Callable[[int, Tensor], tuple[Step, ...]]:
    """One training step per rank; with ``grad``, a backward of the rank's rows of it."""
    grads = sc.rank_inputs(grad.to(sc.case.dtype)) if grad is not None else None

    def steps(rank: int, x: Tensor) -> tuple[Step, ...]:
        return (Step(True, x, None if grads is None else grads[rank]),)
    return steps
