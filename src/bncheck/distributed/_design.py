"""One root cause per design for synchronised BatchNorms: ranks that never exchange statistics.

A common synchronised BatchNorm synchronises only under ``DataParallel`` (its replicate callback
wires the replicas of one process together); in a plain ``torch.distributed`` process it is a
per-rank BatchNorm. Every distributed property that depends on the global batch then fails,
each with its own numbers (or with the local BatchNorm refusing one value per channel). Before
the properties run, :func:`no_exchange` runs one probe batch whose ranks' rows come from
different distributions and compares each rank's training output with BatchNorm of its own
rows and of its group's global batch: outputs that are the local ones, and not the global
ones, are one ``sync_forward`` finding; the statistics-dependent properties' failures are its
consequences (as single-process verify does for a frozen or RealNVP-style layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bncheck.distributed._base import SyncContext, per_block, train_steps, upstream_gradient
from bncheck.distributed.cases import SyncCase
from bncheck.engine import oracle
from bncheck.engine.compare import compare
from bncheck.engine.properties._tolerance import forward_tolerance
from bncheck.engine.strategies import BNCase, BNConfig, Mode
from bncheck.errors import RankAbort

__all__ = ["OWNER", "NO_EXCHANGE", "CONSEQUENCES", "Design", "no_exchange", "local_only",
           "probe_case"]

#: The property whose finding the design is.
OWNER = "sync_forward"
#: How a consequence names its owner (``consequence of: ...``).
NO_EXCHANGE = "no rank exchanged statistics (sync_forward)"
#: The properties whose failures a per-rank BatchNorm explains: every one that compares with
#: the global batch (``sync_eval`` compares each rank with its own eval and is judged as usual).
CONSEQUENCES = frozenset({"sync_running_stats", "sync_input_grad", "sync_param_grad",
                          "sync_uneven", "sync_subgroups", "sync_reduced_precision"})
_HEAD = ("the ranks' outputs equal each one's local BatchNorm: no rank exchanged statistics (is "
         "it synchronised only under DataParallel?)")


@dataclass(frozen=True)
class Design:
    """The finding (``message``) and the probe case that showed it."""

    message: str
    case: SyncCase


def probe_case(ctx: SyncContext, *, rows: int = 4, channels: int = 3) -> SyncCase:
    """All ranks in one group, ``rows`` rows each; rank ``r``'s rows drawn around ``3 r`` with
    spread ``1 + r`` (seeded), so each rank's statistics are far from the global ones."""
    t = ctx.base.target
    fixed = t.fixed_flags
    conf = t.configurable
    dtypes = ctx.base.full_dtypes or ctx.base.dtypes or (torch.float32,)
    dtype = torch.float32 if torch.float32 in dtypes else dtypes[0]
    ndim = t.dims[0]
    world = ctx.max_world_size
    gen = torch.Generator().manual_seed(0)
    spatial = [3] * (ndim - 2)
    parts = [torch.randn((rows, channels, *spatial), generator=gen, dtype=torch.float64)
             * (1.0 + r) + 3.0 * r for r in range(world)]
    x = torch.cat(parts).to(dtype)
    config = BNConfig(eps=t.eps, momentum=t.momentum,
                      affine=True if "affine" in conf else fixed.get("affine", True),
                      track_running_stats=(True if "track_running_stats" in conf
                                           else fixed.get("track_running_stats", True)),
                      bias=True if "bias" in conf else fixed.get("bias", True))
    weight = torch.linspace(0.5, 1.5, channels, dtype=torch.float64)
    bias = torch.linspace(-0.25, 0.25, channels, dtype=torch.float64)
    case = BNCase(tuple(x.shape), dtype, Mode(True), config, x, weight, bias,
                  ("standard",) * channels, "contiguous")
    return SyncCase(case, (rows,) * world, (tuple(range(world)),))


def local_only(sc: SyncCase, outputs: Sequence[Tensor]) -> str | None:
    """Evidence that the ranks' training ``outputs`` are per-rank BatchNorms: each equals
    BatchNorm of the rank's own rows (within the forward tolerance for its own count), and
    some rank's differs from its group's global BatchNorm beyond the global tolerance; else
    ``None``."""
    c = sc.case
    w, b = (c.weight, c.bias) if c.config.affine else (None, None)
    expected = per_block(sc, upstream_gradient(c.shape))
    farthest: tuple[float, int] | None = None
    for r, (y, x) in enumerate(zip(outputs, sc.rank_inputs(), strict=True)):
        if tuple(y.shape) != tuple(x.shape) or x.shape[0] == 0:
            if tuple(y.shape) != tuple(x.shape):
                return None
            continue
        mean, var = oracle.batch_stats(x)
        tol = forward_tolerance(x, mean, var, eps=c.config.eps, weight=w, bias=b, dtype=c.dtype)
        local = oracle.normalize(x, mean, var, eps=c.config.eps, weight=w, bias=b)
        if compare(y, local, rtol=tol.rtol, atol=tol.atol, check_dtype=False) is not None:
            return None
        exp, where = expected[r]
        gtol = forward_tolerance(exp.x, exp.mean, exp.var, eps=c.config.eps, weight=w, bias=b,
                                 dtype=c.dtype)
        m = compare(y, exp.y[where], rtol=gtol.rtol, atol=gtol.atol, check_dtype=False)
        if m is not None and (farthest is None or m.max_abs > farthest[0]):
            farthest = (m.max_abs, r)
    if farthest is None:
        return None
    diff, r = farthest
    group = sc.group_of(r)
    return (f"On a probe batch of {sum(sc.sizes)} rows split {list(sc.sizes)} over ranks "
            f"{list(group)} (rank r's rows drawn around 3r, {c.describe().split(', x=')[0]}), "
            f"every rank's training output is BatchNorm of its own rows (within the forward "
            f"tolerance for its own count), and rank {r}'s differs from BatchNorm of the "
            f"group's {sum(sc.sizes[q] for q in group)} rows by up to {diff:.3g}.")


def no_exchange(ctx: SyncContext) -> Design | None:
    """Run the probe on the ranks; the finding when no rank exchanged statistics, else
    ``None`` (also when a rank raised or hung on it: the properties report that)."""
    sc = probe_case(ctx)
    try:
        results = ctx.run(sc, train_steps(sc))
    except RankAbort:
        return None
    evidence = local_only(sc, [res.steps[0].y for res in results])
    if evidence is None:
        return None
    return Design(f"{_HEAD}\n{evidence}\nThe failures of the properties that compare with the "
                  f"global batch ({', '.join(sorted(CONSEQUENCES))}) are its consequences; "
                  f"sync_eval is judged as usual. If the layer is meant to synchronise only "
                  f"under DataParallel, verify it as one process (bncheck verify without "
                  f"--world-size).", sc)
