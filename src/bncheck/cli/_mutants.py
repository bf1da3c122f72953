"""``bncheck mutants``: run the catalogue against the bundled buggy BatchNorms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from bncheck.cli._common import EXIT_FAILED, console, debug_option, handles_errors
from bncheck.cli._distributed import distributed_options


@click.command()
@click.option("--mutant", "names", multiple=True, metavar="NAME",
              help="Run only this mutant (repeatable).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]), default="ci",
              show_default=True, help="Hypothesis profile.")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--seed", type=int, default=0, show_default=True, help="Hypothesis seed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results as JSON here.")
@distributed_options(device=False)
@debug_option
@handles_errors
def mutants(names: tuple[str, ...], profile: str, examples: int | None, seed: int,
            json_path: Path | None, world_size: int | None, timeout: float,
            debug: bool) -> None:
    """Run the property catalogue against each bundled mutant and print the mutation score.

    A mutant is killed when some property fails on it; each should be killed by the property
    meant for it (listed first). With --world-size N, the distributed mutants against the
    distributed properties on N local processes. Exit status: 0 when every mutant is killed by
    its property.
    """
    from bncheck.mutants import run_mutants

    out = console()
    if world_size:
        from bncheck.cli._distributed import run_mutants as run_distributed

        results = run_distributed(list(names) or None, world_size=world_size, timeout=timeout,
                                  profile=profile, examples=examples, seed=seed)
    else:
        results = run_mutants(list(names) or None, profile=profile, examples=examples,
                              seed=seed)
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
    out.print(table)
    killed = sum(r.killed for r in results)
    meant = sum(r.killed_as_meant for r in results)
    total = len(results)
    out.print(f"Mutation score: {killed}/{total} ({100.0 * killed / total:.0f}%) killed; "
              f"{meant}/{total} by the property meant for them")
    if json_path is not None:
        json_path.write_text(json.dumps({
            "score": killed / total, "killed": killed, "killed_as_meant": meant, "total": total,
            "mutants": [{"name": r.mutant.name, "defect": r.mutant.defect,
                         "meant": r.mutant.killer, "killed_by": r.killed_by,
                         "seconds": r.seconds} for r in results]}, indent=2))
    if meant < total:
        sys.exit(EXIT_FAILED)
