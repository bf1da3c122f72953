"""variant, variant_args and empty_batches as Declaration fields (issues 16 + 17): one field each,
so the flags of ``verify``, the config keys, the header, ``--json`` and the replay line follow;
``Target.variant`` is read from ``target.declaration``."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.config import declaration_for
from bncheck.engine.declaration import Declaration, pop_declared
from bncheck.engine.runner import build_target
from bncheck.errors import InvalidArgument

DATA = Path(__file__).parents[1] / "data" / "third_party"
GHOST = "ghost_virtual_bn.py:GhostBatchNorm1d"


def _parsed(args: list[str]) -> Declaration:
    """What ``bncheck verify TARGET ARGS`` declares, parsed by its own click options."""
    command = main.get_command(click.Context(main), "verify")
    assert command is not None
    ctx = command.make_context("verify", ["t.py:X", *args])
    return Declaration.from_cli(pop_declared(ctx.params))


@pytest.mark.parametrize("declaration", [
    Declaration(variant="batch-renorm", variant_args={"r_max": 2, "warmup": 3}),
    Declaration(variant="ghost", variant_args={"virtual_batch": 4}, empty_batches=False),
    Declaration(empty_batches=True),
], ids=["renorm", "ghost-no-empty", "empty"])
def test_the_replay_flags_declare_the_same(declaration):
    assert _parsed(declaration.cli_args()) == declaration


def test_variant_flags_are_derived_and_values_normalised():
    d = _parsed(["--variant", "batch-renorm", "--variant-args", "r_max=2,warmup=3",
                 "--no-empty-batches"])
    assert (d.variant, dict(d.variant_args or {}), d.empty_batches) == \
        ("batch-renorm", {"r_max": 2.0, "warmup": 3}, False)  # CLI text as the variant's types
    assert d.cli_args() == ["--no-empty-batches", "--variant", "batch-renorm",
                            "--variant-args", "r_max=2,warmup=3"]
    assert d.to_json()["variant_args"] == {"r_max": 2.0, "warmup": 3}
    assert "variant=batch-renorm, variant_args=r_max=2,warmup=3" in d.describe()


def test_target_variant_comes_from_the_declaration():
    t = build_target(torch.nn.BatchNorm1d, declaration=Declaration(
        variant="batch-renorm", variant_args={"warmup": 7}))
    assert t.declaration.variant == "batch-renorm"
    assert t.variant is not None and t.variant.kwargs == {"r_max": 3.0, "d_max": 5.0,
                                                          "warmup": 7}  # defaults filled in
    assert build_target(torch.nn.BatchNorm1d).variant is None


def test_variant_args_need_a_variant_and_are_checked_against_it():
    with pytest.raises(InvalidArgument, match="without a variant"):
        Declaration(variant_args={"virtual_batch": 4})
    with pytest.raises(InvalidArgument, match="needs variant_args virtual_batch"):
        Declaration(variant="ghost")
    with pytest.raises(InvalidArgument, match="keys from \\['d_max', 'r_max', 'warmup'\\]"):
        Declaration(variant="batch-renorm").replace(variant_args={"virtual_batch": 4})


def test_config_file_declares_the_variant(tmp_path):
    shutil.copy(DATA / GHOST.partition(":")[0], tmp_path)
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(f'''
        [[tool.bncheck.targets]]
        target = "{GHOST}"
        dims = [2]
        variant = "ghost"
        variant_args = {{ virtual_batch = 4 }}
        empty_batches = false
    '''))
    d = declaration_for(GHOST, start=tmp_path)
    assert d.variant_spec is not None and d.variant_spec.virtual_batch == 4
    assert d.empty_batches is False
    result = CliRunner().invoke(main, ["verify", "--config", str(tmp_path / "pyproject.toml"),
                                       "--property", "train_forward", "--examples", "3"])
    assert result.exit_code == 0, result.output
    assert "variant=ghost, variant_args=virtual_batch=4" in result.output


def test_config_file_bad_variant_args_exit_2(tmp_path):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [[tool.bncheck.targets]]
        target = "torch.nn:BatchNorm1d"
        variant = "ghost"
        variant_args = { virtual_batch = 1 }
    '''))
    result = CliRunner().invoke(main, ["verify", "--config", str(tmp_path / "pyproject.toml")])
    assert result.exit_code == 2, result.output
    assert "virtual_batch >= 2" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("flag", [["--variant", "ghost"], ["--variant-args", "virtual_batch=4"]])
def test_train_has_no_variant_options(flag):
    # train builds Name(num_features): a variant argument passed to the verify step's
    # constructor would verify another layer than the one trained
    result = CliRunner().invoke(main, ["train", "--bn", f"{DATA}/{GHOST}", *flag])
    assert result.exit_code == 2 and "No such option" in result.output, result.output
