"""Run the distributed property catalogue against a synchronised BatchNorm on N local ranks.

>>> from bncheck.distributed.verify import verify_distributed
>>> report = verify_distributed("bncheck:SyncBatchNorm", world_size=2,  # doctest: +SKIP
...                             properties=["sync_forward"], examples=5)
>>> report.ok                                                            # doctest: +SKIP
True

The ranks are started once per run (:class:`~bncheck.distributed.launcher.WorkerPool`) and fed
every Hypothesis example of every property; the parent draws the cases and judges the answers.
A value mismatch is shrunk as in single-process verify; a rank that dies, hangs or raises ends
its property at once with the rank and the reason (every rerun would need fresh processes).
A layer whose ranks never exchange statistics (:mod:`bncheck.distributed._design`) gets one
``sync_forward`` finding, and the failures of the properties it explains are its consequences.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bncheck.distributed._base import RankAbort, SyncContext, SyncProperty
from bncheck.distributed._design import CONSEQUENCES, NO_EXCHANGE, OWNER, no_exchange
from bncheck.distributed._worker import takes_process_group
from bncheck.distributed.launcher import DEFAULT_TIMEOUT, WorkerPool
from bncheck.distributed.properties import CATALOGUE, get
from bncheck.engine.adapter import Target
from bncheck.engine.declaration import Declaration
from bncheck.engine.properties import Context
from bncheck.engine.runner import (
    PropertyResult,
    Report,
    Status,
    _settings,
    prepare,
    resolve_dtypes,
    resolve_run,
)
from bncheck.engine.target import load_target
from bncheck.errors import InvalidArgument, TargetError
from bncheck.infra.validation import check_names

__all__ = ["verify_distributed", "target_spec", "refuse_on_device"]


def target_spec(target: str | Callable[..., Any]) -> str:
    """The ``module:Name`` or ``file.py:Name`` string the ranks import ``target`` with.

    Raises:
        InvalidArgument: an object no other process can import (defined in ``__main__`` or
            inside a function).
    """
    if isinstance(target, str):
        return target
    from bncheck.infra.workers import reimport_spec

    spec = reimport_spec(target)
    if spec is None:
        raise InvalidArgument(
            f"Expected target to be importable by the worker processes (a module-level class "
            f"or factory, or a 'file.py:Name' string), received target={target!r} "
            f"(module {getattr(target, '__module__', None)!r}, name "
            f"{getattr(target, '__qualname__', None)!r})")
    return spec


def refuse_on_device(obj: Any, device: str) -> None:
    """Raise :class:`TargetError` (one paragraph) for ``torch.nn.SyncBatchNorm`` on CPU."""
    if (device == "cpu" and isinstance(obj, type) and issubclass(obj, nn.SyncBatchNorm)
            and obj.forward is nn.SyncBatchNorm.forward):
        raise TargetError(
            f"{obj.__module__}.{obj.__qualname__} does not run on CPU, so it cannot be verified "
            f"here: with a process group initialised, its training forward raises "
            f"\"SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone\" "
            f"(torch {torch.__version__} synchronises only cuda, hpu, xpu and privateuse1 "
            f"tensors). Verify it with --device cuda on a "
            f"machine with GPUs, verify its CPU drop-in with `bncheck verify "
            f"bncheck:SyncBatchNorm --world-size N`, or run single-process `bncheck verify "
            f"torch.nn:SyncBatchNorm` (without a process group it is a plain BatchNorm).")


def _run_one(prop: SyncProperty, ctx: SyncContext, *, seed: int, config: Any) -> PropertyResult:
    from bncheck.engine.runner import run_property

    start, before = time.perf_counter(), ctx.examples
    try:
        return run_property(prop, ctx, seed=seed, config=config)  # type: ignore[arg-type]
    except RankAbort as e:
        return PropertyResult(prop.name, Status.FAILED, str(e), e.case.describe(),
                              ctx.examples - before, time.perf_counter() - start)


def verify_distributed(target: str | Callable[..., Any], *, world_size: int,
                       properties: Sequence[str] | None = None,
                       profile: str | None = None, examples: int | None = None,
                       seed: int | None = None, shrink: bool = True,
                       replay: Callable[[str, int], str] | None = None,
                       on_result: Callable[[PropertyResult], None] | None = None,
                       timeout: float = DEFAULT_TIMEOUT, device: str = "cpu",
                       pool: WorkerPool | None = None, label: str | None = None,
                       declaration: Declaration | None = None,
                       prepared: Target | None = None, **declared: Any) -> Report:
    """Run the distributed catalogue (or ``properties``) on ``world_size`` local ranks.

    Args:
        target: a ``file.py:Name`` / ``module:Name`` string or an importable class/factory; it
            is built in every rank as ``Name(num_features, ...)``, with ``process_group=`` when
            its signature takes one (else every case uses all ranks).
        world_size: ranks to start (2 or more); each case draws its own size up to this.
        properties, profile, examples, seed, shrink, replay, on_result: as
            :func:`bncheck.engine.runner.verify`.
        timeout: seconds a case may take on a rank before the rank counts as hung.
        device: ``"cpu"`` (gloo) or ``"cuda"``.
        pool: running ranks to reuse (its world size wins); else started and stopped here.
        label, declaration, declared: as :func:`bncheck.engine.runner.build_target` (every
            declaration travels to the ranks, which build the target as declared).
        prepared: the :class:`~bncheck.engine.adapter.Target` already built for ``target`` (the
        CLI's),
            with its declaration; further ``declaration``/``declared`` go over it.

    Raises:
        TargetError: the target cannot be imported, or cannot run on ``device``.
        InvalidArgument: a bad argument.
    """
    spec = target_spec(target)
    obj = load_target(spec)
    refuse_on_device(obj, device)
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("Expected a CUDA device for device='cuda', but "
                              "torch.cuda.is_available() is False on this machine")
    profile, seed = resolve_run(profile, examples, seed)
    wanted = () if properties is None else check_names(properties, "properties")
    chosen = [get(n) for n in wanted] if wanted else list(CATALOGUE)
    t = prepare(prepared if prepared is not None else obj, declaration, declared,
                label=label or (None if prepared is not None else spec))
    requested = resolve_dtypes(t.declaration)
    config = _settings(profile, examples, shrink)
    report = Report(f"{t.label} on {world_size if pool is None else pool.world_size} ranks",
                    t.convention.describe(), seed, profile,
                    declaration=t.declaration.to_json())
    own = pool is None
    pool = pool or WorkerPool(world_size, device=device, timeout=timeout)
    ctx = SyncContext(Context(t, requested), spec, pool, takes_process_group(obj))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool.start()
        explained = {OWNER, *CONSEQUENCES}
        design = no_exchange(ctx) if any(p.name in explained for p in chosen) else None
        owner = get(OWNER)
        if design is not None and owner not in chosen:  # the finding its consequences name
            chosen = [owner, *chosen]
        for prop in chosen:
            if design is not None and prop.name == OWNER:
                result = PropertyResult(OWNER, Status.FAILED, design.message,
                                        design.case.describe(), 1)
            else:
                result = _run_one(prop, ctx, seed=seed, config=config)
                if design is not None and prop.name in CONSEQUENCES and \
                        result.status is Status.FAILED:
                    result.consequence_of = NO_EXCHANGE
                    result.message = f"consequence of: {NO_EXCHANGE}\n{result.message}"
            if result.status in ("failed", "error") and replay is not None:
                result.replay = replay(prop.name, seed)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        torch.set_num_threads(threads)
        if own:
            pool.close()
    return report
