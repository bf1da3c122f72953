"""A torch.nn.BatchNorm* subclass with its own forward is held to what torch's type and
signature offer (momentum=None, empty batches, the constructor flags), reported apart from the
arithmetic as a contract it inherits, each with the declaration that says it is not offered
(tests/data/third_party/subclass_own_forward_bn.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.runner import verify
from bncheck.engine.target import inherited_contract, load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"
SPEC = f"{DATA}/subclass_own_forward_bn.py:OwnForwardBN2d"


class _NoForward(torch.nn.BatchNorm1d):
    pass


@pytest.mark.parametrize(("obj", "base"), [
    (load_target(SPEC), "torch.nn.BatchNorm2d"),
    (torch.nn.BatchNorm2d, None),         # torch's own: its contract, not an inherited one
    (_NoForward, None),                   # torch's forward: torch's behaviour
    (torch.nn.SyncBatchNorm, None),
    (lambda c: torch.nn.BatchNorm1d(c), None),
])
def test_inherited_contract_is_named_only_for_subclasses_with_their_own_forward(obj, base):
    assert inherited_contract(obj) == base


def test_inherited_contract_failures_are_reported_apart_with_their_declaration():
    report = verify(load_target(SPEC), dims=(4,), examples=6, seed=0, shrink=False,
                    dtypes=["float32", "float64"])
    failed = report.failed
    assert {r.name for r in failed} == {"constructor", "empty_batch"}, report.render()
    for r in failed:
        assert r.message.startswith("differs from the contract it inherits from "
                                    "torch.nn.BatchNorm2d: "), r.message
    by_flag = {r.message.split(" with ", 1)[1].split(" ")[0]: r.message
               for r in failed if r.name == "constructor"}
    assert "declare so: its momentum, momentum=0.1 (--momentum 0.1)" in by_flag["momentum=None"]
    assert "(--fixed affine=true)" in by_flag["affine=False"]
    (empty,) = [r for r in failed if r.name == "empty_batch"]
    assert "declare so: empty_batches=False (--no-empty-batches)" in empty.message


def test_declared_as_not_offering_them_it_passes_from_the_cli():
    args = ["verify", SPEC, "--dims", "4", "--momentum", "0.1", "--no-empty-batches",
            "--fixed", "affine=true,track_running_stats=true,bias=true", "--examples", "4",
            "--dtypes", "float32,float64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "empty_batch" in result.output and "skipped" in result.output


def test_no_empty_batches_switches_off_torchs_default():
    report = verify(torch.nn.BatchNorm1d, empty_batches=False, properties=["empty_batch"],
                    examples=2, seed=0)
    (r,) = report.results
    assert r.status == "skipped"
