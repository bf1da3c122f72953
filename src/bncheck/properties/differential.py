"""Differential: the target against torch.nn.BatchNormNd and torch.nn.functional.batch_norm."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

from bncheck import oracle
from bncheck.adapter import Adapted, PropertyFailure
from bncheck.properties._base import Context, expect_close, register, stat_values
from bncheck.properties._tolerance import forward_tolerance, gradient_tolerances, stats_tolerance
from bncheck.strategies import BNCase

_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _cases(ctx: Context) -> st.SearchStrategy[Any]:
    # min_batch=2 even in eval: with track_running_stats=False eval uses batch statistics.
    return ctx.cases(min_batch=2).flatmap(
        lambda c: st.tuples(st.just(c), stat_values(c.num_features)))


def _grad(module_or_t: Any, name: str | None) -> Tensor | None:
    if name is None:
        return None
    t = getattr(module_or_t, name)
    return None if t.grad is None else t.grad.detach().reshape(-1).to(torch.float64)


@register(
    11, "differential",
    checks="matches torch.nn.BatchNorm1d/2d/3d and torch.nn.functional.batch_norm wherever both "
           "are defined: train/eval outputs under each grad mode, input/weight/bias gradients, "
           "running mean (and variance when the convention stores the unbiased one), "
           "num_batches_tracked",
    catches="any deviation from PyTorch's semantics that the oracle properties describe less "
            "directly (e.g. track_running_stats=False in eval, momentum=None)",
    tolerance="sum of both implementations' forward/gradient/stats tolerances",
    cases=_cases,
)
def differential(ctx: Context, drawn: tuple[BNCase, tuple[Tensor, Tensor]]) -> None:
    case, (mean0, var0) = drawn
    conv, cfg, x, nd = ctx.target.convention, case.config, case.x, case.ndim
    mode = case.mode
    bn = ctx.build(case)
    has_stats = bn.has_stats
    if has_stats:
        bn.set_stats(mean0, var0)
    ref: Any = _TORCH_BN[nd](case.num_features, eps=cfg.eps, momentum=conv.torch_momentum(
        cfg.momentum), affine=bn.affine, track_running_stats=has_stats).to(case.dtype)
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
        w, b = (ref.weight.detach(), ref.bias.detach()) if bn.affine else (None, None)
        if rm is not None and rv is not None:
            rm.copy_(start[0] if start else rm)
            rv.copy_(start[1] if start else rv)
        factor = 1.0 if cfg.momentum is None else conv.torch_momentum(cfg.momentum)
        yf = F.batch_norm(x, rm, rv, w, b, training=use_batch, momentum=float(factor or 0.0),
                          eps=cfg.eps)
    if use_batch:
        mean, var = oracle.batch_stats(x)
        n_red = None
    else:
        assert start is not None
        mean, var = start
        n_red = 1
    params = bn.params()
    pw, pb = params if params is not None else (None, None)
    tol = forward_tolerance(x, mean, var, eps=cfg.eps, n=n_red, weight=pw, bias=pb,
                            dtype=case.dtype)
    what = f"{mode} output"
    expect_close(yt, yr.detach(), tol + tol, f"{what} vs. torch.nn.{type(ref).__name__}")
    expect_close(yt, yf, tol + tol, f"{what} vs. torch.nn.functional.batch_norm")
    if has_stats and mode.training and start is not None and rm is not None and rv is not None:
        n = oracle.count_per_channel(x.shape)
        # Each side rounds to its own statistics' dtype (the target's may be float64 while
        # torch.nn's follow the input dtype): the sum of both bounds.
        bounds = [stats_tolerance(x, start[0], start[1], mean, var,
                                  weight=conv.batch_weight(cfg.momentum, 1),
                                  correction=n / (n - 1), stat_dtype=sdt)
                  for sdt in (bn.stat_dtype() or torch.float32, ref.running_mean.dtype)]
        tm, tv = bounds[0][0] + bounds[1][0], bounds[0][1] + bounds[1][1]
        got = bn.require_stats()
        for label, other_m, other_v in ((type(ref).__name__, ref.running_mean, ref.running_var),
                                        ("functional.batch_norm", rm, rv)):
            expect_close(got[0], other_m.detach().to(torch.float64), tm,
                         f"running_mean vs. {label}")
            if conv.running_var == "unbiased":
                expect_close(got[1], other_v.detach().to(torch.float64), tv,
                             f"running_var vs. {label}")
        count = bn.num_batches_tracked()
        if count is not None and count != int(ref.num_batches_tracked):
            raise PropertyFailure(f"num_batches_tracked is {count}, torch.nn."
                                  f"{type(ref).__name__} has {int(ref.num_batches_tracked)}")
    if grad_on:
        _compare_grads(bn, ref, xt, xr, yt, yr, mean, var, cfg.eps, use_batch, case)


def _copy_into(bn: Adapted, ref: Any) -> None:
    with torch.no_grad():
        params = bn.params()
        if params is not None:
            ref.weight.copy_(params[0])
            ref.bias.copy_(params[1])
        stats = bn.stats()
        if stats is not None:
            ref.running_mean.copy_(stats[0])
            ref.running_var.copy_(stats[1])


def _compare_grads(bn: Adapted, ref: Any, xt: Tensor, xr: Tensor, yt: Tensor, yr: Tensor,
                   mean: Tensor, var: Tensor, eps: float, training: bool, case: BNCase) -> None:
    g = torch.cos(torch.arange(yr.numel(), dtype=torch.float64) * 1.3).reshape(yr.shape)
    params = bn.params()
    try:
        yt.backward(g.to(yt.dtype))
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        raise PropertyFailure(f"the target raised {type(e).__name__} in backward: {e}") from None
    yr.backward(g.to(yr.dtype))
    tx, tw, tb = gradient_tolerances(xr, mean, var, eps=eps, grad=g,
                                     weight=params[0] if params else None, training=training,
                                     dtype=case.dtype)
    if xt.grad is None:
        raise PropertyFailure("the input received no gradient")
    assert xr.grad is not None
    expect_close(xt.grad, xr.grad, tx + tx, f"input gradient ({case.mode}) vs. torch.nn")
    if bn.affine:
        for name, ref_name, tol in ((bn.weight_name, "weight", tw), (bn.bias_name, "bias", tb)):
            got = _grad(bn.module, name)
            if got is None:
                raise PropertyFailure(f"{name} received no gradient in {case.mode}")
            want = _grad(ref, ref_name)
            assert want is not None
            expect_close(got, want, tol + tol, f"{name} gradient ({case.mode}) vs. torch.nn")
