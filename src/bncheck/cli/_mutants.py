"""``bncheck mutants``: run the catalogue against the bundled buggy BatchNorms."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from bncheck.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    console,
    debug_option,
    err,
    handles_errors,
    status_line,
)
from bncheck.cli._distributed import distributed_options


@click.command()
@click.option("--mutant", "names", multiple=True, metavar="NAME",
              help="Run only this mutant (repeatable).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]), default="ci",
              show_default=True, help="Hypothesis profile.")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--seed", type=int, default=0, show_default=True, help="Hypothesis seed.")
@click.option("--every-property", is_flag=True,
              help="Run the whole catalogue against every mutant, to see everything that "
              "catches each (slower; by default a mutant meets the rest of the catalogue only "
              "when the property meant for it lets it survive).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the results as JSON here (checked before any work).")
@click.option("--framework", default="torch", show_default=True, metavar="NAME",
              help="Whose mutants: torch, or flax-nnx (the JAX mutants: Flax NNX BatchNorms "
              "with the torch mutants' defects; needs the jax extra).")
@distributed_options(device=False)
@debug_option
@handles_errors
def mutants(names: tuple[str, ...], profile: str, examples: int | None, seed: int,
            every_property: bool, json_path: Path | None, framework: str,
            world_size: int | None, timeout: float | None, debug: bool) -> None:
    """Run each bundled mutant against the property meant to kill it; print the mutation score.

    A mutant is killed when some property fails on it; each should be killed by the property
    meant for it. One that survives its property meets the rest of the catalogue, which names
    what catches it instead (--every-property: the whole catalogue against every mutant). With
    --world-size N, the distributed mutants against the distributed properties on N local
    processes; with --framework flax-nnx, the JAX mutants. Progress on a terminal, none when
    piped. Exit status: 0 when every mutant is
    killed by its property, 1 otherwise, 2 usage error, 130 Ctrl-C (the finished mutants are
    reported).
    """
    from bncheck.engine.mutants import MutantResult, mutants_of, run_mutants
    from bncheck.errors import InvalidArgument
    from bncheck.infra.io import check_output_path, write_json_atomic
    from bncheck.infra.validation import default_timeout

    bundled = mutants_of(framework)  # an unknown or mutant-less framework: refused, named
    if world_size and framework != "torch":
        raise InvalidArgument(f"Expected --framework torch with --world-size (the distributed "
                              f"mutants are torch's), received --framework={framework!r}")
    if json_path is not None:
        json_path = check_output_path(json_path, "--json")
    timeout = default_timeout(timeout, ranks=bool(world_size))  # nan and inf refused too
    if world_size:
        from bncheck.infra.workers import check_process_count

        check_process_count(world_size, "--world-size")
    done: list[MutantResult] = []
    out = console()
    try:
        if world_size:
            from bncheck.cli._distributed import run_mutants as run_distributed
            from bncheck.distributed.mutants import MUTANTS as DISTRIBUTED

            total = len(names or DISTRIBUTED)
        else:
            total = len(names or bundled)
        with status_line(out, total) as update:
            def finished(r: MutantResult) -> None:
                done.append(r)
                if len(done) < total:
                    update(f"mutants: {r.mutant.name} done, next {len(done) + 1} of {total}")

            update(f"mutants: 1 of {total}")
            if world_size:
                run_distributed(list(names) or None, world_size=world_size, timeout=timeout,
                                profile=profile, examples=examples, seed=seed,
                                every_property=every_property, on_result=finished)
            else:
                run_mutants(list(names) or None, framework=framework, profile=profile,
                            examples=examples, seed=seed, every_property=every_property,
                            on_result=finished, timeout=timeout)
    except KeyboardInterrupt:
        err(f"interrupted (Ctrl-C) after {len(done)} mutants"
            + (f" (finished: {', '.join(r.mutant.name for r in done)})" if done else "")
            + (f"; partial results written to {json_path}" if json_path else ""))
        if json_path is not None:
            write_json_atomic(json_path, {**_summary(done), "interrupted": True})
        sys.exit(EXIT_INTERRUPTED)
    out.print(_table(done))
    data = _summary(done)
    out.print(f"Mutation score: {data['killed']}/{data['total']} "
              f"({100.0 * data['score']:.0f}%) killed; {data['killed_as_meant']}/{data['total']} "
              f"by the property meant for them")
    if json_path is not None:
        write_json_atomic(json_path, data)
    if data["killed_as_meant"] < data["total"]:
        sys.exit(EXIT_FAILED)


def _summary(results: list[Any]) -> dict[str, Any]:
    total = len(results)
    killed = sum(r.killed for r in results)
    return {"score": killed / total if total else 0.0, "killed": killed,
            "killed_as_meant": sum(r.killed_as_meant for r in results), "total": total,
            "mutants": [{"name": r.mutant.name, "defect": r.mutant.defect,
                         "meant": r.mutant.killer, "killed_by": r.killed_by,
                         "seconds": r.seconds} for r in results]}


def _table(results: list[Any]) -> Table:
    table = Table()
    for col in ("mutant", "defect", "killed by", "time"):
        table.add_column(col)
    for r in results:
        others = [n for n in r.killed_by if n != r.mutant.killer]
        if r.killed_as_meant:
            cell = f"[green]{r.mutant.killer}[/]" + (f" (+{len(others)} more)" if others else "")
        elif r.killed:
            cell = f"[yellow]{', '.join(r.killed_by)}[/] (meant: {r.mutant.killer})"
        else:
            cell = f"[red]survived[/] (meant: {r.mutant.killer})"
        table.add_row(r.mutant.name, escape(r.mutant.defect), cell, f"{r.seconds:.1f}s")
    return table
