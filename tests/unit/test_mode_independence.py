"""grad_mode_independence, one check for every framework: torch's grad modes and, for a Flax
target, eager vs. ``jax.jit``, each compared with the first way it runs (same_every_way)."""

from __future__ import annotations

import pytest

from bncheck.engine.mutants import MUTANTS
from bncheck.engine.runner import verify


def _failure(obj, **options):
    report = verify(obj, properties=["grad_mode_independence"], profile="ci", shrink=False,
                    examples=10, timeout=None, **options)
    (result,) = [r for r in report.results if r.name == "grad_mode_independence"]
    assert result.status == "failed", report.render()
    return result.message


def test_torch_grad_modes_are_each_compared_with_grad_enabled():
    m = MUTANTS["seed_grad_mode"]  # train/eval from torch.is_grad_enabled()
    message = _failure(m.factory, declaration=m.declaration)
    # each grad mode against grad enabled, named in the message (statistics by their names)
    assert "running_var updated under no_grad vs. with grad enabled" in message
    assert "running_var updated under inference_mode vs. with grad enabled" in message


def test_flax_jit_is_compared_with_eager():
    pytest.importorskip("flax")
    from bncheck.frameworks.flax_mutants import JAX_MUTANTS

    m = JAX_MUTANTS["jax_mode_from_tracing"]  # train/eval from whether the call is traced
    message = _failure(m.factory, declaration=m.declaration)
    assert "running variance updated under jax.jit vs. eagerly" in message


def test_flax_eval_forward_under_jit_must_leave_the_statistics():
    """Flax's meaning also checks that an eval forward under jax.jit leaves the statistics as
    installed (torch's grad modes have train_eval_switch for that)."""
    pytest.importorskip("flax")
    import jax

    from bncheck.frameworks.flax_mutants import JaxClean

    class EvalUpdatesWhenTraced(JaxClean):
        def __call__(self, x, use_running_average=False):
            y = super().__call__(x, use_running_average)
            if use_running_average and isinstance(x, jax.core.Tracer):
                self.update(*self.batch_stats(x), x.size // x.shape[-1])
            return y

    message = _failure(EvalUpdatesWhenTraced, framework="flax-nnx")
    assert "changed in an eval forward under jax.jit" in message
