"""One root cause per design: a layer that normalizes training batches with its running
averages (RealNVP style, tests/data/third_party/realnvp_bn.py) gets one training_mode finding
naming the design, and the training properties' failures are marked its consequences."""

from __future__ import annotations

from pathlib import Path

import torch

from bncheck.engine.runner import verify
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"


def test_running_averages_in_training_is_one_finding_with_consequences():
    report = verify(load_target(f"{DATA}/realnvp_bn.py:RunningAverageBN"), examples=6, seed=0,
                    shrink=False, dtypes=["float32", "float64"])
    own = [r for r in report.failed if r.consequence_of is None]
    assert [r.name for r in own] == ["training_mode"], report.render()
    assert "RealNVP-style" in own[0].message
    for r in report.failed:
        if r.consequence_of is not None:
            assert r.message.startswith("consequence of: training normalizes with the running "
                                        "averages (training_mode)\n"), r.message


def test_its_eval_and_statistics_pass_as_the_finding_suggests():
    report = verify(load_target(f"{DATA}/realnvp_bn.py:RunningAverageBN"), examples=6, seed=0,
                    properties=["eval_forward", "running_stats_update", "stats_are_buffers",
                                "initial_state"], dtypes=["float32", "float64"])
    assert [r.name for r in report.failed] == ["training_mode"], report.render()


def test_torch_batchnorm_is_not_taken_for_the_design():
    report = verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=3, seed=0)
    assert report.ok, report.render()


class Float32ComputeBN(torch.nn.BatchNorm1d):
    """Computes in float32 whatever dtype it is given (as a Keras dtype policy does)."""

    def forward(self, x):
        y = torch.nn.functional.batch_norm(
            x.float(), self.running_mean.float(), self.running_var.float(),
            self.weight.float(), self.bias.float(), self.training, self.momentum, self.eps)
        return y.to(x.dtype)


def test_a_layer_computing_in_float32_is_judged_as_float32_and_told_so():
    report = verify(Float32ComputeBN, dims=(2,), momentum=0.1, examples=6, seed=0,
                    shrink=False, dtypes=["float32", "float64"],
                    properties=["train_forward", "gradients", "eval_forward"])
    by = {r.name: r for r in report.results}
    assert by["train_forward"].status == "passed", report.render()
    assert by["gradients"].status == "skipped"
    assert "computes in float32 whatever dtype it is given" in by["gradients"].message


def test_float64_layers_are_not_taken_for_float32_ones():
    from bncheck.engine.preflight import preflight
    from bncheck.engine.runner import build_target

    for cls in (torch.nn.BatchNorm1d, Float32ComputeBN):
        _, _, facts = preflight(build_target(cls, dims=(2,)))
        assert (facts.computes_in_float32 is not None) == (cls is Float32ComputeBN)
