"""CLI glue for distributed verification: ``--world-size``, ``--timeout`` and ``--device`` on
``bncheck verify`` and ``bncheck mutants``, and the calls into :mod:`bncheck.distributed`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from bncheck.infra.validation import DEFAULT_TIMEOUT, RANK_TIMEOUT

F = TypeVar("F", bound=Callable[..., Any])

#: What ``bncheck verify --world-size N`` checks without a TARGET.
SYNC_REFERENCE = "bncheck:SyncBatchNorm"


def distributed_options(*, device: bool = True) -> Callable[[F], F]:
    """The options that switch a command to N local ranks."""

    def deco(fn: F) -> F:
        if device:
            fn = click.option(
                "--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                show_default=True, help="With --world-size: where the ranks run (cpu: gloo; "
                "cuda: NCCL with a GPU per rank, else gloo with CUDA tensors).")(fn)
        fn = click.option(
            "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
            help=f"Seconds one example may take before the target counts as hung: it is "
            f"stopped, the property fails with the case and where it was, and the run goes on "
            f"(default {DEFAULT_TIMEOUT:g}; with --world-size, {RANK_TIMEOUT:g} per case on "
            f"a rank; the Python API's timeout=None, no limit, has no CLI form).")(fn)
        fn = click.option(
            "--world-size", type=click.IntRange(min=2), metavar="N",
            help="Verify a synchronised BatchNorm on N local processes (torch.distributed, gloo "
            "on 127.0.0.1) with the distributed properties; TARGET defaults to "
            "bncheck.SyncBatchNorm.")(fn)
        return fn

    return deco


def check_property_names(names: Sequence[str]) -> None:
    """Unknown distributed property names are a usage error listing the known ones."""
    from bncheck.distributed.properties import get

    for name in names:
        get(name)


def run_verify(spec: str, target: Any, *, world_size: int, timeout: float, device: str,
               **kwargs: Any) -> Any:
    """:func:`bncheck.distributed.verify.verify_distributed` for the built ``target``."""
    from bncheck.distributed.verify import verify_distributed

    return verify_distributed(spec, world_size=world_size, timeout=timeout, device=device,
                              prepared=target, **kwargs)


def run_mutants(names: Sequence[str] | None, *, world_size: int, timeout: float,
                **kwargs: Any) -> Any:
    """:func:`bncheck.distributed.mutants.run_mutants`."""
    from bncheck.distributed.mutants import run_mutants as run

    return run(names, world_size=world_size, timeout=timeout, **kwargs)
