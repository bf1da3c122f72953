"""The docs run as written: every ``python`` block of docs/*.md is executed, every ``console``
block marked ``<!-- runnable -->`` has each ``bncheck`` line run (exit 0 expected), the
generated blocks come from the registries, the README's picture of a report is what bncheck
prints today, and the README keeps its first screen."""

from __future__ import annotations

import html
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bncheck.cli import main

ROOT = Path(__file__).parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PYTHON = re.compile(r"^(?<!<!-- torchrun 2 -->\n)```python\n(.*?)^```", re.S | re.M)
TORCHRUN = re.compile(r"^<!-- torchrun 2 -->\n```python\n(.*?)^```", re.S | re.M)
RUNNABLE = re.compile(r"^<!-- runnable -->\n```console\n(.*?)^```", re.S | re.M)


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" /
                                                  "mkdocs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return [(f"{page.name}:{page.read_text(encoding='utf-8')[:m.start()].count(chr(10)) + 1}",
             m.group(1)) for page in DOCS for m in pattern.finditer(page.read_text(
                 encoding="utf-8"))]


PYTHON_BLOCKS = _blocks(PYTHON)
CONSOLE_BLOCKS = _blocks(RUNNABLE)
TORCHRUN_BLOCKS = _blocks(TORCHRUN)


@pytest.mark.parametrize("where,code", PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_runs(where: str, code: str, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("where,block", CONSOLE_BLOCKS, ids=[w for w, _ in CONSOLE_BLOCKS])
def test_runnable_console_block(where: str, block: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()
                if line.startswith("bncheck ")]
    assert commands, f"{where}: a runnable block without a bncheck command"
    for command in commands:
        result = CliRunner().invoke(main, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{where}: {command}\n{result.output}"


@pytest.mark.parametrize("where,code", TORCHRUN_BLOCKS, ids=[w for w, _ in TORCHRUN_BLOCKS])
def test_torchrun_block_runs(where: str, code: str, tmp_path: Path) -> None:
    """A block marked ``<!-- torchrun 2 -->`` runs under ``torchrun --nproc-per-node 2``; the
    ranks must print the same line, and the page must quote what they print."""
    import os
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", str(script)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # the two ranks share one stdout and may interleave their lines ("...]rank 0: ..."), so
    # each rank's report is found by its "rank N: " prefix, not by line
    reports = re.split(r"rank \d+: ", r.stdout)[1:]
    printed = sorted(part.splitlines()[0] if part.splitlines() else part for part in reports)
    assert len(printed) == 2 and printed[0] == printed[1], r.stdout
    page = (ROOT / "docs" / where.split(":")[0]).read_text(encoding="utf-8")
    assert printed[0] in page, f"{where}: the page does not quote {printed[0]!r}"


def test_the_docs_have_blocks_to_run() -> None:
    assert len(PYTHON_BLOCKS) >= 3 and CONSOLE_BLOCKS and TORCHRUN_BLOCKS


def test_catalogue_is_the_registry() -> None:
    from bncheck.distributed.properties import CATALOGUE as SYNC
    from bncheck.engine.mutants import MUTANTS
    from bncheck.engine.properties import CATALOGUE

    page = _hooks().render((ROOT / "docs" / "catalogue.md").read_text(encoding="utf-8"))
    assert "<!-- bncheck:" not in page
    for p in (*CATALOGUE, *SYNC):
        for text in (p.checks, p.catches, p.tolerance):
            assert " ".join(text.split()).replace("|", "\\|") in page, (p.name, text)
    for m in MUTANTS.values():
        assert f"| `{m.name}` |" in page and f"| `{m.killer}` |" in page


def test_bench_baseline_is_rendered_from_the_json() -> None:
    import json

    doc = json.loads((ROOT / "benchmarks" / "baseline.json").read_text(encoding="utf-8"))
    page = _hooks().render((ROOT / "docs" / "performance.md").read_text(encoding="utf-8"))
    for name, value in doc["ratios"].items():
        assert f"| {name} | {value:.3f} |" in page


def test_an_unknown_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="Unknown docs marker 'catalog'"):
        _hooks().render("<!-- bncheck:catalog -->")


def _visible(text: str) -> list[str]:
    """Lines of text as a reader sees them, without durations, table rules or padding."""
    text = re.sub(r"\d+\.\d+s\b", "T", text)
    lines = [re.sub(r"[\s│┃┏┓┗┛┡┩└┘┳┻╇┴━─]+", " ", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]


def test_the_readme_picture_is_what_bncheck_prints() -> None:
    """Regenerate with ``python tools/mkdocs_hooks.py --report-svg`` when this fails."""
    hooks = _hooks()
    svg = (ROOT / "docs" / "img" / "report.svg").read_text(encoding="utf-8")
    cells = re.findall(r'<text class="terminal-\d+-r\d+"[^>]*>([^<]*)</text>', svg)
    shown = "".join(html.unescape(m) for m in cells)
    shown = shown.replace("\xa0", " ")
    printed = "$ bncheck " + " ".join(hooks.REPORT_ARGS) + "\n" + hooks.report_text()
    # the picture wraps long lines at 110 columns: compare the words, line breaks aside
    assert " ".join(_visible(shown)).split() == " ".join(_visible(printed)).split()


def test_readme_first_screen() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    first = "\n".join(lines[:40])
    assert "bncheck verify my_bn.py:MyBN" in first
    assert "def test_" in first and "bncheck_verify" in first


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file of the repository, and every anchor a
    heading of that page (as MkDocs spells it: lower case, punctuation dropped, dashes)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", readme)
    assert len(links) >= 10
    for path, anchor in links:
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.lower()).strip())
                     for h in headings}
            assert anchor in slugs, (path, anchor, sorted(slugs))
