"""Grad-mode independence: the mode comes from train()/eval(), never from autograd's state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from bncheck.engine import oracle
from bncheck.engine.properties._base import Checks, Context, PropertyCase, needs_stats, register
from bncheck.engine.properties._tolerance import forward_tolerance, stats_tolerance
from bncheck.engine.strategies import GRAD_MODES, Mode


@register(
    6, "grad_mode_independence",
    checks="in train mode no_grad and inference_mode give the same output and statistics update "
           "as grad enabled; in eval mode grad enabled gives the same output as no_grad and "
           "inference_mode",
    catches="train/eval chosen by torch.is_grad_enabled() instead of module.training",
    tolerance="forward_tolerance (and stats_tolerance) of two runs, summed",
    cases=lambda ctx: ctx.tracked_cases(grad_modes=["enabled"]),
    requires=needs_stats,
    trains=False,
)
def grad_mode_independence(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    training = drawn.case.mode.training
    modes = [Mode(training, grad) for grad in GRAD_MODES]  # grad enabled first
    ways = [("with grad enabled" if m.grad == "enabled" else f"under {m.grad}",
             f"a forward in {m}", lambda bn, m=m: m.context()) for m in modes]
    same_every_way(ctx, drawn, checks, ways, stat_names=("running_mean", "running_var"))


def same_every_way(ctx: Context, drawn: PropertyCase, checks: Checks,
                   ways: Sequence[tuple[str, str, Callable[[Any], AbstractContextManager[Any]]]],
                   *, stat_names: tuple[str, str], eval_stats_unchanged: bool = False) -> None:
    """The drawn case's forward gives the same output (and, in training, the same statistics
    update) each way it can run as the first way, within twice a run's tolerance.

    Each way is ``(how, what, enter)``: how it reads in a message ("under no_grad"), what the
    forward is called in an error, and ``enter(bn)``, which readies a freshly built ``bn`` and
    returns the context the forward runs in. ``stat_names``: the running mean's and variance's
    names in messages. ``eval_stats_unchanged``: also check that an eval forward each other
    way leaves the statistics exactly as installed. (The torch property ``grad_mode_independence``
    runs the grad modes; its Flax meaning runs eagerly and under ``jax.jit``.)
    """
    case = drawn.case
    assert drawn.installed is not None and len(ways) > 1
    training, cfg, x = case.mode.training, case.config, case.x
    outputs, stats = {}, {}
    for how, what, enter in ways:
        bn = ctx.build(case)
        context = enter(bn)
        bn.set_stats(*drawn.installed)
        start = bn.require_stats()
        bn.train(training)
        with context:
            y = bn.call(x, what=what)
        outputs[how] = y.detach().to(torch.float64)
        stats[how] = bn.require_stats()
    w, b = bn.params()
    if training:
        mean, var = oracle.batch_stats(x)
        tol = forward_tolerance(x, mean, var, eps=cfg.eps, weight=w, bias=b, dtype=case.dtype)
    else:
        tol = forward_tolerance(x, start[0], start[1], eps=cfg.eps, n=1, weight=w, bias=b,
                                dtype=case.dtype)
    mode_name = "train" if training else "eval"
    first = ways[0][0]
    others = [how for how, _, _ in ways[1:]]
    for how in others:
        checks.close(outputs[how], outputs[first], tol + tol,
                     f"{mode_name} output {how} vs. {first}")
    if training:
        conv = ctx.target.convention
        n = oracle.count_per_channel(x.shape)
        tm, tv = stats_tolerance(x, start[0], start[1], mean, var,
                                 weight=conv.batch_weight(cfg.momentum, 1),
                                 correction=conv.correction(n),
                                 stat_dtype=bn.stat_dtype() or torch.float32)
        for how in others:
            for i, (name, t) in enumerate(zip(stat_names, (tm, tv), strict=True)):
                checks.close(stats[how][i], stats[first][i], t + t,
                             f"{name} updated {how} vs. {first}")
    elif eval_stats_unchanged:
        for how in others:
            for i, name in enumerate(stat_names):
                checks.that(torch.equal(stats[how][i], start[i]),
                            f"the {name} changed in an eval forward {how}")
