"""What counts as a BatchNorm target: what is not one is one usage error (exit 2 from the CLI);
a wrapper's BatchNorm submodule is found; parameters that affine=False switches off are not the
layer's affine.

Layers in tests/data/third_party; each docstring there names where it comes from."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.runner import build_target, verify
from bncheck.errors import TargetError


# not a BatchNorm ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,match", [
    ("NotAModule", "is a class but not a torch.nn.Module"),
    ("NeedsMore", "cannot be built from num_features alone: it also needs groups"),
    ("Flattens", "is not a BatchNorm: for an input of shape"),
    ("functional", "also needs running_mean, running_var"),
])
def test_targets_that_are_not_batchnorms_are_one_usage_error(name, match, third_party):
    with pytest.raises(TargetError, match=match):
        verify(third_party.load(f"odd_targets.py:{name}"), dims=(3,), examples=1)


def test_not_a_batchnorm_exits_2_from_the_cli(third_party):
    r = CliRunner().invoke(main, ["verify", f"{third_party.data / 'odd_targets.py'}:Flattens",
                                  "--dims", "3"])
    assert r.exit_code == 2 and "is not a BatchNorm" in r.output, r.output


# real layers from public code (ghost_bn, batch_renorm) ----------------------------------------
def test_a_wrappers_batchnorm_submodule_is_found(third_party):
    """TabNet's ghost BatchNorm keeps its statistics in ``self.bn``: found undeclared (as
    ``bn.running_mean``), and a dotted --names declaration reaches it too."""
    props = ["running_stats_update", "gradients", "differential", "stats_are_buffers"]
    report = third_party.run("ghost_bn.py:GBN", props, dims=(2,), momentum=0.01)
    assert report.ok, report.render()
    assert [r.name for r in report.results] == props
    declared = third_party.run("ghost_bn.py:GBN", ["running_stats_update"], dims=(2,),
                               momentum=0.01, names={"running_mean": "bn.running_mean",
                                                     "running_var": "bn.running_var"})
    assert declared.ok, declared.render()


def test_parameters_switched_off_by_affine_false_are_not_the_layers_affine(third_party):
    """Batch Renorm keeps weight and bias with affine=False and skips them: bncheck neither sets
    nor expects them; its TorchScript base class still gets a functional call for gradcheck."""
    t = build_target(third_party.load("batch_renorm.py:BatchRenorm1d"))
    assert not t.build(3, ndim=2, affine=False).affine
    bn = t.build(3, ndim=2)
    assert bn.affine and bn.param_names() == ["weight", "bias"]
    x = torch.randn(4, 3)
    y = bn.functional(x, {"weight": torch.full((3,), 2.0), "bias": torch.ones(3)}, what="f")
    assert torch.allclose(y, bn.call(x) * 2 + 1, atol=1e-5)
