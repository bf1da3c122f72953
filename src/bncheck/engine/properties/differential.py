"""Differential: the target against torch.nn.BatchNormNd and torch.nn.functional.batch_norm."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted, attribute
from bncheck.engine.conventions import TORCH
from bncheck.engine.properties._base import Checks, Context, PropertyCase, register
from bncheck.engine.properties._tolerance import (
    forward_tolerance,
    gradient_tolerances,
    stats_tolerance,
)
from bncheck.engine.strategies import BNCase
from bncheck.errors import PropertyFailure

_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    # min_batch=2 even in eval: with track_running_stats=False eval uses batch statistics.
    return ctx.with_stats(ctx.cases(min_batch=2))


def _grad(module_or_t: Any, name: str | None) -> Tensor | None:
    if name is None:
        return None
    t = attribute(module_or_t, name)
    t = t if isinstance(t, Tensor) else getattr(t, "value", None)
    return None if t is None or t.grad is None else t.grad.detach().reshape(-1).to(
        torch.float64)


@register(
    11, "differential",
    checks="matches torch.nn.BatchNorm1d/2d/3d and torch.nn.functional.batch_norm wherever both "
           "are defined: train/eval outputs under each grad mode, input/weight/bias gradients, "
           "running mean (and variance when the convention stores the unbiased one), "
           "num_batches_tracked; eval only where the target's running statistics were found "
           "(torch is given the same ones)",
    catches="any deviation from PyTorch's semantics that the oracle properties describe less "
            "directly (e.g. track_running_stats=False in eval, momentum=None)",
    tolerance="sum of both implementations' forward/gradient/stats tolerances",
    cases=_cases,
    requires=lambda ctx: None if ctx.target.variant is None else (
        f"the target declares variant {ctx.target.variant.describe()}: torch's BatchNorm is "
        f"not that variant (its own oracle judges it in the other properties)"),
)
def differential(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    conv, cfg, x, nd, mode = ctx.target.convention, case.config, case.x, case.ndim, case.mode
    bn = ctx.build(case)
    has_stats = bn.has_stats
    if not has_stats and not mode.training and cfg.track_running_stats:
        return  # its statistics are hidden from bncheck: torch cannot be given the same ones
    if has_stats:
        bn.set_stats(*drawn.installed)
    w, b = bn.params()
    ref: Any = _TORCH_BN[nd](case.num_features, eps=cfg.eps, momentum=conv.torch_momentum(
        cfg.momentum), affine=w is not None, track_running_stats=has_stats,
        bias=b is not None or w is None).to(case.dtype)
    _copy_into(bn, ref)
    start = bn.stats()
    bn.train(mode.training)
    ref.train(mode.training)
    use_batch = mode.training or not has_stats
    grad_on = mode.grad == "enabled"
    xt = x.detach().clone().requires_grad_(grad_on)
    xr = x.detach().clone().requires_grad_(grad_on)
    with mode.context():
        yt = bn.call(xt, what=f"a forward in {mode}")
        yr = ref(xr)
        rm = ref.running_mean.detach().clone() if has_stats and start else None
        rv = ref.running_var.detach().clone() if has_stats and start else None
        rw = ref.weight.detach() if w is not None else None
        rb = ref.bias.detach() if b is not None else None
        if rm is not None and rv is not None and start is not None:
            rm.copy_(start[0])
            rv.copy_(start[1])
        factor = 1.0 if cfg.momentum is None else conv.torch_momentum(cfg.momentum)
        yf = F.batch_norm(x, rm, rv, rw, rb, training=use_batch,
                          momentum=float(factor or 0.0), eps=cfg.eps)
    if use_batch:
        mean, var = oracle.batch_stats(x)
        n_red = None
    else:
        assert start is not None
        mean, var = start
        n_red = 1
    tol = forward_tolerance(x, mean, var, eps=cfg.eps, n=n_red, weight=w, bias=b,
                            dtype=case.dtype)
    what = f"{mode} output"
    checks.close(yt, yr.detach(), tol + tol, f"{what} vs. torch.nn.{type(ref).__name__}")
    checks.close(yt, yf, tol + tol, f"{what} vs. torch.nn.functional.batch_norm")
    if has_stats and mode.training and start is not None and rm is not None and rv is not None:
        _compare_stats(ctx, bn, ref, case, start, mean, var, rm, rv, checks)
    if grad_on:
        _compare_grads(bn, ref, xt, xr, yt, yr, mean, var, cfg.eps, use_batch, case, checks)


def _compare_stats(ctx: Context, bn: Adapted, ref: Any, case: BNCase,
                   start: tuple[Tensor, Tensor], mean: Tensor, var: Tensor, rm: Tensor,
                   rv: Tensor, checks: Checks) -> None:
    conv, cfg, x = ctx.target.convention, case.config, case.x
    n = oracle.count_per_channel(x.shape)
    # Each side rounds to its own statistics' dtype (the target's may be float64 while
    # torch.nn's follow the input dtype): the sum of both bounds.
    bounds = [stats_tolerance(x, start[0], start[1], mean, var,
                              weight=conv.batch_weight(cfg.momentum, 1),
                              correction=TORCH.correction(n), stat_dtype=sdt)
              for sdt in (bn.stat_dtype() or torch.float32, ref.running_mean.dtype)]
    tm, tv = bounds[0][0] + bounds[1][0], bounds[0][1] + bounds[1][1]
    got = bn.require_stats()
    for label, other_m, other_v in ((type(ref).__name__, ref.running_mean, ref.running_var),
                                    ("functional.batch_norm", rm, rv)):
        checks.close(got[0], other_m.detach().to(torch.float64), tm,
                     f"running_mean vs. {label}")
        if conv.running_var == "unbiased" and conv.running_stat == "var":
            checks.close(got[1], other_v.detach().to(torch.float64), tv,
                         f"running_var vs. {label}")
    count = bn.num_batches_tracked()
    checks.that(count is None or count == int(ref.num_batches_tracked),
                f"num_batches_tracked is {count}, torch.nn.{type(ref).__name__} has "
                f"{int(ref.num_batches_tracked)}")


def _copy_into(bn: Adapted, ref: Any) -> None:
    with torch.no_grad():
        w, b = bn.params()
        if w is not None:
            ref.weight.copy_(w)
        if b is not None:
            ref.bias.copy_(b)
        stats = bn.stats()
        if stats is not None:
            ref.running_mean.copy_(stats[0])
            ref.running_var.copy_(stats[1])


def _compare_grads(bn: Adapted, ref: Any, xt: Tensor, xr: Tensor, yt: Tensor, yr: Tensor,
                   mean: Tensor, var: Tensor, eps: float, training: bool, case: BNCase,
                   checks: Checks) -> None:
    g = torch.cos(torch.arange(yr.numel(), dtype=torch.float64) * 1.3).reshape(yr.shape)
    w, _ = bn.params()
    bn.backward(yt, g.to(yt.dtype), what="backward")
    yr.backward(g.to(yr.dtype))
    tx, tw, tb = gradient_tolerances(xr, mean, var, eps=eps, grad=g, weight=w,
                                     training=training, dtype=case.dtype)
    if xt.grad is None:
        raise PropertyFailure("the input received no gradient")
    assert xr.grad is not None
    checks.close(xt.grad, xr.grad, tx + tx, f"input gradient ({case.mode}) vs. torch.nn")
    for name, ref_name, tol in ((bn.weight_name, "weight", tw), (bn.bias_name, "bias", tb)):
        if name is None:
            continue
        got = _grad(bn.module, name)
        if got is None:
            checks.fail(f"{name} received no gradient in {case.mode}")
            continue
        want = _grad(ref, ref_name)
        assert want is not None
        checks.close(got, want, tol + tol, f"{name} gradient ({case.mode}) vs. torch.nn")
