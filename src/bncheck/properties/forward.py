"""Forward properties: training and eval outputs, invariances, reduced precision."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from bncheck import oracle
from bncheck.adapter import PropertyFailure
from bncheck.properties._base import (
    Context,
    check_output,
    expect_close,
    expect_oracle_eval,
    expect_oracle_train,
    register,
    stat_values,
)
from bncheck.properties._tolerance import forward_tolerance, stats_tolerance
from bncheck.strategies import BNCase, dtype_name


@register(
    1, "train_forward",
    checks="training output equals the float64 oracle: batch mean, biased batch variance, "
           "eps inside the square root, weight and bias per channel",
    catches="normalizing with running/moving statistics, unbiased variance, eps outside the "
            "sqrt, wrong reduction dims, swapped weight and bias, exceptions in forward",
    tolerance="forward_tolerance: unit roundoff x reduction length x max|x|/std, x8",
    cases=lambda ctx: ctx.cases(training=True, grad_modes=["enabled"]),
)
def train_forward(ctx: Context, case: BNCase) -> None:
    bn = ctx.build(case).train(True)
    y = bn.call(case.x, what="a training forward")
    check_output(y, case.x, "training output")
    expect_oracle_train(bn, case.x, y, case.config.eps, "training output")


def _eval_cases(ctx: Context) -> st.SearchStrategy[Any]:
    return ctx.cases(training=False, configs=ctx.configs(track_running_stats=True)).flatmap(
        lambda c: st.tuples(st.just(c), stat_values(c.num_features)))


@register(
    2, "eval_forward",
    checks="eval output normalizes with the running statistics, leaves them unchanged, and is "
           "per-sample (a sample's output does not depend on the rest of the batch; batch 1 "
           "works)",
    catches="batch statistics in eval, mode chosen by grad mode, statistics updated in eval",
    tolerance="forward_tolerance with n=1 (no reduction), x8",
    cases=_eval_cases,
)
def eval_forward(ctx: Context, drawn: tuple[BNCase, tuple[torch.Tensor, torch.Tensor]]) -> None:
    case, (mean, var) = drawn
    bn = ctx.build(case)
    bn.set_stats(mean, var)
    mean, var = bn.require_stats()  # as stored (rounded to the statistics' dtype)
    count = bn.num_batches_tracked()
    bn.train(False)
    with case.mode.context():
        y = bn.call(case.x, what="an eval forward")
        check_output(y, case.x, "eval output")
        after = bn.require_stats()
        y1 = bn.call(case.x[:1], what="an eval forward of one sample")
    for name, before, now in (("running mean", mean, after[0]), ("running variance", var,
                                                                 after[1])):
        if not torch.equal(before, now):
            raise PropertyFailure(f"an eval forward changed the {name} (eval must only read "
                                  f"the running statistics)\n"
                                  f"before: {before.tolist()}\nafter:  {now.tolist()}")
    if count is not None and bn.num_batches_tracked() != count:
        raise PropertyFailure(f"an eval forward changed num_batches_tracked from {count} to "
                              f"{bn.num_batches_tracked()}")
    expect_oracle_eval(bn, case.x, y, mean, var, case.config.eps, "eval output")
    params = bn.params()
    w, b = params if params is not None else (None, None)
    tol = forward_tolerance(case.x[:1], mean, var, eps=case.config.eps, n=1, weight=w, bias=b,
                            dtype=case.dtype)
    expect_close(y1, y[:1].detach(), tol + tol,
                 "eval output of sample 0 alone vs. within the batch")


def _invariance_cases(ctx: Context) -> st.SearchStrategy[Any]:
    def extra(c: BNCase) -> st.SearchStrategy[Any]:
        vec = st.lists(st.floats(0.1, 10.0), min_size=c.num_features, max_size=c.num_features)
        shift = st.lists(st.floats(-10.0, 10.0), min_size=c.num_features,
                         max_size=c.num_features)
        return st.tuples(st.just(c), vec, shift, st.permutations(range(c.shape[0])))
    return ctx.cases(training=True, grad_modes=["enabled"]).flatmap(extra)


@register(
    8, "invariances",
    checks="training output is invariant to a positive per-channel affine change of the input "
           "(up to the computed effect of eps) and permuting the batch permutes the output",
    catches="statistics over the wrong axes or from part of the batch, normalizing with stored "
            "statistics in training",
    tolerance="sum of the forward_tolerance of both runs",
    cases=_invariance_cases,
)
def invariances(ctx: Context, drawn: tuple[BNCase, list[float], list[float], list[int]]) -> None:
    case, scale, shift, perm = drawn
    eps, nd = case.config.eps, case.ndim
    a = oracle.channel_view(torch.tensor(scale, dtype=torch.float64), nd)
    b = oracle.channel_view(torch.tensor(shift, dtype=torch.float64), nd)
    x = case.x
    x2 = (a * x.to(torch.float64) + b).to(case.dtype)
    bn1, bn2, bn3 = ctx.build(case).train(), ctx.build(case).train(), ctx.build(case).train()
    y = bn1.call(x, what="a training forward").detach()
    y2 = bn2.call(x2, what="a training forward of the affinely changed input").detach()
    params = bn1.params()
    w, beta = params if params is not None else (None, None)
    m1, v1 = oracle.batch_stats(x)
    m2, v2 = oracle.batch_stats(x2)
    # (y - bias) scales by a * sqrt(var + eps) / sqrt(var' + eps): exactly 1 only when eps = 0.
    k = oracle.channel_view(torch.tensor(scale, dtype=torch.float64) * torch.sqrt(v1 + eps)
                            / torch.sqrt(v2 + eps), nd)
    bias_v = oracle.channel_view(beta, nd) if beta is not None else 0.0
    expected = bias_v + (y.to(torch.float64) - bias_v) * k
    t1 = forward_tolerance(x, m1, v1, eps=eps, weight=w, bias=beta, dtype=case.dtype)
    t2 = forward_tolerance(x2, m2, v2, eps=eps, weight=w, bias=beta, dtype=case.dtype)
    t1 = type(t1)(t1.rtol, t1.atol * k.abs() + t1.atol, t1.reason)
    expect_close(y2, expected, t1 + t2, "output for a*x+b vs. output for x (a > 0 per channel)")
    idx = torch.tensor(perm)
    y3 = bn3.call(x[idx], what="a training forward of the permuted batch").detach()
    expect_close(y3, y[idx], t1 + t1, "output for the permuted batch vs. permuted output")


def _reduced_cases(ctx: Context) -> st.SearchStrategy[Any]:
    return ctx.cases(dtypes=ctx.reduced_dtypes, training=True, grad_modes=["enabled"],
                     configs=ctx.configs(track_running_stats=True)).flatmap(
        lambda c: st.tuples(st.just(c), stat_values(c.num_features)))


def _needs_reduced(ctx: Context) -> str | None:
    if not ctx.reduced_dtypes:
        return ("needs float16 or bfloat16; requested dtypes: "
                + ", ".join(dtype_name(d) for d in ctx.dtypes))
    return None


@register(
    9, "reduced_precision",
    checks="float16/bfloat16 module and input: output dtype equals input dtype, finite where "
           "the oracle is finite, training and eval outputs and the running statistics close to "
           "the oracle",
    catches="statistics accumulated in 16 bits (squares overflow float16, sums lose digits), "
            "outputs promoted to float32",
    tolerance="forward_tolerance with float32 accumulation and 16-bit output rounding, x8",
    cases=_reduced_cases,
    requires=_needs_reduced,
)
def reduced_precision(ctx: Context, drawn: tuple[BNCase, tuple[torch.Tensor, torch.Tensor]]
                      ) -> None:
    case, (eval_mean, eval_var) = drawn
    conv, cfg, x = ctx.target.convention, case.config, case.x
    bn = ctx.build(case).train(True)
    before = bn.stats()
    y = bn.call(x, what=f"a {dtype_name(case.dtype)} training forward")
    check_output(y, x, f"{dtype_name(case.dtype)} training output")
    mean, var = oracle.batch_stats(x)
    expected = oracle.normalize(x, mean, var, eps=cfg.eps, weight=None, bias=None)
    params = bn.params()
    if params is not None:
        expected = oracle.normalize(x, mean, var, eps=cfg.eps, weight=params[0], bias=params[1])
    finite_expected = torch.isfinite(expected.to(case.dtype))
    bad = finite_expected & ~torch.isfinite(y.detach())
    if bool(bad.any()):
        raise PropertyFailure(
            f"{dtype_name(case.dtype)} training output: {int(bad.sum())} / {bad.numel()} "
            f"values are inf or nan where the oracle is finite (first at index "
            f"{tuple(int(i) for i in bad.nonzero()[0])}); the largest |x| is "
            f"{float(x.abs().max()):g}")
    expect_oracle_train(bn, x, y, cfg.eps, f"{dtype_name(case.dtype)} training output")
    if before is not None and bn.stats() is not None:
        after = bn.require_stats()
        n = oracle.count_per_channel(x.shape)
        w = conv.batch_weight(cfg.momentum, (bn.num_batches_tracked() or 1))
        run_var = conv.running_variance(var, n)
        corr = n / (n - 1) if conv.running_var == "unbiased" else 1.0
        sdt = bn.stat_dtype() or torch.float32
        tm, tv = stats_tolerance(x, before[0], before[1], mean, var, weight=w, correction=corr,
                                 stat_dtype=sdt)
        exp_m = conv.update(before[0], mean, momentum=cfg.momentum,
                            steps=bn.num_batches_tracked() or 1)
        exp_v = conv.update(before[1], run_var, momentum=cfg.momentum,
                            steps=bn.num_batches_tracked() or 1)
        for got, exp, batch, tol, name in ((after[0], exp_m, mean, tm, "running_mean"),
                                           (after[1], exp_v, run_var, tv, "running_var")):
            # Where the exact value overflows the statistics' dtype, any inf/nan is as wrong
            # as the other: compare only the representable channels. So is a batch statistic
            # that overflows it: rounding the batch statistic to the statistics' dtype before
            # blending (running.mul_(1 - m).add_(m * var.to(running.dtype))) is legitimate.
            keep = torch.isfinite(exp.to(sdt)) & torch.isfinite(batch.to(sdt))
            overflow = keep & ~torch.isfinite(got)
            if bool(overflow.any()):
                c = int(overflow.nonzero()[0])
                raise PropertyFailure(
                    f"{dtype_name(case.dtype)} {name} is {float(got[c]):g} at channel {c} where "
                    f"the exact value {float(exp[c]):g} and the batch statistic "
                    f"{float(batch[c]):g} fit in {dtype_name(sdt)}: the statistics overflowed, "
                    f"computed in 16 bits (e.g. squares of deviations above "
                    f"{torch.finfo(case.dtype).max ** 0.5:g}); accumulate them in float32")
            expect_close(got[keep], exp.to(sdt).to(torch.float64)[keep],
                         type(tol)(tol.rtol, tol.atol[keep], tol.reason),
                         f"{name} (representable channels)")
        bn.set_stats(eval_mean, eval_var)
        stored = bn.require_stats()
        bn.train(False)
        with torch.no_grad():
            ye = bn.call(x, what=f"a {dtype_name(case.dtype)} eval forward")
        check_output(ye, x, f"{dtype_name(case.dtype)} eval output")
        expect_oracle_eval(bn, x, ye, stored[0], stored[1], cfg.eps,
                           f"{dtype_name(case.dtype)} eval output")
