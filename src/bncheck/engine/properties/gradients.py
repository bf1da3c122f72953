"""Gradients: float64 gradcheck for input, weight and bias; zero per-channel input-grad sums."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted, attribute
from bncheck.engine.properties._base import Checks, Context, PropertyCase, register
from bncheck.engine.properties._tolerance import SAFETY, gradient_tolerances, roundoff


def _cases(ctx: Context) -> st.SearchStrategy[PropertyCase]:
    # Small inputs (gradcheck costs two forwards per element) of well-conditioned channels:
    # finite differences of a near-constant channel are dominated by 1/sqrt(eps).
    return ctx.with_stats(ctx.cases(dtypes=(torch.float64,), grad_modes=["enabled"],
                                    max_batch=4, max_channels=3, max_side=2,
                                    kinds=["standard"]))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@register(
    7, "gradients",
    checks="float64 gradcheck of the output with respect to input, weight and bias (train and "
           "eval), each forward from the same module state; in training the input gradient "
           "sums to zero over each channel",
    catches="hand-written backward with a missing or wrong term, non-differentiable steps, "
            "gradients flowing through detached statistics",
    tolerance="gradcheck defaults (eps=1e-6, atol=1e-5, rtol=1e-3); zero sum: n^2 x float64 "
              "roundoff x the size of the gradient terms, x8",
    cases=_cases,
    requires=lambda ctx: ctx.facts.computes_in_float32 and (
        f"{ctx.facts.computes_in_float32}: gradcheck's finite differences need float64 "
        f"arithmetic") or (None if torch.float64 in ctx.dtypes else (
        "needs float64 (gradcheck's finite differences); requested dtypes: "
        + ", ".join(str(d).removeprefix("torch.") for d in ctx.dtypes))),
)
def gradients(ctx: Context, drawn: PropertyCase, checks: Checks) -> None:
    case = drawn.case
    training = case.mode.training
    bn = ctx.build(case, dtype=torch.float64)
    if bn.has_stats and drawn.installed is not None:
        bn.set_stats(*drawn.installed)
    bn.train(training)
    x = case.x.to(torch.float64).detach().clone().requires_grad_(True)
    names = bn.param_names()
    keys = [bn.param_key(n) for n in names]
    leaves = [attribute(bn.module, n) for n in names]
    leaves = [(p.value if not isinstance(p, Tensor) else p).detach().clone().requires_grad_(True)
              for p in leaves]
    # A gradient is that of a function: every forward starts from the same state. Running
    # statistics a training forward moves are put back, so an output that (wrongly) reads them
    # is still a fixed function of (x, weight, bias) here; train_forward owns that defect.
    state = bn.snapshot()
    mode = "train" if training else "eval"

    def f(x_: Tensor, *ps: Tensor) -> Tensor:
        bn.restore(state)
        return bn.functional(x_, dict(zip(keys, ps, strict=True)),
                             what=f"a {mode} forward under gradcheck")

    label = ["input", *names]
    variant = ctx.target.variant
    if training and variant is not None and variant.name == "batch-renorm":
        # r and d are constants to the gradient (the paper's stop_gradient): finite differences
        # move them, so the gradients are compared with the oracle's instead of gradcheck.
        bn.restore(state)
        _renorm_gradients(bn, x, names, leaves, f, case.config.eps, checks)
        return
    try:
        bn.gradcheck(f, (x, *leaves), what="gradcheck", eps=1e-6, atol=1e-5, rtol=1e-3,
                     raise_exception=True)
    except GradcheckError as e:
        checks.fail(f"gradcheck ({mode} mode, inputs: {', '.join(label)}): {_first_line(e)}")
        return
    if not training:
        return
    y = f(x, *leaves)
    g = torch.cos(torch.arange(y.numel(), dtype=torch.float64) * 1.7).reshape(y.shape)
    dx = bn.grad(y, x, g, what="backward")
    weight = leaves[0].detach() if names and bn.weight_name is not None else None
    failure = zero_sum_failure(x.detach(), dx, g, case.config.eps, weight)
    if failure:
        checks.fail(failure)


def zero_sum_failure(x: Tensor, dx: Tensor, g: Tensor, eps: float,
                     weight: Tensor | None) -> str | None:
    """Why the training input gradient ``dx`` (for output gradient ``g``) does not sum to zero
    over each channel, or None when it does within its rounding bound (float64)."""
    dims = oracle.reduce_dims(x.dim())
    n = oracle.count_per_channel(x.shape)
    sums = dx.sum(dim=dims)
    # dx = weight / s * (g - mean(g) - xhat * mean(g * xhat)): its terms, not dx itself (which
    # cancels to ~0 for n = 2), set the rounding error; each term is a sum of n values.
    _, var = oracle.batch_stats(x)
    xhat = (x - x.mean(dim=dims, keepdim=True)) / oracle.channel_view(
        torch.sqrt(var + eps), x.dim())
    terms = (g.abs().amax(dim=dims) * (2 + xhat.square().amax(dim=dims))
             / torch.sqrt(var + eps))
    if weight is not None:
        terms = terms * weight.reshape(-1).abs()
    bound = SAFETY * n * n * roundoff(torch.float64) * terms + 1e-300
    bad = sums.abs() > bound
    if not bool(bad.any()):
        return None
    c = int(bad.nonzero()[0])
    return (f"training input gradient does not sum to zero over channel {c}: sum = "
            f"{float(sums[c]):.6g} (up to {float(bound[c]):.3g} allowed); the gradient through "
            f"the batch mean is missing or wrong")


def _renorm_gradients(bn: Adapted, x: Tensor, names: list[str], leaves: list[Tensor],
                      f: Callable[..., Tensor], eps: float, checks: Checks) -> None:
    """Batch Renorm's training gradients against its float64 oracle's (r, d held constant)."""
    from bncheck.engine.variants import renorm_train

    variant = bn.target.variant
    assert variant is not None
    args = variant.kwargs
    running_mean, running_var = bn.require_stats()
    count = bn.num_batches_tracked() or 0
    y = f(x, *leaves)
    g = torch.cos(torch.arange(y.numel(), dtype=torch.float64) * 1.7).reshape(y.shape)
    got = bn.invoke("backward", torch.autograd.grad, y, [x, *leaves], g)
    xo = x.detach().clone().requires_grad_(True)
    by_name = dict(zip(names, leaves, strict=True))
    wo = (by_name[bn.weight_name].detach().reshape(-1).clone().requires_grad_(True)
          if bn.weight_name in by_name else None)
    bo = (by_name[bn.bias_name].detach().reshape(-1).clone().requires_grad_(True)
          if bn.bias_name in by_name else None)
    sigma = running_var.sqrt() if bn.stores_std else torch.sqrt(running_var + eps)
    yo = renorm_train(xo, eps=eps, running_mean=running_mean, running_std=sigma,
                      r_max=args["r_max"], d_max=args["d_max"], warm=count < args["warmup"],
                      weight=wo, bias=bo)
    want = [t for t in (xo, wo, bo) if t is not None]
    exp = torch.autograd.grad(yo, want, g)
    mean, var = oracle.batch_stats(x)
    tdx, tdw, tdb = gradient_tolerances(x, mean, var, eps=eps, grad=g,
                                        weight=None if wo is None else wo.detach(),
                                        training=True, dtype=torch.float64)
    tdx = tdx.scaled(args["r_max"], "r up to r_max multiplies the input gradient")
    expected = {"input": exp[0]}
    tols = {"input": tdx}
    k = 1
    for name, t, tol in ((bn.weight_name, wo, tdw), (bn.bias_name, bo, tdb)):
        if t is not None and name is not None:
            expected[name], tols[name] = exp[k], tol
            k += 1
    for (label, e), gt in zip(expected.items(), got, strict=True):
        checks.close(gt.reshape(e.shape), e, tols[label],
                     f"training gradient of {label} (batch-renorm: r and d held constant)")
