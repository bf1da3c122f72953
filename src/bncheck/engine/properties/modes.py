"""Grad-mode independence: the mode comes from train()/eval(), never from autograd's state."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from bncheck.engine import oracle
from bncheck.engine.properties._base import Checks, Context, PropertyCase, needs_stats, register
from bncheck.engine.properties._tolerance import forward_tolerance, stats_tolerance
from bncheck.engine.strategies import GRAD_MODES, Mode


def _cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return ctx.with_stats(ctx.cases(grad_modes=["enabled"],
                                    configs=ctx.configs(track_running_stats=True)))


@register(
    6, "grad_mode_independence",
    checks="in train mode no_grad and inference_mode give the same output and statistics update "
           "as grad enabled; in eval mode grad enabled gives the same output as no_grad and "
           "inference_mode",
    catches="train/eval chosen by torch.is_grad_enabled() instead of module.training",
    tolerance="forward_tolerance (and stats_tolerance) of two runs, summed",
    cases=_cases,
    requires=needs_stats,
    trains=False,
)
def grad_mode_independence(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    training, cfg, x = case.mode.training, case.config, case.x
    outputs, stats = {}, {}
    for grad in GRAD_MODES:
        mode = Mode(training, grad)
        bn = ctx.build(case)
        bn.set_stats(*drawn.installed)
        start = bn.require_stats()
        bn.train(training)
        with mode.context():
            y = bn.call(x, what=f"a forward in {mode}")
        outputs[grad] = y.detach().to(torch.float64)
        stats[grad] = bn.require_stats()
    w, b = bn.params()
    if training:
        mean, var = oracle.batch_stats(x)
        tol = forward_tolerance(x, mean, var, eps=cfg.eps, weight=w, bias=b, dtype=case.dtype)
    else:
        tol = forward_tolerance(x, start[0], start[1], eps=cfg.eps, n=1, weight=w, bias=b,
                                dtype=case.dtype)
    mode_name = "train" if training else "eval"
    for grad in GRAD_MODES[1:]:
        checks.close(outputs[grad], outputs["enabled"], tol + tol,
                     f"{mode_name} output under {grad} vs. with grad enabled")
    if training:
        conv = ctx.target.convention
        n = oracle.count_per_channel(x.shape)
        tm, tv = stats_tolerance(x, start[0], start[1], mean, var,
                                 weight=conv.batch_weight(cfg.momentum, 1),
                                 correction=conv.correction(n),
                                 stat_dtype=bn.stat_dtype() or torch.float32)
        for grad in GRAD_MODES[1:]:
            checks.close(stats[grad][0], stats["enabled"][0], tm + tm,
                         f"running_mean updated under {grad} vs. with grad enabled")
            checks.close(stats[grad][1], stats["enabled"][1], tv + tv,
                         f"running_var updated under {grad} vs. with grad enabled")
