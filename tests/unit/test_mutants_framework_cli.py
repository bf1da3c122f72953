"""``bncheck mutants --framework``: the JAX mutants from the command line, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bncheck.cli import main


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["mutants", *args])
    return r.exit_code, " ".join(r.output.split())


@pytest.mark.parametrize("args,seen", [
    (("--framework", "flax-linen"),
     "Expected framework to be one with bundled mutants (torch, flax-nnx), received "
     "framework='flax-linen'"),
    (("--framework", "jaxx"), "received framework='jaxx'"),
    (("--framework", "flax-nnx", "--world-size", "2"),
     "Expected --framework torch with --world-size (the distributed mutants are torch's), "
     "received --framework='flax-nnx'"),
    (("--framework", "flax-nnx", "--mutant", "bata_typo"), "did you mean jax_bata_typo?"),
])
def test_refused_with_exit_2(args: tuple[str, ...], seen: str) -> None:
    pytest.importorskip("flax")
    code, out = run(*args)
    assert code == 2 and seen in out, out


def test_a_jax_mutant_runs_and_is_killed_by_its_property(tmp_path: Path) -> None:
    pytest.importorskip("flax")
    code, out = run("--framework", "flax-nnx", "--mutant", "jax_bata_typo", "--json",
                    str(tmp_path / "m.json"))
    assert code == 0, out
    assert "Mutation score: 1/1 (100%) killed; 1/1 by the property meant for them" in out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["mutants"][0]["killed_by"][0] == "train_forward"
