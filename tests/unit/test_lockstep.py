"""Scratch = torch step by step: passes on a correct pair, names the step and layer of a bug."""

from __future__ import annotations

import pytest
from torch import Tensor, nn

from bncheck.engine.mutants import BackwardMissingTerm, BiasedRunningVar
from bncheck.engine.target import bn_factory
from bncheck.errors import InvalidArgument
from bncheck.reference import BatchNorm
from bncheck.training import compare_variants
from bncheck.training.data import synthetic_dataset

DATA = synthetic_dataset(400)  # 50 steps of 8


def test_scratch_and_torch_agree_for_50_steps() -> None:
    report = compare_variants(DATA, steps=50, batch_size=8)
    assert report.passed and report.steps == 50 and len(report.losses) == 50
    assert set(report.worst) == {"loss", "output", "running_mean", "running_var",
                                 "input gradient", "weight gradient", "bias gradient"}
    # Every difference stayed within its bound (ratios < 1), and the losses fell.
    assert max(ratio for ratio, _, _ in report.worst.values()) < 1
    assert report.losses[-1][0] < 0.5 * report.losses[0][0]


class LateMomentumBug(BatchNorm):
    """Correct for 10 steps, then the running statistics move twice as fast (a planted bug)."""

    def forward(self, input: Tensor) -> Tensor:
        self.momentum = 0.2 if int(self.num_batches_tracked) >= 10 else 0.1
        return super().forward(input)


def test_a_planted_bug_is_named_with_its_first_step_and_layer() -> None:
    report = compare_variants(DATA, variant_a=bn_factory(LateMomentumBug), steps=50,
                              batch_size=8)
    assert not report.passed and report.steps == 11
    divergence = report.divergence
    assert divergence is not None and divergence.step == 11
    assert divergence.where == "layer 1 (1: LateMomentumBug(6) vs BatchNorm2d)"
    text = str(divergence)
    assert text.startswith("step 11: layer 1 (1: LateMomentumBug(6) vs BatchNorm2d): running_")
    assert "batch statistics over n=4608 values in float32" in text


@pytest.mark.parametrize(("mutant", "where", "kind"), [
    (BiasedRunningVar, "layer 10 (10: BiasedRunningVar(120) vs BatchNorm1d)", "running_var"),
    (BackwardMissingTerm, "layer 13 (13: BackwardMissingTerm(84) vs BatchNorm1d), backward",
     "input gradient"),
])
def test_bundled_mutants_diverge_at_step_one(mutant: type[nn.Module], where: str,
                                             kind: str) -> None:
    report = compare_variants(DATA, variant_a=bn_factory(mutant), steps=3, batch_size=8)
    assert report.divergence is not None
    assert (report.divergence.step, report.divergence.where,
            report.divergence.mismatch.name) == (1, where, kind)


def test_variants_with_other_state_dict_keys_are_refused() -> None:
    from bncheck.engine.mutants import SeedStyle

    with pytest.raises(InvalidArgument, match="their state_dict keys differ"):
        compare_variants(DATA, variant_a=bn_factory(SeedStyle), steps=1, batch_size=8)
