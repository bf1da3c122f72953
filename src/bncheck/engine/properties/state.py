"""A fresh module's state (and what its reset methods restore); empty batches."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.engine.adapter import Adapted
from bncheck.engine.properties._base import (
    Checks,
    Context,
    PropertyCase,
    check_output,
    needs_stats,
    register,
)
from bncheck.engine.strategies import BNCase
from bncheck.engine.target import inherited_contract, inherited_failure
from bncheck.errors import PropertyFailure

#: What a fresh BatchNorm holds, in every convention bncheck knows (torch, ONNX, Keras, Flax):
#: running mean 0, running variance (and standard deviation) 1, weight 1, bias 0, no batches.
INITIAL = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}


def _cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return ctx.with_stats(ctx.cases(dtypes=(torch.float32,), training=True,
                                    grad_modes=["enabled"]))


def _expect_initial(bn: Adapted, checks: Checks, what: str, *, params: bool = True,
                    stats: bool = True) -> None:
    values: list[tuple[str, str, Tensor | None]] = []
    if params:
        w, b = bn.params()
        values += [("weight", bn.weight_name or "weight", w), ("bias", bn.bias_name or "bias", b)]
    if stats and bn.has_stats:
        mean, var = bn.require_stats()
        values += [("running_mean", bn.mean_name or "", mean),
                   ("running_var", bn.var_name or "", var)]
    for key, name, got in values:
        if got is None:
            continue
        want = INITIAL[key]
        note = ("; a fresh model in eval() divides by sqrt(running_var + eps)"
                if key == "running_var" else "")
        checks.that(bool((got == want).all()),
                    f"{what}: {name} is {got.tolist()}, expected {want:g} in every channel "
                    f"({key} of a fresh BatchNorm{note})")
    count = bn.num_batches_tracked()
    if stats and count is not None:
        checks.that(count == 0, f"{what}: num_batches_tracked is {count}, expected 0")


@register(
    12, "initial_state",
    checks="a fresh module holds running mean 0, running variance 1, weight 1, bias 0 and "
           "num_batches_tracked 0 (where it has them); reset_running_stats() and "
           "reset_parameters() restore them where present",
    catches="statistics initialised to zeros (a fresh model in eval divides by sqrt(eps)), "
            "uninitialised (torch.empty) parameters or statistics, resets that miss a tensor",
    tolerance="exact (initial values are set, not computed)",
    cases=_cases,
    requires=lambda ctx: None,
    trains=False,
)
def initial_state(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    c = case.config
    bn = ctx.target.build(case.num_features, ndim=case.ndim, eps=c.eps, momentum=c.momentum,
                          affine=c.affine, track_running_stats=c.track_running_stats,
                          bias=c.bias)
    _expect_initial(bn, checks, "a fresh module")
    for method, params in (("reset_running_stats", False), ("reset_parameters", True)):
        reset = getattr(bn.module, method, None)
        if not callable(reset):
            continue
        bn.set_params(case.weight, case.bias)
        if bn.has_stats:
            bn.set_stats(*drawn.installed)
            bn.train(True).call(case.x, what="a training forward before the reset")
        bn.invoke(f"module.{method}()", reset)
        _expect_initial(bn, checks, f"after {method}()", params=params, stats=not params)


def _empty_cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    return ctx.tracked_cases(training=True, grad_modes=["enabled"])


def _needs_declaration(ctx: Context) -> str | None:
    if ctx.facts.no_stats:
        return needs_stats(ctx)
    if not ctx.target.empty_batches:
        return ("the target does not declare that it accepts empty batches "
                "(empty_batches=True, --empty-batches; torch's BatchNorm classes do)")
    return None


def _empty(case: BNCase) -> Tensor:
    return torch.zeros((0, *case.shape[1:]), dtype=case.dtype)


@register(
    13, "empty_batch",
    checks="an empty batch (0, C, ...) in training returns an empty output and empty "
           "gradients, leaves the running statistics unchanged and counts the batch in "
           "num_batches_tracked (as torch does); in eval it returns an empty output",
    catches="crashes on an empty batch (a distributed rank that receives no samples), "
            "statistics turned into NaN by a mean over zero values",
    tolerance="exact (empty outputs, unchanged statistics)",
    cases=_empty_cases,
    requires=_needs_declaration,
)
def empty_batch(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    base = inherited_contract(ctx.target.obj)
    if base is None:
        _empty_batch(ctx, drawn, checks)
        return
    declaration = "empty_batches=False (--no-empty-batches)"
    own = Checks()
    try:
        _empty_batch(ctx, drawn, own)
    except PropertyFailure as e:  # the target raised: also a contract it inherits
        raise PropertyFailure(inherited_failure(base, str(e), declaration)) from None
    if own.failures:
        first, *rest = own.failures
        checks.fail(inherited_failure(base, first, declaration))
        for message in rest:
            checks.fail(message)


def _empty_batch(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    assert drawn.installed is not None
    bn = ctx.build(case)
    bn.set_stats(*drawn.installed)
    before = bn.require_stats()
    count = bn.num_batches_tracked()
    x = _empty(case).requires_grad_(True)
    y = bn.train(True).call(x, what="a training forward of an empty batch")
    check_output(y, x, "training output for an empty batch")
    after = bn.require_stats()
    for name, a, b in (("running_mean", before[0], after[0]), ("running_var", before[1],
                                                                  after[1])):
        checks.that(torch.equal(a, b),
                    f"an empty training batch changed {name}: {a.tolist()} -> {b.tolist()} "
                    f"(there is no batch statistic to blend in)")
    if count is not None:
        checks.that(bn.num_batches_tracked() == count + 1,
                    f"num_batches_tracked is {bn.num_batches_tracked()} after an empty training "
                    f"batch, torch counts it: expected {count + 1}")
    if y.requires_grad:
        dx = bn.grad(y, x, torch.ones_like(y), what="backward of an empty batch")
        checks.that(tuple(dx.shape) == tuple(x.shape),
                    f"input gradient of an empty batch has shape {tuple(dx.shape)}")
    ye = bn.train(False).call(_empty(case), what="an eval forward of an empty batch")
    check_output(ye, _empty(case), "eval output for an empty batch")
