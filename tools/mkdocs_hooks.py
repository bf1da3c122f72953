"""The generated parts of the docs, rendered when the site is built (``mkdocs.yml``'s ``hooks``)
and checked by ``tests/unit/test_docs.py``.

A page holds a marker comment where a generated block goes:

- ``<!-- bncheck:catalogue -->``: the property catalogue, from the registry's own ``checks``,
  ``catches`` and ``tolerance`` texts (:data:`bncheck.engine.properties.CATALOGUE`), and the
  distributed catalogue (:data:`bncheck.distributed.properties.CATALOGUE`);
- ``<!-- bncheck:mutants -->``: the bundled mutants and the property meant to kill each;
- ``<!-- bncheck:bench-baseline -->``: the ratios in ``benchmarks/baseline.json``, as
  ``nox -s bench -- --update-baseline`` last wrote them.

``python tools/mkdocs_hooks.py --report-svg`` rewrites ``docs/img/report.svg``, the picture of a
real report in README.md (:func:`report_svg`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORT_SVG = ROOT / "docs" / "img" / "report.svg"
#: The command the README's picture shows (run from the repository root).
REPORT_ARGS = ("verify", "tests/data/seed_bn_fixed.py:BatchNorm", "--convention", "onnx",
               "--property", "train_forward")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def catalogue_markdown() -> str:
    """Both catalogues as Markdown tables, in catalogue order, from the registries."""
    from bncheck.distributed.properties import CATALOGUE as SYNC
    from bncheck.engine.properties import CATALOGUE

    rows = ["| # | property | checks | catches | tolerance |", "|---|---|---|---|---|"]
    rows += [f"| {p.number} | `{p.name}` | {_cell(p.checks)} | {_cell(p.catches)} | "
             f"{_cell(p.tolerance)} |" for p in CATALOGUE]
    sync = ["| property | checks | catches | tolerance |", "|---|---|---|---|"]
    sync += [f"| `{p.name}` | {_cell(p.checks)} | {_cell(p.catches)} | {_cell(p.tolerance)} |"
             for p in SYNC]
    return ("\n".join(rows) + "\n\n### Distributed (`--world-size N`)\n\n" + "\n".join(sync)
            + "\n")


def mutants_markdown() -> str:
    """The bundled mutants: name, defect, the property meant to kill it."""
    from bncheck.engine.mutants import MUTANTS

    rows = ["| mutant | defect | killed by |", "|---|---|---|"]
    rows += [f"| `{m.name}` | {_cell(m.defect)} | `{m.killer}` |" for m in MUTANTS.values()]
    return "\n".join(rows) + "\n"


def bench_baseline_markdown(path: Path = ROOT / "benchmarks" / "baseline.json") -> str:
    """The committed benchmark baseline: its settings, environment and every ratio."""
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    settings = ", ".join(f"{k} {v}" for k, v in doc["settings"].items())
    env = ", ".join(f"{k}: {v}" for k, v in doc["environment"].items())
    rows = ["| ratio | value |", "|---|---|"]
    rows += [f"| {name} | {value:.3f} |" for name, value in sorted(doc["ratios"].items())]
    return (f"Settings: {settings}; the gate fails a ratio more than "
            f"{doc['tolerance']:.0%} worse. Environment: {env}.\n\n" + "\n".join(rows) + "\n")


GENERATORS = {
    "catalogue": catalogue_markdown,
    "mutants": mutants_markdown,
    "bench-baseline": bench_baseline_markdown,
}
MARKER = re.compile(r"<!-- bncheck:([a-z-]+) -->")


def render(markdown: str) -> str:
    """``markdown`` with every marker replaced by its generated block; an unknown marker raises
    (so a typo fails ``mkdocs build --strict`` instead of leaving a hole)."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"Unknown docs marker {name!r}; expected one of {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(sub, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs hook: render the generated blocks of each page."""
    return render(markdown)


def report_text() -> str:
    """What ``bncheck verify`` prints for :data:`REPORT_ARGS`, run from the repository root."""
    import os

    from click.testing import CliRunner

    from bncheck.cli import main

    here = Path.cwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(main, list(REPORT_ARGS), env={"COLUMNS": "110"})
    finally:
        os.chdir(here)
    if result.exit_code != 1:
        raise RuntimeError(f"expected exit 1 from bncheck {' '.join(REPORT_ARGS)}, received "
                           f"{result.exit_code}:\n{result.output}")
    return result.output


def report_svg(text: str | None = None) -> str:
    """The report as an SVG terminal picture (Rich's ``Console.export_svg``)."""
    from rich.console import Console
    from rich.text import Text

    text = report_text() if text is None else text
    console = Console(record=True, width=110, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(Text("$ bncheck " + " ".join(REPORT_ARGS) + "\n" + text.rstrip()),
                  soft_wrap=False)
    return console.export_svg(title="bncheck verify")


def normalized_svg(svg: str) -> str:
    """``svg`` without what changes from run to run: durations (``2.47s``) and the ids Rich
    derives from the whole text."""
    svg = re.sub(r"\d+\.\d+s", "T", svg)
    return re.sub(r"terminal-\d+", "terminal", svg)


if __name__ == "__main__":
    if sys.argv[1:] != ["--report-svg"]:
        sys.exit("usage: python tools/mkdocs_hooks.py --report-svg")
    REPORT_SVG.parent.mkdir(parents=True, exist_ok=True)
    REPORT_SVG.write_text(report_svg(), encoding="utf-8")
    print(f"wrote {REPORT_SVG.relative_to(ROOT)}")
