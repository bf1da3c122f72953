"""Rendering shared by ``bncheck export``, ``check`` and ``gate``: the verification table."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bncheck.engine.compare import Tolerance
from bncheck.onnx._report import node_text
from bncheck.onnx.placement import placement_line
from bncheck.onnx.verify import Report

_STYLE = {"ok": "green", "FAIL": "bold red", "skipped": "yellow", "n/a": "yellow"}


def num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def tol_text(t: Tolerance | None) -> str:
    if t is None:
        return "-"
    per_max = getattr(t, "atol_per_max", 0.0)
    if per_max:
        return f"{t.rtol:.2g}/{t.atol:.2g}|{per_max:.0%}max"
    return f"{t.rtol:.2g} / {t.atol:.2g}"


def verdict(v: str) -> str:
    return f"[{_STYLE.get(v, '')}]{v}[/]"


def render_report(con: Console, report: Report, *, title: str) -> None:
    """The table (check, runtime, level, batch, errors, tolerance, verdict) and a summary.

    Every name from the graph or a runtime is escaped: a node or file named ``bn [/]x`` is text,
    not Rich markup (it raised ``MarkupError``).
    """
    table = Table(title=escape(title), title_justify="left")
    for col, just in (("check", "left"), ("runtime", "left"), ("optimization", "left"),
                      ("batch", "right"), ("max abs", "right"), ("max rel", "right"),
                      ("rtol / atol", "left"), ("verdict", "left")):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    skipped = [r for r in report.rows if r.verdict in ("skipped", "n/a")]
    for r in [r for r in report.rows if r not in skipped] + skipped:
        table.add_row(r.check, r.runtime, escape(r.level or "-"),
                      "-" if r.batch is None else str(r.batch),
                      num(r.max_abs), num(r.max_rel), tol_text(r.tolerance), verdict(r.verdict))
    con.print(table)
    for r in skipped:
        con.print(escape(f"{r.verdict}: {r.runtime} {r.level}".rstrip() + f": {r.note}"))
    notes = sorted({f"{r.check} {r.runtime} {r.level}".rstrip() + f": {r.note}"
                    for r in report.rows if r.verdict == "FAIL" and r.note})
    for note in notes:
        con.print(f"[red]FAIL[/] {escape(note)}")
    con.print(escape(f"opset {report.opset}; " + "; ".join(report.structure)))
    for note in report.notes:
        con.print(escape(note))
    if report.placement:
        con.print(escape(placement_line(report.placement)))
    con.print(f"BatchNormalization nodes: {len(report.bn_nodes) or 'none'}")
    for node in report.bn_nodes:
        style = "[red]" if node.batch_statistics else ""
        con.print(f"  {style}{escape(str(node))}{'[/]' if style else ''}")
    for fold in [] if report.placement else report.folds:
        con.print(f"  {escape(str(fold))}")
    for name, op, module in report.batch_nodes:
        con.print(f"[red]batch-dependent node:[/] {escape(node_text(name, op, module))}")
    if isinstance(report.localization, str):
        con.print(f"[bold red]localization:[/] {escape(report.localization)}")
    elif report.localization is not None:
        con.print(f"[bold red]first diverging layer:[/] {escape(str(report.localization))}")
