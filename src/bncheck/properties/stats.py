"""Running-statistics properties: one update, convergence, train/eval switching, buffers."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck import oracle
from bncheck.adapter import Adapted, PropertyFailure
from bncheck.compare import compare
from bncheck.conventions import Convention
from bncheck.properties._base import Context, check_output, expect_close, register, stat_values
from bncheck.properties._tolerance import ChannelTolerance, forward_tolerance, stats_tolerance
from bncheck.strategies import BNCase, BNConfig, Mode, dtype_name, modes, shapes


def expect_update(conv: Convention, bn: Adapted, x: Tensor, before: tuple[Tensor, Tensor],
                  momentum: float | None, steps: int, what: str) -> None:
    """The running statistics after a training step on ``x`` follow ``conv``."""
    after = bn.require_stats()
    mean, var = oracle.batch_stats(x)
    n = oracle.count_per_channel(x.shape)
    w = conv.batch_weight(momentum, steps)
    corr = n / (n - 1) if conv.running_var == "unbiased" else 1.0
    tm, tv = stats_tolerance(x, before[0], before[1], mean, var, weight=w, correction=corr,
                             stat_dtype=bn.stat_dtype() or torch.float32)
    rule = conv.describe().split(": ", 1)[1]
    exp_m = conv.update(before[0], mean, momentum=momentum, steps=steps)
    exp_v = conv.update(before[1], conv.running_variance(var, n), momentum=momentum, steps=steps)
    m_note = "cumulative average, 1/num_batches_tracked" if momentum is None else f"{momentum:g}"
    for got, exp, tol, name in ((after[0], exp_m, tm, "running_mean"),
                                (after[1], exp_v, tv, "running_var")):
        mismatch = compare(got, exp, rtol=tol.rtol, atol=tol.atol, name=f"{name} {what}",
                           check_dtype=False)
        if mismatch is not None:
            raise PropertyFailure(
                f"{mismatch}\nExpected ({rule}; momentum {m_note}; batch of n={n} per channel): "
                f"{[round(v, 6) for v in exp.tolist()]}\n"
                f"Got: {[round(v, 6) for v in got.tolist()]}\nTolerance: {tol.reason}")


def _update_cases(ctx: Context) -> st.SearchStrategy[Any]:
    return ctx.cases(training=True, grad_modes=["enabled"],
                     configs=ctx.configs(track_running_stats=True)).flatmap(
        lambda c: st.tuples(st.just(c), stat_values(c.num_features), st.integers(1, 3)))


@register(
    4, "running_stats_update",
    checks="after each training step the running mean and variance follow the declared "
           "convention (momentum rule, biased/unbiased variance, cumulative average for "
           "momentum=None) and num_batches_tracked counts the steps",
    catches="running variance updated from itself, biased/unbiased swapped, momentum rule "
            "flipped, wrong cumulative average, num_batches_tracked not counted",
    tolerance="stats_tolerance: reduction error of the batch statistics x batch weight plus the "
              "rounding of the stored statistics, x8",
    cases=_update_cases,
)
def running_stats_update(ctx: Context, drawn: tuple[BNCase, tuple[Tensor, Tensor], int]) -> None:
    case, (mean0, var0), steps = drawn
    conv, cfg = ctx.target.convention, case.config
    bn = ctx.build(case)
    bn.require_stats()
    count0 = bn.num_batches_tracked()
    bn.set_stats(mean0, var0)
    bn.train(True)
    for step in range(1, steps + 1):
        x = case.x if step == 1 else (case.x.to(torch.float64) * (1 + 0.5 * step) + step).to(
            case.dtype)
        before = bn.require_stats()
        bn.call(x, what=f"training step {step}")
        expect_update(conv, bn, x, before, cfg.momentum, (count0 or 0) + step,
                      f"after training step {step}")
        if count0 is not None and bn.num_batches_tracked() != count0 + step:
            raise PropertyFailure(f"num_batches_tracked is {bn.num_batches_tracked()} after "
                                  f"{step} training step(s), expected {count0 + step}")


@dataclass(frozen=True)
class ConvergenceCase:
    shape: tuple[int, ...]
    dtype: torch.dtype
    config: BNConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int

    def describe(self) -> str:
        return (f"shape={self.shape}, dtype={dtype_name(self.dtype)}, {self.config}, "
                f"data ~ N(mean={list(self.mean)}, std={list(self.std)}), generator seed "
                f"{self.seed}")


def _convergence_cases(ctx: Context) -> st.SearchStrategy[ConvergenceCase]:
    def build(shape: tuple[int, ...]) -> st.SearchStrategy[ConvergenceCase]:
        c = shape[1]
        return st.builds(
            ConvergenceCase, st.just(shape), st.sampled_from(ctx.full_dtypes),
            ctx.configs(track_running_stats=True, min_batch_weight=0.05, max_batch_weight=0.3),
            st.lists(st.floats(-3.0, 3.0), min_size=c, max_size=c).map(tuple),
            st.lists(st.floats(0.1, 3.0), min_size=c, max_size=c).map(tuple),
            st.integers(0, 2**16))
    return shapes(dims=ctx.target.dims, max_batch=6, max_channels=3, max_side=2).flatmap(build)


#: Standard deviations allowed around the limit. A running statistic is an average of many
#: independent batch statistics; a 10-sigma excursion has probability below 1e-6 even for the
#: skewed chi-square variance estimates of the smallest batches, and the seeds are fixed.
SIGMAS = 10.0


@register(
    5, "running_stats_convergence",
    checks="over many batches drawn from N(mean, std^2) the running statistics converge to the "
           "mean and to std^2 (unbiased) or std^2 (n-1)/n (biased), within a bound from momentum "
           "and batch size",
    catches="statistics that drift or stall over many steps (momentum misuse, wrong cumulative "
            "average, variance never updated)",
    tolerance=f"remaining bias (1-w)^T |init - limit| + {SIGMAS:g} standard deviations of the "
              "averaged batch statistic (fixed generator seed: deterministic)",
    cases=_convergence_cases,
)
def running_stats_convergence(ctx: Context, case: ConvergenceCase) -> None:
    conv, cfg = ctx.target.convention, case.config
    c, nd = case.shape[1], len(case.shape)
    bn = ctx.target.build(c, ndim=nd, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine,
                          track_running_stats=True,
                          dtype=None if case.dtype == torch.float32 else case.dtype)
    init_m, init_v = bn.require_stats()
    bn.train(True)
    n = oracle.count_per_channel(case.shape)
    w = conv.batch_weight(cfg.momentum, 1)
    steps = 150 if cfg.momentum is None else min(400, math.ceil(math.log(1e-4) / math.log1p(-w)))
    gen = torch.Generator().manual_seed(case.seed)
    mu = oracle.channel_view(torch.tensor(case.mean, dtype=torch.float64), nd)
    sd = oracle.channel_view(torch.tensor(case.std, dtype=torch.float64), nd)
    for step in range(steps):
        z = torch.randn(case.shape, generator=gen, dtype=torch.float64)
        bn.call((mu + sd * z).to(case.dtype), what=f"training step {step + 1}")
    got_m, got_v = bn.require_stats()
    mean = torch.tensor(case.mean, dtype=torch.float64)
    var = torch.tensor(case.std, dtype=torch.float64).square()
    limit_v = var if conv.running_var == "unbiased" else var * (n - 1) / n
    # Var of the averaged statistic: a batch mean has var/n, an unbiased batch variance
    # 2 var^2 / (n - 1) (normal data); an EMA with batch weight w keeps w / (2 - w) of it, a
    # cumulative average over T steps 1 / T.
    keep = 1.0 / steps if cfg.momentum is None else w / (2.0 - w)
    decay = 0.0 if cfg.momentum is None else (1.0 - w) ** steps
    sd_m = torch.sqrt(var / n * keep)
    sd_v = limit_v * math.sqrt(2.0 / (n - 1) * keep)
    fp = forward_tolerance(torch.zeros(1, c), mean, var, eps=1.0, dtype=case.dtype).rtol
    bound_m = decay * (init_m - mean).abs() + SIGMAS * sd_m + fp * (mean.abs() + 1)
    bound_v = decay * (init_v - limit_v).abs() + SIGMAS * sd_v + fp * limit_v
    why = (f"{steps} steps with batch weight {'1/k' if cfg.momentum is None else f'{w:.3g}'}, "
           f"n={n} values per channel per batch: remaining bias + {SIGMAS:g} sd")
    expect_close(got_m, mean, ChannelTolerance(0.0, bound_m, why),
                 f"running_mean after {steps} batches from N(mean, std^2)")
    expect_close(got_v, limit_v, ChannelTolerance(0.0, bound_v, why),
                 f"running_var after {steps} batches (limit: {conv.running_var} std^2)")


def _switch_cases(ctx: Context) -> st.SearchStrategy[Any]:
    return st.tuples(ctx.cases(training=True, grad_modes=["enabled"],
                               configs=ctx.configs(track_running_stats=True)),
                     modes(training=False))


@register(
    3, "train_eval_switch",
    checks="eval() freezes the statistics, train() resumes updating them, toggling back and "
           "forth changes nothing else, and a state_dict round trip into a fresh instance "
           "reproduces the eval outputs",
    catches="eval updating the statistics, statistics lost by state_dict (plain attributes), "
            "mode chosen by grad mode, state kept outside the module's state",
    tolerance="eval outputs: forward_tolerance with n=1, x2 (two runs); statistics frozen "
              "exactly; the resumed update: stats_tolerance",
    cases=_switch_cases,
)
def train_eval_switch(ctx: Context, drawn: tuple[BNCase, Mode]) -> None:
    case, eval_mode = drawn
    conv, cfg = ctx.target.convention, case.config
    x, x2 = case.x, (case.x.to(torch.float64).flip(0) * 0.5 + 0.25).to(case.dtype)
    bn = ctx.build(case).train(True)
    bn.require_stats()
    bn.call(x, what="training step 1")
    frozen = bn.require_stats()
    count = bn.num_batches_tracked()
    bn.train(False)
    with eval_mode.context():
        ye = bn.call(x2, what=f"an eval forward ({eval_mode})").detach().clone()
        check_output(ye, x2, "eval output")
        bn.call(x2 * 2, what=f"a second eval forward ({eval_mode})")
    now = bn.require_stats()
    for name, a, now_v in (("running_mean", frozen[0], now[0]), ("running_var", frozen[1], now[1])):
        if not torch.equal(a, now_v):
            raise PropertyFailure(f"{name} changed in eval mode ({eval_mode}): eval() must "
                                  f"freeze the statistics\nafter training: {a.tolist()}\n"
                                  f"after eval:     {now_v.tolist()}")
    if count is not None and bn.num_batches_tracked() != count:
        raise PropertyFailure("num_batches_tracked changed in eval mode")
    params = bn.params()
    w, b = params if params is not None else (None, None)
    tol = forward_tolerance(x2, frozen[0], frozen[1], eps=cfg.eps, n=1, weight=w, bias=b,
                            dtype=case.dtype)
    bn.train(True)
    bn.train(False)
    with eval_mode.context():
        again = bn.call(x2, what="an eval forward after train(); eval()")
    expect_close(again, ye, tol + tol, "eval output after toggling train()/eval()")
    state = bn.module.state_dict()
    fresh = ctx.build(case)
    try:
        fresh.module.load_state_dict(copy.deepcopy(state))
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        raise PropertyFailure(f"load_state_dict of the module's own state_dict into a fresh "
                              f"instance raised {type(e).__name__}: {e}") from None
    fresh.train(False)
    with eval_mode.context():
        yf = fresh.call(x2, what="an eval forward of a fresh instance after load_state_dict")
    expect_close(yf, ye, tol + tol, "eval output of a fresh instance loaded from state_dict "
                 f"(state_dict keys: {sorted(state)})")
    bn.train(True)
    before = bn.require_stats()
    bn.call(x, what="training step 2 (after eval)")
    expect_update(conv, bn, x, before, cfg.momentum, (count or 1) + 1, "after train() resumed")


@register(
    10, "stats_are_buffers",
    checks="running statistics are registered buffers (in state_dict, moved and cast by .to()), "
           "not parameters, never require grad and carry no autograd graph after a training step",
    catches="statistics kept as plain attributes, statistics registered as Parameters, "
            "statistics updated without detaching (graph kept alive across batches)",
    tolerance="exact (structural checks)",
    cases=lambda ctx: ctx.cases(dtypes=(torch.float32,), training=True, grad_modes=["enabled"],
                                configs=ctx.configs(track_running_stats=True)),
    requires=lambda ctx: None,
)
def stats_are_buffers(ctx: Context, case: BNCase) -> None:
    bn = ctx.build(case, dtype=torch.float32).train(True)
    bn.require_stats()
    x = case.x.to(torch.float32).clone().requires_grad_(True)
    bn.call(x, what="a training forward")
    module = bn.module
    buffers = dict(module.named_buffers())
    params = dict(module.named_parameters())
    state = module.state_dict()
    for name in (bn.mean_name, bn.var_name):
        assert name is not None
        t = getattr(module, name)
        if name in params:
            raise PropertyFailure(f"{name} is a Parameter: optimizers would update it; register "
                                  f"it with register_buffer")
        if name not in buffers or buffers[name] is not t:
            raise PropertyFailure(
                f"{name} is a plain attribute, not a registered buffer: it is missing from "
                f"state_dict() (keys: {sorted(state)}) and .to()/.cuda() do not move it; "
                f"register it with self.register_buffer({name!r}, ...)")
        if name not in state:
            raise PropertyFailure(f"{name} is missing from state_dict() (keys: {sorted(state)})")
        if t.requires_grad or t.grad_fn is not None:
            raise PropertyFailure(
                f"{name} carries the autograd graph after a training step (requires_grad="
                f"{t.requires_grad}, grad_fn={type(t.grad_fn).__name__ if t.grad_fn else None}): "
                f"every batch's graph stays alive; update it in place under torch.no_grad() or "
                f"from detached values")
    try:
        module.to(torch.float64)  # the last check: the module is not used afterwards
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        raise PropertyFailure(f"module.to(torch.float64) raised {type(e).__name__}: {e}") from None
    for name in (bn.mean_name, bn.var_name):
        t = getattr(module, str(name))
        if t.dtype != torch.float64:
            raise PropertyFailure(f"module.to(torch.float64) left {name} in {t.dtype}")
