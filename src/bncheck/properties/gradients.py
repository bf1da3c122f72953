"""Gradients: float64 gradcheck for input, weight and bias; zero per-channel input-grad sums."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError
from torch.func import functional_call

from bncheck import oracle
from bncheck.adapter import PropertyFailure, TargetRaised
from bncheck.properties._base import Context, register, stat_values
from bncheck.properties._tolerance import SAFETY, roundoff


def _cases(ctx: Context) -> st.SearchStrategy[Any]:
    # Small inputs (gradcheck costs two forwards per element) of well-conditioned channels:
    # finite differences of a near-constant channel are dominated by 1/sqrt(eps).
    return ctx.cases(dtypes=(torch.float64,), grad_modes=["enabled"], max_batch=4,
                     max_channels=3, max_side=2, kinds=["standard"]).flatmap(
        lambda c: st.tuples(st.just(c), stat_values(c.num_features)))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@register(
    7, "gradients",
    checks="float64 gradcheck of the output with respect to input, weight and bias (train and "
           "eval); in training the input gradient sums to zero over each channel",
    catches="hand-written backward with a missing or wrong term, non-differentiable steps, "
            "gradients flowing through detached statistics",
    tolerance="gradcheck defaults (eps=1e-6, atol=1e-5, rtol=1e-3); zero sum: n^2 x float64 "
              "roundoff x the size of the gradient terms, x8",
    cases=_cases,
    requires=lambda ctx: None,
)
def gradients(ctx: Context, drawn: tuple[Any, tuple[Tensor, Tensor]]) -> None:
    case, (mean0, var0) = drawn
    training = case.mode.training
    bn = ctx.build(case, dtype=torch.float64)
    if bn.has_stats:
        bn.set_stats(mean0, var0)
    bn.train(training)
    module = bn.module
    x = case.x.to(torch.float64).detach().clone().requires_grad_(True)
    names = [n for n in (bn.weight_name, bn.bias_name) if n is not None]
    leaves = []
    for name in names:
        p = getattr(module, name)
        leaves.append(p.detach().clone().requires_grad_(True))

    def f(x_: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(module, dict(zip(names, ps, strict=True)), (x_,))  # type: ignore[no-any-return]

    label = ["input", *names]
    try:
        torch.autograd.gradcheck(f, (x, *leaves), eps=1e-6, atol=1e-5, rtol=1e-3,
                                 raise_exception=True)
    except GradcheckError as e:
        raise PropertyFailure(f"gradcheck ({'train' if training else 'eval'} mode, "
                              f"inputs: {', '.join(label)}): {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        raise TargetRaised(f"the target raised {type(e).__name__} during gradcheck: "
                           f"{_first_line(e)}") from None
    if not training:
        return
    try:
        y = f(x, *leaves)
        g = torch.cos(torch.arange(y.numel(), dtype=torch.float64) * 1.7).reshape(y.shape)
        (dx,) = torch.autograd.grad(y, x, g)
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        raise TargetRaised(f"the target raised {type(e).__name__} in backward: "
                           f"{_first_line(e)}") from None
    dims = oracle.reduce_dims(x.dim())
    n = oracle.count_per_channel(x.shape)
    sums = dx.sum(dim=dims)
    # dx = weight / s * (g - mean(g) - xhat * mean(g * xhat)): its terms, not dx itself (which
    # cancels to ~0 for n = 2), set the rounding error; each term is a sum of n values.
    _, var = oracle.batch_stats(x)
    xhat = (x.detach() - x.detach().mean(dim=dims, keepdim=True)) / oracle.channel_view(
        torch.sqrt(var + case.config.eps), x.dim())
    terms = (g.abs().amax(dim=dims) * (2 + xhat.square().amax(dim=dims))
             / torch.sqrt(var + case.config.eps))
    if leaves:
        terms = terms * leaves[0].detach().reshape(-1).abs()
    bound = SAFETY * n * n * roundoff(torch.float64) * terms + 1e-300
    bad = sums.abs() > bound
    if bool(bad.any()):
        c = int(bad.nonzero()[0])
        raise PropertyFailure(
            f"training input gradient does not sum to zero over channel {c}: sum = "
            f"{float(sums[c]):.6g} (up to {float(bound[c]):.3g} allowed); the gradient through "
            f"the batch mean is missing or wrong")
