"""Every JAX mutant is killed by the property meant for it; the correct JAX BatchNorm written
for the tests (JaxClean) passes those properties."""

from __future__ import annotations

import pytest

pytest.importorskip("flax")

from bncheck.engine.mutants import MUTANTS  # noqa: E402
from bncheck.engine.properties import names  # noqa: E402
from bncheck.engine.runner import verify  # noqa: E402
from bncheck.errors import InvalidArgument  # noqa: E402
from bncheck.frameworks.flax_mutants import JAX_MUTANTS, JaxClean  # noqa: E402


@pytest.mark.parametrize("name", list(JAX_MUTANTS))
def test_jax_mutant_is_killed_by_its_property(name):
    m = JAX_MUTANTS[name]
    assert m.killer in names()
    # 16-bit accumulation shows where a float16 channel's squares overflow: drawn among
    # float16 cases alone (bfloat16 has float32's range; in all four dtypes the first such
    # case comes after the ci profile's 20 examples for this seed)
    dtypes = ["float16"] if m.killer == "reduced_precision" else None
    report = verify(m.factory, label=name, declaration=m.declaration, properties=[m.killer],
                    profile="ci", shrink=False, timeout=None, dtypes=dtypes)
    (result,) = [r for r in report.results if r.name == m.killer]
    assert result.status == "failed", f"{name} survived {m.killer}"


def test_jax_mutants_cover_the_torch_defects():
    torch_killers = {m.killer for m in MUTANTS.values()}
    jax_killers = {m.killer for m in JAX_MUTANTS.values()}
    # empty_batch needs a declaration Flax's classes do not make
    assert torch_killers - jax_killers == {"empty_batch"}
    assert len(JAX_MUTANTS) >= 16


def test_clean_jax_batchnorm_passes_the_killer_properties():
    killers = sorted({m.killer for m in JAX_MUTANTS.values()})
    report = verify(JaxClean, framework="flax-nnx", properties=killers, profile="ci",
                    examples=5, timeout=None)
    assert report.ok, report.render()


def test_run_mutants_runs_the_jax_mutants_by_framework():
    """One runner for both frameworks: ``framework="flax-nnx"`` picks the JAX catalogue."""
    from bncheck.engine.mutants import run_mutants
    from bncheck.frameworks.flax_mutants import run_jax_mutants

    seen = []
    (res,) = run_mutants(["jax_eps_outside_sqrt"], framework="flax-nnx", examples=5,
                         on_result=seen.append)
    assert res.mutant is JAX_MUTANTS["jax_eps_outside_sqrt"] and res.killed_as_meant
    assert seen == [res]
    (again,) = run_jax_mutants(["jax_eps_outside_sqrt"], examples=5)
    assert again.killed_by == res.killed_by
    with pytest.raises(InvalidArgument, match="Unknown mutant='eps_outside_sqrt'"):
        run_mutants(["eps_outside_sqrt"], framework="flax-nnx")
