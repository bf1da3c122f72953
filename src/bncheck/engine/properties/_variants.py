"""What the properties expect of a declared variant (:mod:`bncheck.engine.variants`): the training
output, its tolerance, and how many running-statistics updates one training call makes."""

from __future__ import annotations

import torch
from torch import Tensor

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted
from bncheck.engine.compare import Tolerance
from bncheck.engine.properties._tolerance import (
    SAFETY,
    accumulation_dtype,
    forward_tolerance,
    roundoff,
)
from bncheck.engine.variants import ghost_chunks, ghost_train, renorm_rd, renorm_train
from bncheck.errors import PropertyFailure

__all__ = ["variant_train", "updates_per_call", "pieces"]


def pieces(bn: Adapted, x: Tensor) -> tuple[Tensor, ...]:
    """The batches whose statistics one training call uses, in order: the virtual batches of a
    ghost BatchNorm, else ``(x,)``."""
    v = bn.target.variant
    if v is not None and v.name == "ghost":
        return ghost_chunks(x, v.virtual_batch)
    return (x,)


def updates_per_call(bn: Adapted, x: Tensor) -> int:
    """How many running-statistics updates (and ``num_batches_tracked`` counts) one training
    call on ``x`` makes: one per virtual batch for ghost BatchNorm, else one."""
    return len(pieces(bn, x))


def _max_tolerance(tols: list[Tolerance], why: str) -> Tolerance:
    atol: float | Tensor = tols[0].atol
    for t in tols[1:]:
        atol = torch.maximum(torch.as_tensor(atol), torch.as_tensor(t.atol))
    return Tolerance(max(t.rtol for t in tols), atol, f"{tols[0].reason}; {why}")


def variant_train(bn: Adapted, x: Tensor, eps: float, dtype: torch.dtype
                  ) -> tuple[Tensor, Tolerance]:
    """The training output the declared variant's oracle gives for ``x`` (with ``bn``'s weight
    and bias, and for Batch Renorm the running statistics and count before the call), and its
    tolerance."""
    v = bn.target.variant
    assert v is not None
    w, b = bn.params()
    if v.name == "ghost":
        chunks = ghost_chunks(x, v.virtual_batch)
        tols = [forward_tolerance(c, *oracle.batch_stats(c), eps=eps, weight=w, bias=b,
                                  dtype=dtype) for c in chunks]
        return (ghost_train(x, eps=eps, virtual_batch=v.virtual_batch, weight=w, bias=b),
                _max_tolerance(tols, f"per virtual batch of {v.virtual_batch} rows"))
    args = v.kwargs
    stats, count = bn.before_call
    if stats is None:
        raise PropertyFailure("batch-renorm's r and d need the running statistics before the "
                              "step, and none were found: declare their names")
    running_mean, running_var = stats
    sigma = running_var.sqrt() if bn.stores_std else torch.sqrt(running_var + eps)
    warm = (count or 0) < args["warmup"]
    y = renorm_train(x, eps=eps, running_mean=running_mean, running_std=sigma,
                     r_max=args["r_max"], d_max=args["d_max"], warm=warm, weight=w, bias=b)
    mean, var = oracle.batch_stats(x)
    if warm:
        return y, forward_tolerance(x, mean, var, eps=eps, weight=w, bias=b, dtype=dtype)
    r, d = renorm_rd(x, eps=eps, running_mean=running_mean, running_std=sigma,
                     r_max=args["r_max"], d_max=args["d_max"])
    g = w.abs() if w is not None else torch.ones_like(mean)
    tol = forward_tolerance(x, mean, var, eps=eps, weight=g * r, bias=b, dtype=dtype)
    # r carries the batch std's relative error again (x2); d = (mu_B - mu) / sigma the batch
    # mean's, n u max|x| / sigma, and its own rounding.
    n = oracle.count_per_channel(x.shape)
    u = roundoff(accumulation_dtype(dtype))
    big = x.detach().to(torch.float64).abs().amax(dim=oracle.reduce_dims(x.dim()))
    d_err = SAFETY * g * (n * u * (big + running_mean.abs()) / sigma + u * d.abs()
                          + roundoff(dtype) * d.abs())
    tol = tol.scaled(2.0, "r = sigma_B / sigma rounds as the batch std does")
    return y, Tolerance(tol.rtol, tol.atol + oracle.channel_view(d_err, x.dim()),
                        f"{tol.reason}; d: the batch mean's error / sigma, x{SAFETY:g}")
