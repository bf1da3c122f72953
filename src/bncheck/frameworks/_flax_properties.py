"""What the catalogue's torch-only properties mean for a Flax BatchNorm, and which do not apply.

Each meaning is a property ``run(ctx, drawn, checks)`` over the same drawn cases as the torch
property it stands for (same name, same replay line), judged by the same oracle and tolerances:

* ``grad_mode_independence``: JAX has no grad mode; the state a mode could hide in is tracing.
  The meaning: the same output and statistics update under ``jax.jit`` as eagerly.
* ``stats_are_buffers``: JAX has no buffers; the meaning: the running statistics live in the
  state collection (``batch_stats``, ``nnx.BatchStat``), not among the parameters that
  ``jax.grad`` differentiates and an optimizer updates, and ``.to(float64)`` casts them.
* ``gradients``: ``jax.test_util.check_grads`` (reverse mode, float64, gradcheck's step and
  tolerances) where torch runs ``gradcheck``, and the per-channel zero sum of the input
  gradient from ``jax.vjp``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from bncheck.engine.properties._base import Checks, Context, PropertyCase
from bncheck.engine.properties.gradients import zero_sum_failure
from bncheck.engine.properties.modes import same_every_way
from bncheck.frameworks.flax import STATS, FlaxAdapted, to_jax, to_torch, x64

__all__ = ["MEANINGS", "SKIPPED"]

#: Properties that have no meaning for a Flax target, and why.
SKIPPED: dict[str, str] = {
    "differential": "compares against torch.nn.BatchNorm through torch autograd; a Flax "
                    "target is judged by the float64 oracle (train_forward, eval_forward) and "
                    "its gradients by jax.test_util.check_grads (gradients)",
}


def _jit_independence(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    def jit(on: bool) -> Callable[[Any], AbstractContextManager[None]]:
        def enter(bn: Any) -> AbstractContextManager[None]:
            assert isinstance(bn, FlaxAdapted)
            bn.jit = on
            return nullcontext()
        return enter

    same_every_way(ctx, drawn, checks, [("eagerly", "a forward eagerly", jit(False)),
                                        ("under jax.jit", "a forward under jax.jit", jit(True))],
                   stat_names=("running mean", "running variance"), eval_stats_unchanged=True)


def _stats_in_state(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    import jax

    case = drawn.case
    bn = ctx.build(case, dtype=torch.float32)
    assert isinstance(bn, FlaxAdapted)
    bn.require_stats()
    if bn.stat_collection != STATS:
        kind = "nnx.Param" if bn.stat_collection == "params" else "a variable type other than " \
                                                                  "nnx.BatchStat"
        checks.fail(
            f"the running statistics {bn.mean_name}/{bn.var_name} live in the "
            f"{bn.stat_collection!r} collection, not in {STATS!r}"
            + (f" ({kind} in NNX)" if ctx.target.framework == "flax-nnx" else "")
            + ": jax.grad over the parameters differentiates them and an optimizer updates them"
            if bn.stat_collection == "params" else
            f"the running statistics {bn.mean_name}/{bn.var_name} live in the "
            f"{bn.stat_collection!r} collection, not in {STATS!r}: code that saves, restores "
            f"or syncs batch statistics (nnx.BatchStat filters, mutable=['batch_stats']) "
            f"misses them")
    bn.jit = True
    bn.train(True).call(case.x.to(torch.float32), what="a training forward under jax.jit")
    leaked = [n for n, a in bn.variables.get(bn.stat_collection or STATS, {}).items()
              if not isinstance(a, jax.Array) or isinstance(a, jax.core.Tracer)]
    checks.that(not leaked, f"after a training step under jax.jit {leaked} hold tracers, not "
                            f"arrays: the update escaped the traced function")
    bn.to(torch.float64)
    for name, t in bn.stat_tensors().items():
        checks.that(t.dtype == torch.float64,
                    f"casting the variables to float64 left {name} in "
                    f"{str(t.dtype).removeprefix('torch.')}")


def _check_grads(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    import jax
    from jax.test_util import check_grads

    case = drawn.case
    training = case.mode.training
    bn = ctx.build(case, dtype=torch.float64)
    assert isinstance(bn, FlaxAdapted)
    if bn.has_stats and drawn.installed is not None:
        bn.set_stats(*drawn.installed)
    bn.train(training)
    bn.jit = True  # check_grads runs many forwards: compiled once per shape
    names = bn.param_names()
    mode = "train" if training else "eval"
    start = bn.variables
    x = case.x.to(torch.float64)

    def f(xj: Any, *ps: Any) -> Any:
        # Every call starts from the same variables: the output is a function of (x, params).
        variables = dict(start)
        if names:
            variables["params"] = {**start["params"], **dict(zip(names, ps, strict=True))}
        y, _ = bn._apply(variables, xj, training)
        return y

    with x64():
        xj = to_jax(bn.to_target_layout(x))
        ps = [start["params"][n] for n in names]
        try:
            bn.invoke(f"a {mode} forward under check_grads", check_grads, f, (xj, *ps), 1,
                      modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-3,
                      passthrough=(AssertionError,))
        except AssertionError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "AssertionError"
            checks.fail(f"jax.test_util.check_grads ({mode} mode, inputs: "
                        f"{', '.join(['input', *names])}): {first}")
            return
        if not training:
            return
        y, vjp = bn.invoke("jax.vjp of a training forward", jax.vjp, lambda a: f(a, *ps), xj)
        yt = bn.from_target_layout(to_torch(y))
        g = torch.cos(torch.arange(yt.numel(), dtype=torch.float64) * 1.7).reshape(yt.shape)
        (dxj,) = bn.invoke("the backward (jax.vjp)", vjp, to_jax(bn.to_target_layout(g)))
        dx = bn.from_target_layout(to_torch(dxj))
    w, _ = bn.params()
    failure = zero_sum_failure(x, dx, g, case.config.eps, w)
    if failure:
        checks.fail(failure)


#: A torch-only property's meaning for a Flax target, by the property's name.
MEANINGS = {
    "grad_mode_independence": _jit_independence,
    "stats_are_buffers": _stats_in_state,
    "gradients": _check_grads,
}
