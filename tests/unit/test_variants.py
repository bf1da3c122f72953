"""Batch Renorm and ghost BatchNorm, declared (variant=..., variant_args=...) and judged by
their own float64 oracles (bncheck.engine.variants); their mutants; bad declarations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings

from bncheck.cli import main
from bncheck.engine.mutants import MUTANTS, run_mutants
from bncheck.engine.mutants_variants import (
    GHOST_ARGS,
    RENORM_ARGS,
    VARIANT_MUTANTS,
    GhostClean,
    RenormClean,
)
from bncheck.engine.oracle import batch_stats, normalize
from bncheck.engine.properties._base import Context
from bncheck.engine.runner import build_target, verify
from bncheck.engine.target import load_target
from bncheck.engine.variants import Variant, ghost_train, renorm_rd, renorm_train
from bncheck.errors import BNCheckError

DATA = Path(__file__).parents[1] / "data" / "third_party"
RENORM = {"variant": "batch-renorm", "variant_args": dict(RENORM_ARGS)}
GHOST = {"variant": "ghost", "variant_args": dict(GHOST_ARGS)}


# The oracles ---------------------------------------------------------------------------------
def test_renorm_is_batchnorm_when_running_stats_equal_the_batch_and_in_warmup():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    mean, var = batch_stats(x)
    plain = normalize(x, mean, var, eps=1e-5)
    same = renorm_train(x, eps=1e-5, running_mean=mean, running_std=torch.sqrt(var + 1e-5),
                        r_max=3.0, d_max=5.0, warm=False)
    torch.testing.assert_close(same, plain)
    warm = renorm_train(x, eps=1e-5, running_mean=mean + 7, running_std=torch.ones(3),
                        r_max=3.0, d_max=5.0, warm=True)
    torch.testing.assert_close(warm, plain)


def test_renorm_r_and_d_are_clipped_and_carry_no_gradient():
    x = torch.tensor([[0.0], [10.0]], dtype=torch.float64, requires_grad=True)
    r, d = renorm_rd(x, eps=0.0, running_mean=torch.tensor([-100.0]),
                     running_std=torch.tensor([1.0]), r_max=3.0, d_max=5.0)
    assert (r.item(), d.item()) == (3.0, 5.0) and not r.requires_grad
    y = renorm_train(x, eps=0.0, running_mean=torch.tensor([-100.0]),
                     running_std=torch.tensor([1.0]), r_max=3.0, d_max=5.0, warm=False)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, torch.zeros_like(g))  # d constant: sum of a normalized batch


def test_ghost_normalizes_each_virtual_batch_alone():
    x = torch.randn(8, 2, dtype=torch.float64)
    y = ghost_train(x, eps=1e-5, virtual_batch=4)
    for part, out in zip(x.split(4), y.split(4), strict=True):
        torch.testing.assert_close(out, normalize(part, *batch_stats(part), eps=1e-5))


# Layers written in the variants' styles --------------------------------------------------------
@pytest.mark.parametrize(("spec", "declare"), [
    ("renorm_bn.py:BatchRenorm2d", {"dims": (4,), **RENORM}),
    ("renorm_bn.py:BatchRenorm2d", {"dims": (4,), "variant": "batch-renorm",
                                    "variant_args": {"r_max": 2, "d_max": 1, "warmup": 2}}),
    ("ghost_virtual_bn.py:GhostBatchNorm1d", {"dims": (2,), **GHOST}),
], ids=["renorm", "renorm-warmup", "ghost"])
def test_correct_variant_layers_pass_declared(spec, declare):
    report = verify(load_target(f"{DATA}/{spec}"), examples=6, seed=0, shrink=False,
                    dtypes=["float32", "float64"], **declare)
    assert report.ok, report.render()


def test_variant_args_the_constructor_takes_are_passed_to_it():
    t = build_target(load_target(f"{DATA}/ghost_virtual_bn.py:GhostBatchNorm1d"), dims=(2,),
                     variant="ghost", variant_args={"virtual_batch": "4"})
    assert t.build(3, ndim=2).module.virtual_batch == 4  # the declared value, an int
    renorm = build_target(load_target(f"{DATA}/renorm_bn.py:BatchRenorm2d"), dims=(4,),
                          variant="batch-renorm", variant_args={"warmup": 7}).build(3, ndim=4)
    assert (renorm.module.warmup, renorm.module.r_max) == (7, 3.0)


def test_undeclared_variant_fails_train_forward():
    report = verify(load_target(f"{DATA}/renorm_bn.py:BatchRenorm2d"), dims=(4,),
                    properties=["train_forward"], examples=6, seed=0, shrink=False)
    assert [r.name for r in report.failed] == ["train_forward"]


def test_ghost_cases_hold_two_or_three_whole_virtual_batches():
    t = build_target(torch.nn.BatchNorm1d, variant="ghost", variant_args={"virtual_batch": 5})
    ctx = Context(t, (torch.float32,))

    @settings(max_examples=30, database=None)
    @given(ctx.cases())
    def check(case):
        assert case.shape[0] in (10, 15)

    check()


# Mutants ---------------------------------------------------------------------------------------
def test_variant_mutants_are_registered_and_each_killed_by_its_property():
    # each is also killed in tests/unit/test_mutants.py (parametrized over MUTANTS)
    assert set(VARIANT_MUTANTS) <= set(MUTANTS)
    results = run_mutants(["renorm_grad_through_rd", "ghost_update_once"], seed=0)
    assert all(r.killed_as_meant for r in results), [(r.mutant.name, r.killed_by)
                                                     for r in results]


@pytest.mark.parametrize(("cls", "declare"), [(RenormClean, RENORM), (GhostClean, GHOST)],
                         ids=["renorm", "ghost"])
def test_clean_variants_pass_their_mutants_killers(cls, declare):
    killers = sorted({m.killer for m in VARIANT_MUTANTS.values()})
    report = verify(cls, properties=killers, examples=10, seed=0, **declare)
    assert report.ok, report.render()


# Bad declarations ------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "args", "match"), [
    ("renorm", None, "variant to be one of"),
    ("ghost", None, "needs variant_args virtual_batch"),
    ("ghost", {"virtual_batch": 1}, "virtual_batch >= 2"),
    ("ghost", {"virtual_batch": 2.5}, "to be an integer"),
    ("ghost", {"vb": 4}, "keys from \\['virtual_batch'\\]"),
    ("batch-renorm", {"r_max": 0.5}, "r_max >= 1"),
    ("batch-renorm", {"d_max": "x"}, "d_max to be float"),
    ("batch-renorm", {"warmup": True}, "warmup to be int"),
    (None, {"virtual_batch": 4}, "without a variant"),
])
def test_bad_variant_declarations_name_the_argument(variant, args, match):
    with pytest.raises(BNCheckError, match=match):
        build_target(torch.nn.BatchNorm1d, variant=variant, variant_args=args)


@pytest.mark.parametrize("argv", [
    ["--variant", "ghost", "--variant-args", "virtual_batch"],
    ["--variant", "ghost"],
    ["--variant", "batch-norm"],
])
def test_cli_bad_variant_exits_2(argv):
    result = CliRunner().invoke(main, ["verify", f"{DATA}/ghost_virtual_bn.py:GhostBatchNorm1d",
                                       *argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_variant_describe_is_stable():
    assert Variant.from_declaration("ghost", {"virtual_batch": 4}).describe() == \
        "ghost (virtual_batch=4)"


def test_check_batchnorm_takes_the_variant_declaration():
    from bncheck import check_batchnorm
    from bncheck.engine.mutants_variants import GhostClean

    check_batchnorm(GhostClean, properties=["train_forward"], examples=3, **GHOST)
    with pytest.raises(AssertionError, match="train_forward"):
        check_batchnorm(GhostClean, properties=["train_forward"], examples=5)
