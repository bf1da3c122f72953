"""Every convention recipe in README.md and docs/properties.md, run against the layer the recipe
names (written the way the recipe describes): its running statistics must pass."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from bncheck.cli import main

ROOT = Path(__file__).parents[2]
ROW = re.compile(r"^\| [^|]+ \| `(--[^`]+)` \| `([^`]+:[A-Za-z_0-9]+)` \|$", re.M)
RECIPES = sorted({m for doc in ("README.md", "docs/properties.md")
                  for m in ROW.findall((ROOT / doc).read_text(encoding="utf-8"))})


def _verify(target: str, recipe: str) -> tuple[int, str]:
    where = str(ROOT / target) if target.startswith("tests/") else target
    r = CliRunner().invoke(main, ["verify", where, *shlex.split(recipe), "--property",
                                  "running_stats_update", "--dtypes", "float32",
                                  "--examples", "5"])
    return r.exit_code, r.output


def test_the_recipes_are_found():
    assert len(RECIPES) >= 7
    assert any("d2l_new.py" in t for _, t in RECIPES)
    assert any("d2l_old.py" in t for _, t in RECIPES)


@pytest.mark.parametrize(("recipe", "target"), RECIPES, ids=[t for _, t in RECIPES])
def test_recipe_verifies_the_layer_it_describes(recipe, target):
    code, output = _verify(target, recipe)
    assert code == 0, output


def test_a_wrong_recipe_fails():
    code, output = _verify("tests/data/third_party/d2l_new.py:BatchNorm", "--convention torch")
    assert code == 1 and "running_var after training step" in output
