"""Every bundled mutant is killed by the property meant for it; the clean base is not."""

from __future__ import annotations

import pytest

from bncheck.mutants import MUTANTS, Clean, SeedStyle
from bncheck.properties import names
from bncheck.verify import verify


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_is_killed_by_its_property(name):
    m = MUTANTS[name]
    assert m.killer in names()
    report = verify(m.factory, label=name, convention=m.convention, dims=m.dims,
                    properties=[m.killer], profile="ci", shrink=False,
                    **dict(m.declarations))
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
