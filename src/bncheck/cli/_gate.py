"""``bncheck gate``: the CI regression gate over the goldens in exports/."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from bncheck.cli._common import console, debug_option, handles_errors, interrupted
from bncheck.errors import VerificationFailed


@click.command()
@click.option("--exports", "exports", type=click.Path(file_okay=False, path_type=Path),
              default=Path("exports"), show_default=True, help="The folder of goldens.")
@click.option("--variant", "only", multiple=True, metavar="NAME",
              help="Run only this variant (repeatable; default all).")
@click.option("--update", is_flag=True,
              help="Rewrite the goldens from the code (on purpose: review the diff).")
@debug_option
@handles_errors
def gate(exports: Path, only: tuple[str, ...], update: bool, debug: bool) -> None:
    """Re-create the exports from the code and compare with the goldens in exports/.

    LeNet-BN for bn=scratch and bn=torch, optimized and --keep-bn (dynamo exporter): the
    eager eval outputs and BatchNorm buffers, every runtime's outputs on the golden batch,
    batch independence, and the manifest's opset, input/output signature and BN placement,
    each within the stated tolerances. MONAI's resnet18 (2D, 32 x 32; skipped without MONAI):
    its goldens rebuilt from the code, a fresh export verified against the eager model on
    every runtime, its output fingerprint and structure against its manifest. Any drift
    fails with a report naming the output, the error and the tolerance. --update rewrites
    exports/ instead (only from exports that verify).

    Exit codes: 0 no drift (or goldens updated), 1 drift, 2 usage error, 130 interrupted.

    Example: bncheck gate            # from the repository root
    """
    from rich.table import Table

    from bncheck.cli._onnx_render import num, tol_text, verdict
    from bncheck.onnx.gate import run_gate

    con = console()
    started: list[str] = []

    def progress(name: str) -> None:
        started.append(name)
        con.print(f"gate: {name} ...", highlight=False)

    try:
        result = run_gate(exports, update=update, only=only, progress=progress)
    except KeyboardInterrupt:
        done = ", ".join(started[:-1]) or "none"
        interrupted((f"during {started[-1]}; finished: {done}" if started else "before the "
                     "first variant")
                    + (f"; goldens rewritten for: {done}, the others are as they were"
                       if update else "; gate writes no files"))
    groups: dict[str, dict[tuple[str, str, str], list]] = {}
    for variant, row in result.rows:
        groups.setdefault(variant, {}).setdefault((row.check, row.runtime, row.level),
                                                  []).append(row)
    for variant, checks in groups.items():
        table = Table(title=f"{variant} ({exports})", title_justify="left")
        for col in ("check", "runtime", "optimization", "batches", "max abs", "max rel",
                    "rtol / atol", "verdict"):
            table.add_column(col, no_wrap=True)
        skipped = []
        for (check, runtime, level), rows in checks.items():
            verdicts = {r.verdict for r in rows}
            if verdicts <= {"skipped", "n/a"}:
                skipped.append(f"{runtime} {level}".strip())
                continue
            errs = [(r.max_abs, r.max_rel) for r in rows if r.max_abs is not None]
            worst = max(errs) if errs else (None, None)
            batches = ",".join(str(r.batch) for r in rows if r.batch is not None) or "-"
            v = "FAIL" if "FAIL" in verdicts else "ok"
            table.add_row(check, runtime, level or "-", batches, num(worst[0]), num(worst[1]),
                          tol_text(rows[0].tolerance), verdict(v))
        con.print(table)
        if skipped:
            con.print(escape(f"skipped or not applicable here: {', '.join(skipped)}"))
    for why in result.skipped:
        con.print(escape(f"skipped: {why}"))  # "[models]" is text, not markup
    if update:
        con.print(escape("updated: " + ", ".join(str(p) for p in result.written)))
        return
    if not result.ok and not result.drift:  # nothing compared: not a pass
        from bncheck.errors import UsageError

        raise UsageError(f"gate: {result.verdict().reason}")
    if not result.ok:
        from bncheck.onnx.runtimes import TOLERANCES

        more = len(result.drift) - 6
        raise VerificationFailed(
            f"gate: drift from the goldens in {exports}\n" + "\n".join(result.drift[:6])
            + (f"\n... and {more} more" if more > 0 else "")
            + f"\nwhy these tolerances: eager vs golden: {TOLERANCES['golden'].reason}; "
            f"runtimes: {TOLERANCES['onnxruntime'].reason}"
            + "\nif the change is intended: bncheck gate --update, and commit exports/")
    con.print(f"[green]gate passed[/]: no drift from the goldens in {exports}")
