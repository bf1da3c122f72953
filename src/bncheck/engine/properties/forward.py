"""Forward properties: training and eval outputs, invariances, reduced precision."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted
from bncheck.engine.properties._base import (
    Checks,
    Context,
    PropertyCase,
    activation_after,
    check_output,
    horizons,
    install_count,
    layout_examples,
    needs_stats,
    one_pass_variance,
    oracle_eval,
    oracle_train,
    overflow_examples,
    register,
)
from bncheck.engine.properties._tolerance import forward_tolerance, stats_tolerance
from bncheck.engine.properties._variants import pieces
from bncheck.engine.strategies import BNCase, dtype_name


@register(
    1, "train_forward",
    checks="training output equals the float64 oracle: batch mean, biased batch variance, "
           "eps inside the square root, weight and bias per channel",
    catches="normalizing with running/moving statistics, unbiased variance, eps outside the "
            "sqrt, wrong reduction dims, swapped weight and bias, exceptions in forward",
    tolerance="forward_tolerance: unit roundoff x reduction length x max|x|/std, x8",
    cases=lambda ctx: st.builds(PropertyCase, ctx.cases(training=True, grad_modes=["enabled"]),
                                tracked=horizons()),
    fixed=layout_examples,
)
def train_forward(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    bn = ctx.build(case).train(True)
    install_count(bn, drawn.tracked)  # e.g. past a warm-up keyed on num_batches_tracked
    y = bn.call(case.x, what="a training forward")
    check_output(y, case.x, "training output")
    expected, tol = oracle_train(bn, case.x, case.config.eps, y.dtype)
    w, b = bn.params()
    checks.close(y, expected, tol, "training output",
                 explain=lambda: activation_after(y, expected, tol) or one_pass_variance(
                     case.x, y, expected, tol, eps=case.config.eps, weight=w, bias=b))


@register(
    2, "eval_forward",
    checks="eval output normalizes with the running statistics, leaves them unchanged, and is "
           "per-sample (a sample's output does not depend on the rest of the batch; batch 1 "
           "works)",
    catches="batch statistics in eval, mode chosen by grad mode, statistics updated in eval",
    tolerance="forward_tolerance with n=1 (no reduction), x8",
    cases=lambda ctx: ctx.tracked_cases(training=False),
    requires=needs_stats,
    trains=False,
)
def eval_forward(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    bn = ctx.build(case)
    bn.set_stats(*drawn.installed)
    mean, var = bn.require_stats()  # as stored (rounded to the statistics' dtype)
    count = bn.num_batches_tracked()
    bn.train(False)
    with case.mode.context():
        y = bn.call(case.x, what="an eval forward")
        check_output(y, case.x, "eval output")
        after = bn.require_stats()
        y1 = bn.call(case.x[:1], what="an eval forward of one sample")
    for name, before, now in (("running mean", mean, after[0]),
                              ("running variance", var, after[1])):
        checks.that(torch.equal(before, now),
                    f"an eval forward changed the {name} (eval must only read the running "
                    f"statistics)\nbefore: {before.tolist()}\nafter:  {now.tolist()}")
    checks.that(count is None or bn.num_batches_tracked() == count,
                f"an eval forward changed num_batches_tracked from {count} to "
                f"{bn.num_batches_tracked()}")
    expected, tol = oracle_eval(bn, case.x, mean, var, case.config.eps, case.dtype)
    checks.close(y, expected, tol, "eval output",
                 explain=lambda: activation_after(y, expected, tol))
    _, tol1 = oracle_eval(bn, case.x[:1], mean, var, case.config.eps, case.dtype)
    checks.close(y1, y[:1].detach(), tol1 + tol1,
                 "eval output of sample 0 alone vs. within the batch")


def _invariance_cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    def extra(c: BNCase) -> st.SearchStrategy[PropertyCase]:
        scale = st.lists(st.floats(0.1, 10.0), min_size=c.num_features,
                         max_size=c.num_features).map(tuple)
        shift = st.lists(st.floats(-10.0, 10.0), min_size=c.num_features,
                         max_size=c.num_features).map(tuple)
        return st.builds(PropertyCase, st.just(c), scale=scale, shift=shift,
                         permutation=st.permutations(range(c.shape[0])).map(tuple))
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
def invariances(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.scale is not None and drawn.shift is not None and drawn.permutation is not None
    eps, nd = case.config.eps, case.ndim
    scale = torch.tensor(drawn.scale, dtype=torch.float64)
    a = oracle.channel_view(scale, nd)
    b = oracle.channel_view(torch.tensor(drawn.shift, dtype=torch.float64), nd)
    x = case.x
    x2 = (a * x.to(torch.float64) + b).to(case.dtype)
    bn1, bn2, bn3 = ctx.build(case).train(), ctx.build(case).train(), ctx.build(case).train()
    y = bn1.call(x, what="a training forward").detach()
    y2 = bn2.call(x2, what="a training forward of the affinely changed input").detach()
    w, beta = bn1.params()
    m1, v1 = oracle.batch_stats(x)
    m2, v2 = oracle.batch_stats(x2)
    # (y - bias) scales by a * sqrt(var + eps) / sqrt(var' + eps): exactly 1 only when eps = 0.
    k = oracle.channel_view(scale * torch.sqrt(v1 + eps) / torch.sqrt(v2 + eps), nd)
    bias_v = oracle.channel_view(beta, nd) if beta is not None else 0.0
    expected = bias_v + (y.to(torch.float64) - bias_v) * k
    t1 = forward_tolerance(x, m1, v1, eps=eps, weight=w, bias=beta, dtype=case.dtype)
    t2 = forward_tolerance(x2, m2, v2, eps=eps, weight=w, bias=beta, dtype=case.dtype)
    t1 = type(t1)(t1.rtol, t1.atol * k.abs() + t1.atol, t1.reason)
    variant = ctx.target.variant
    # Variants are not invariant to a*x+b as a whole batch (by design: Batch Renorm's r and d
    # read the running statistics, a ghost BatchNorm's eps acts per virtual batch).
    if variant is None:
        checks.close(y2, expected, t1 + t2,
                     "output for a*x+b vs. output for x (a > 0 per channel)")
    if variant is not None and variant.name == "ghost":
        return  # permuting rows moves them between virtual batches (by design)
    idx = torch.tensor(drawn.permutation)
    y3 = bn3.call(x[idx], what="a training forward of the permuted batch").detach()
    checks.close(y3, y[idx], t1 + t1, "output for the permuted batch vs. permuted output")


def _reduced_cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return ctx.tracked_cases(dtypes=ctx.reduced_dtypes, training=True, grad_modes=["enabled"])


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
    fixed=overflow_examples,
)
def reduced_precision(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    cfg, x, name = case.config, case.x, dtype_name(case.dtype)
    bn = ctx.build(case).train(True)
    before = bn.stats()
    y = bn.call(x, what=f"a {name} training forward")
    check_output(y, x, f"{name} training output")
    expected, tol = oracle_train(bn, x, cfg.eps, y.dtype)
    bad = torch.isfinite(expected.to(case.dtype)) & ~torch.isfinite(y.detach())
    if bool(bad.any()):
        checks.fail(
            f"{name} training output: {int(bad.sum())} / {bad.numel()} values are inf or nan "
            f"where the oracle is finite (first at index "
            f"{tuple(int(i) for i in bad.nonzero()[0])}); the largest |x| is "
            f"{float(x.abs().max()):g}")
    else:
        checks.close(y, expected, tol, f"{name} training output")
    if before is not None and bn.stats() is not None:
        if len(pieces(bn, x)) == 1:  # a ghost BatchNorm's: running_stats_update's
            _check_reduced_stats(ctx, bn, drawn, before, checks)
        bn.set_stats(*drawn.installed)
        stored = bn.require_stats()
        bn.train(False)
        with torch.no_grad():
            ye = bn.call(x, what=f"a {name} eval forward")
        check_output(ye, x, f"{name} eval output")
        expected, tol = oracle_eval(bn, x, stored[0], stored[1], cfg.eps, case.dtype)
        checks.close(ye, expected, tol, f"{name} eval output")


def _check_reduced_stats(ctx: Context, bn: Adapted, drawn: PropertyCase,
                         before: tuple[torch.Tensor, torch.Tensor], checks: Checks) -> None:
    case, conv, cfg = drawn.case, ctx.target.convention, drawn.case.config
    x, name = case.x, dtype_name(case.dtype)
    after = bn.require_stats()
    mean, var = oracle.batch_stats(x)
    n = oracle.count_per_channel(x.shape)
    steps = bn.num_batches_tracked() or 1
    w = conv.batch_weight(cfg.momentum, steps)
    sdt = bn.stat_dtype() or torch.float32
    tm, tv = stats_tolerance(x, before[0], before[1], mean, var, weight=w,
                             correction=conv.correction(n), stat_dtype=sdt)
    exp_m, exp_v = conv.expected_stats(before[0], before[1], mean, var, count=n,
                                       momentum=cfg.momentum, steps=steps)
    run_var = conv.running_variance(var, n)
    for got, exp, batch, tol, stat in ((after[0], exp_m, mean, tm, "running_mean"),
                                       (after[1], exp_v, run_var, tv, "running_var")):
        # Where the exact value overflows the statistics' dtype, any inf/nan is as wrong as the
        # other: compare only the representable channels. So is a batch statistic that
        # overflows it: rounding the batch statistic to the statistics' dtype before blending
        # (running.mul_(1 - m).add_(m * var.to(running.dtype))) is legitimate.
        keep = torch.isfinite(exp.to(sdt)) & torch.isfinite(batch.to(sdt))
        overflow = keep & ~torch.isfinite(got)
        if bool(overflow.any()):
            c = int(overflow.nonzero()[0])
            checks.fail(
                f"{name} {stat} is {float(got[c]):g} at channel {c} where the exact value "
                f"{float(exp[c]):g} and the batch statistic {float(batch[c]):g} fit in "
                f"{dtype_name(sdt)}: the statistics overflowed, computed in 16 bits (e.g. "
                f"squares of deviations above {torch.finfo(case.dtype).max ** 0.5:g}) "
                f"overflowed {dtype_name(case.dtype)}; accumulate them in float32 (as torch "
                f"and Keras do), or, if the layer is meant for float32 and float64 only, "
                f"declare that scope: --dtypes float32,float64 (dtypes=['float32', "
                f"'float64'])")
            continue
        checks.close(got[keep], exp.to(sdt).to(torch.float64)[keep], tol.restricted(keep),
                     f"{stat} (representable channels)")

