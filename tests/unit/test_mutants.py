"""Every bundled mutant is killed by the property meant for it; the clean base is not."""

from __future__ import annotations

import re

import pytest

from bncheck.engine.mutants import MUTANTS, Clean, EpsOutsideSqrt, SeedStyle, meant_first
from bncheck.engine.properties import names
from bncheck.engine.runner import verify


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_killed_by_its_property(name):
    m = MUTANTS[name]
    assert m.killer in names()
    report = verify(m.factory, label=name, declaration=m.declaration,
                    properties=[m.killer], profile="ci", shrink=False)
    (result,) = report.results
    assert result.status == "failed", f"{name} survived {m.killer}"


def test_at_least_twelve_mutants_including_the_seed_defects():
    assert len(MUTANTS) >= 12
    assert {"seed_bata_typo", "seed_moving_var_in_training", "seed_var_from_itself",
            "seed_grad_mode"} <= set(MUTANTS)


@pytest.mark.parametrize("obj,convention", [(Clean, "torch"), (SeedStyle, "onnx")])
def test_clean_bases_pass_the_killer_properties(obj, convention):
    killers = sorted({m.killer for m in MUTANTS.values()})
    report = verify(obj, convention=convention, properties=killers, profile="ci", examples=10)
    assert report.ok, report.render()


def test_a_mutant_that_survives_its_property_meets_the_rest():
    """meant_first: the killer first; only when it lets the mutant survive, the rest."""
    ran: list[list[str] | None] = []

    def verify_some(properties):
        ran.append(properties)
        return verify(EpsOutsideSqrt, properties=properties, profile="ci", shrink=False,
                      examples=5).results

    # initial_state cannot see eps outside the sqrt; train_forward can.
    failed = meant_first(verify_some, "initial_state", ["initial_state", "train_forward"])
    assert ran == [["initial_state"], ["train_forward"]]
    assert [r.name for r in failed] == ["train_forward"]
    ran.clear()
    failed = meant_first(verify_some, "train_forward", ["initial_state", "train_forward"])
    assert ran == [["train_forward"]] and [r.name for r in failed] == ["train_forward"]


@pytest.mark.parametrize("framework,says", [
    ("flax-linen", "bundled mutants (torch, flax-nnx), received framework='flax-linen'"),
    ("tensorflow", "received framework='tensorflow'"),
])
def test_run_mutants_refuses_a_framework_without_mutants(framework, says):
    from bncheck.engine.mutants import run_mutants
    from bncheck.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=re.escape(says)):
        run_mutants(framework=framework)


def test_run_mutants_refuses_a_name_of_another_framework():
    from bncheck.engine.mutants import run_mutants
    from bncheck.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="Unknown mutant='jax_bata_typo'"):
        run_mutants(["jax_bata_typo"])  # torch's catalogue by default
