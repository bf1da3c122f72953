"""The verify runner: results, skips, replays, exceptions in the target, check_batchnorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bncheck
from bncheck import check_batchnorm
from bncheck.engine.mutants import MomentumFlipped
from bncheck.engine.properties import CATALOGUE, names
from bncheck.engine.runner import verify
from bncheck.engine.target import load_target
from bncheck.errors import InvalidArgument, VerificationFailed

DATA = Path(__file__).parents[1] / "data"


def test_catalogue_is_documented():
    assert len(CATALOGUE) >= 11
    for p in CATALOGUE:
        assert p.checks and p.catches and p.tolerance, p.name
    assert names()[0] == "train_forward"


@pytest.mark.parametrize("obj", [bncheck.BatchNorm, torch.nn.BatchNorm2d, torch.nn.BatchNorm1d,
                                 torch.nn.BatchNorm3d])
def test_correct_implementations_pass_everything(obj):
    report = verify(obj, profile="ci", examples=10, seed=1)
    assert report.ok, report.render()
    # torch's classes and the reference declare empty batches: nothing is skipped
    assert {r.status for r in report.results} == {"passed"}


def test_skips_name_the_reason():
    report = verify(bncheck.BatchNorm, dtypes=["float16"], examples=2,
                    properties=["train_forward", "reduced_precision"])
    first, second = report.results
    assert first.status == "skipped" and "requested dtypes: float16" in first.message
    assert second.status == "passed"
    report = verify(bncheck.BatchNorm, dtypes=["float32"], examples=2,
                    properties=["reduced_precision"])
    assert report.results[0].status == "skipped"


def test_exception_in_target_is_a_failure_not_a_crash():
    seed = load_target(f"{DATA / 'seed_bn.py'}:BatchNorm")
    report = verify(seed, convention="onnx", properties=["train_forward", "eval_forward"])
    for r in report.results:
        assert r.status == "failed"
        assert "NameError" in r.message and "'beta' is not defined" in r.message


@pytest.mark.slow
def test_same_seed_replays_the_same_counterexample():
    def run(props):
        report = verify(MomentumFlipped, properties=props, seed=7, profile="dev")
        return {r.name: (r.counterexample, r.message) for r in report.results}

    # Properties run before it (here in catalogue order) do not change what it draws.
    full = run(["train_forward", "eval_forward", "running_stats_update"])
    again = run(["running_stats_update"])
    assert again["running_stats_update"] == full["running_stats_update"]
    assert full["running_stats_update"][1].startswith("running_var")


def test_check_batchnorm_raises_an_assertion_with_the_report():
    with pytest.raises(AssertionError) as info:
        check_batchnorm(MomentumFlipped, properties=["running_stats_update"], seed=3)
    assert isinstance(info.value, VerificationFailed)
    text = str(info.value)
    assert "property running_stats_update failed" in text
    assert "Mismatched elements" in text
    assert "Reproduce: check_batchnorm(MomentumFlipped, properties=['running_stats_update'], " \
           "seed=3)" in text
    assert check_batchnorm(torch.nn.BatchNorm1d, properties=["eval_forward"], examples=3).ok


@pytest.mark.parametrize("kwargs,match", [
    ({"properties": ["nope"]}, "Unknown property='nope'; available: train_forward"),
    ({"dtypes": ["float8"]}, "Expected dtypes from"),
    ({"profile": "fast"}, "profile='fast'"),
    ({"examples": 0}, "examples=0"),
    ({"dims": (6,)}, "dims=\\(6,\\)"),
    ({"convention": "caffe"}, "convention='caffe'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        verify(bncheck.BatchNorm, **kwargs)


class _Nondeterministic(torch.nn.BatchNorm1d):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x) + (1.0 if type(self).calls % 7 == 3 else 0.0)


def test_nondeterministic_target_is_a_failure_not_an_error():
    report = verify(_Nondeterministic, properties=["train_forward"], seed=0)
    (r,) = report.results
    assert r.status == "failed" and "nondeterministic" in r.message
