"""Running-statistics properties: one update, convergence, train/eval switching, buffers."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted
from bncheck.engine.compare import Tolerance, compare
from bncheck.engine.conventions import Convention
from bncheck.engine.properties._base import (
    Checks,
    Context,
    PropertyCase,
    check_output,
    horizons,
    install_count,
    needs_stats,
    register,
)
from bncheck.engine.properties._tolerance import forward_tolerance, stats_tolerance, std_tolerance
from bncheck.engine.properties._variants import pieces, updates_per_call
from bncheck.engine.strategies import BNCase, BNConfig, dtype_name, modes, shapes


def expect_update(conv: Convention, bn: Adapted, x: Tensor, before: tuple[Tensor, Tensor],
                  momentum: float | None, steps: int, what: str, checks: Checks) -> None:
    """The running statistics after a training step on ``x`` follow ``conv`` (``before``: the
    running mean and variance before the step; ``steps``: num_batches_tracked after it). A
    ghost BatchNorm updates once per virtual batch, in order: the last of them is ``steps``."""
    got_mean, got_second = bn.stored_stats()
    chunks = pieces(bn, x)
    exp_m, exp_v = before
    tm = tv = None
    for i, piece in enumerate(chunks):
        k = steps - len(chunks) + 1 + i
        mean, var = oracle.batch_stats(piece)
        n = oracle.count_per_channel(piece.shape)
        a, b = stats_tolerance(piece, exp_m, exp_v, mean, var,
                               weight=conv.batch_weight(momentum, k),
                               correction=conv.correction(n),
                               stat_dtype=bn.stat_dtype() or torch.float32)
        tm, tv = (a, b) if tm is None or tv is None else (tm + a, tv + b)
        exp_m, exp_v = conv.expected_stats(exp_m, exp_v, mean, var, count=n,
                                           momentum=momentum, steps=k)
    assert tm is not None and tv is not None
    per_channel = (f"{len(chunks)} virtual batches of {n}" if len(chunks) > 1 else str(n))
    rule = conv.describe().split(": ", 1)[1]
    second, exp_second, t_second = "running_var", exp_v, tv
    if bn.stores_std:
        second, exp_second, t_second = "running_std", exp_v.sqrt(), std_tolerance(tv, exp_v)
    m_note = "cumulative average, 1/num_batches_tracked" if momentum is None else f"{momentum:g}"
    for got, exp, tol, name in ((got_mean, exp_m, tm, "running_mean"),
                                (got_second, exp_second, t_second, second)):
        mismatch = compare(got, exp, rtol=tol.rtol, atol=tol.atol, name=f"{name} {what}",
                           check_dtype=False)
        if mismatch is not None:
            checks.fail(
                f"{mismatch}\nExpected ({rule}; momentum {m_note}; batch of n={per_channel} per "
                f"channel): "
                f"{[round(v, 6) for v in exp.tolist()]}\n"
                f"Got: {[round(v, 6) for v in got.tolist()]}\nTolerance: {tol.reason}")


def _update_cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return ctx.tracked_cases(training=True, grad_modes=["enabled"],
                             extra={"steps": st.integers(1, 3), "tracked": horizons()})


@register(
    4, "running_stats_update",
    checks="after each training step the running mean and variance follow the declared "
           "convention (momentum rule, biased/unbiased variance, cumulative average for "
           "momentum=None, a stored standard deviation) and num_batches_tracked counts the steps",
    catches="running variance updated from itself, biased/unbiased swapped, momentum rule "
            "flipped, wrong cumulative average, num_batches_tracked not counted",
    tolerance="stats_tolerance: reduction error of the batch statistics x batch weight plus the "
              "rounding of the stored statistics, x8",
    cases=_update_cases,
    requires=needs_stats,
)
def running_stats_update(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case, steps = drawn.case, drawn.steps or 1
    assert drawn.installed is not None
    conv, cfg = ctx.target.convention, case.config
    bn = ctx.build(case)
    bn.require_stats()
    count0 = install_count(bn, drawn.tracked)
    bn.set_stats(*drawn.installed)
    bn.train(True)
    for step in range(1, steps + 1):
        x = case.x if step == 1 else (case.x.to(torch.float64) * (1 + 0.5 * step) + step).to(
            case.dtype)
        before = bn.require_stats()
        bn.call(x, what=f"training step {step}")
        per = updates_per_call(bn, x)  # a ghost BatchNorm's virtual batches each count
        expect_update(conv, bn, x, before, cfg.momentum, (count0 or 0) + step * per,
                      f"after training step {step}", checks)
        count = bn.num_batches_tracked()
        if not checks.that(count0 is None or count == count0 + step * per,
                           f"num_batches_tracked is {count} after {step} training step(s), "
                           f"expected {(count0 or 0) + step * per}"
                           + (f" ({per} virtual batches each)" if per > 1 else "")):
            break
        if checks.failures:
            break
    _variance_form(ctx, case, checks)


#: Offset data for the variance-form probe: the one-pass variance E[x^2] - E[x]^2 loses about
#: u * mean^2 to rounding, so with mean^2 / std^2 = OFFSET_RATIO / u it is ~OFFSET_RATIO x the
#: variance off, while a two-pass variance stays within stats_tolerance (n u max|x| std).
OFFSET_RATIO = 1e3
PROBE_STD = 1e-2


def offset_batch(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, float]:
    """A batch whose channels have mean ~ ``PROBE_STD * sqrt(OFFSET_RATIO / u)`` and std
    ``PROBE_STD`` (fixed generator: the same probe every run), and that mean."""
    from bncheck.engine.properties._tolerance import accumulation_dtype, roundoff

    u = roundoff(accumulation_dtype(dtype))
    offset = 10.0 ** math.ceil(math.log10(PROBE_STD * math.sqrt(OFFSET_RATIO / u)))
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z - z.mean(dim=oracle.reduce_dims(len(shape)), keepdim=True)
    return (offset + PROBE_STD * z).to(dtype), offset


def _variance_form(ctx: Context, case: BNCase, checks: Checks) -> None:
    """One training step on offset data, judged apart from the drawn case (whose failure, a
    biased variance say, would hide this one): names a one-pass running-variance update."""
    if case.dtype not in (torch.float32, torch.float64) or oracle.count_per_channel(
            case.shape) < 2:
        return
    x, offset = offset_batch(case.shape, case.dtype)
    bn = ctx.build(case).train(True)
    before = bn.require_stats()
    count0 = bn.num_batches_tracked()
    bn.call(x, what="a training step on offset data")
    probe = Checks()
    what = f"after a training step on offset data (mean {offset:g}, std {PROBE_STD:g})"
    expect_update(ctx.target.convention, bn, x, before, case.config.momentum,
                  (count0 or 0) + updates_per_call(bn, x), what, probe)
    if not probe.failures:
        return
    got = bn.require_stats()[1]
    w = ctx.target.convention.batch_weight(case.config.momentum, (count0 or 0) + 1)
    _, var = oracle.batch_stats(x)
    off = float(((got - (1 - w) * before[1]) / w - var).abs().max() / var.max())
    if off > 1.0:  # more than any correction factor or momentum slip explains
        checks.fail(
            f"running_var {what} is {off:.3g}x the batch variance off: the variance is "
            f"computed in one pass, E[x^2] - E[x]^2, which cancels catastrophically when "
            f"mean^2 >> var; compute it from the deviations, mean((x - mean)^2) (two passes "
            f"or Welford)\n" + probe.failures[0])
    elif not checks.failures:  # otherwise the drawn case's failure already says it
        checks.fail(f"running statistics {what}: " + probe.failures[0])


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

    def with_dtype(self, dtype: torch.dtype) -> ConvergenceCase:
        return replace(self, dtype=dtype)


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
    requires=lambda ctx: needs_stats(ctx) or (
        "the target declares a ghost BatchNorm: its running statistics average virtual "
        "batches, and running_stats_update checks each of those updates"
        if ctx.target.variant is not None and ctx.target.variant.name == "ghost" else None),
)
def running_stats_convergence(ctx: Context, case: ConvergenceCase, checks: Checks) -> None:
    conv, cfg = ctx.target.convention, case.config
    c, nd = case.shape[1], len(case.shape)
    bn = ctx.target.build(c, ndim=nd, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine,
                          track_running_stats=True, bias=cfg.bias,
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
    limit_v = var * (n - 1) / n * conv.correction(n)
    if conv.running_stat == "std":  # an average of standard deviations: E[s] = c4(n) sigma
        c4 = math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))
        limit_v = limit_v * c4 * c4
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
    checks.close(got_m, mean, Tolerance(0.0, bound_m, why),
                 f"running_mean after {steps} batches from N(mean, std^2)")
    checks.close(got_v, limit_v, Tolerance(0.0, bound_v, why),
                 f"running_var after {steps} batches (limit: {conv.running_var} std^2)")


def _switch_cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return st.builds(PropertyCase, ctx.cases(training=True, grad_modes=["enabled"],
                                             configs=ctx.configs(track_running_stats=True)),
                     eval_mode=modes(training=False))


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
    requires=needs_stats,
)
def train_eval_switch(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case, eval_mode = drawn.case, drawn.eval_mode
    assert eval_mode is not None
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
    for name, a, now_v in (("running_mean", frozen[0], now[0]),
                           ("running_var", frozen[1], now[1])):
        checks.that(torch.equal(a, now_v),
                    f"{name} changed in eval mode ({eval_mode}): eval() must freeze the "
                    f"statistics\nafter training: {a.tolist()}\nafter eval:     "
                    f"{now_v.tolist()}")
    checks.that(count is None or bn.num_batches_tracked() == count,
                "num_batches_tracked changed in eval mode")
    w, b = bn.params()
    tol = forward_tolerance(x2, frozen[0], frozen[1], eps=cfg.eps, n=1, weight=w, bias=b,
                            dtype=case.dtype)
    bn.train(True)
    bn.train(False)
    with eval_mode.context():
        again = bn.call(x2, what="an eval forward after train(); eval()")
    checks.close(again, ye, tol + tol, "eval output after toggling train()/eval()")
    state = bn.save()  # through the framework's own save/load (Keras: per-instance keys)
    fresh = ctx.build(case)
    fresh.load(copy.deepcopy(state))
    fresh.train(False)
    saved = (f"state_dict keys: {sorted(state)}" if isinstance(state, dict)
             else "get_weights()/set_weights()")
    with eval_mode.context():
        yf = fresh.call(x2, what="an eval forward of a fresh instance after load_state_dict")
    checks.close(yf, ye, tol + tol, f"eval output of a fresh instance loaded from its saved "
                 f"state ({saved})")
    if checks.failures:  # the resumed update starts from statistics already found wrong
        return
    bn.train(True)
    before = bn.require_stats()
    bn.call(x, what="training step 2 (after eval)")
    per = updates_per_call(bn, x)
    expect_update(conv, bn, x, before, cfg.momentum, (count or per) + per,
                  "after train() resumed",
                  checks)


def _state_key(bn: Adapted, t: Tensor) -> str | None:
    state = bn.invoke("module.state_dict(keep_vars=True)", bn.module.state_dict, keep_vars=True)
    return next((k for k, v in state.items() if v is t), None)


@register(
    10, "stats_are_buffers",
    checks="the running statistics behave as buffers, however they are registered: in "
           "state_dict, moved and cast by .to(), never requiring grad, carrying no autograd "
           "graph after a training step",
    catches="statistics kept as plain attributes, statistics that require grad (an optimizer "
            "would update them), statistics updated without detaching (graph kept alive across "
            "batches)",
    tolerance="exact (structural checks)",
    cases=lambda ctx: ctx.cases(dtypes=(torch.float32,), training=True, grad_modes=["enabled"],
                                configs=ctx.configs(track_running_stats=True)).map(PropertyCase),
    requires=lambda ctx: needs_stats(ctx) if ctx.facts.no_stats else None,
    trains=False,
)
def stats_are_buffers(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    bn = ctx.build(case, dtype=torch.float32).train(True)
    bn.require_stats()
    x = case.x.to(torch.float32).clone().requires_grad_(True)
    bn.call(x, what="a training forward")
    for name, t in bn.stat_tensors().items():
        key = _state_key(bn, t)
        if key is None:
            keys = sorted(bn.state_dict())
            checks.fail(
                f"{name} is a plain attribute, not a registered buffer: it is missing from "
                f"state_dict() (keys: {keys}) and .to()/.cuda() do not move it; register it "
                f"with self.register_buffer({name!r}, ...)")
        if t.grad_fn is not None:
            checks.fail(
                f"{name} carries the autograd graph after a training step (grad_fn="
                f"{type(t.grad_fn).__name__}): every batch's graph stays alive; update it in "
                f"place under torch.no_grad() or from detached values")
        elif t.requires_grad:
            checks.fail(f"{name} requires grad: an optimizer over module.parameters() would "
                        f"update it; register it with register_buffer (or requires_grad=False)")
    bn.to(torch.float64)  # the last check: the module is not used afterwards
    for name, t in bn.stat_tensors().items():
        checks.that(t.dtype == torch.float64,
                    f"module.to(torch.float64) left {name} in {dtype_name(t.dtype)}")
