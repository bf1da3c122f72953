"""What a failure says: one finding per root cause (its consequences named as such), every
independent check of a property reported, the defect named (zero-initialised variance, an
activation after the normalization, a frozen BatchNorm), the user's file and line for an
exception, expected vs. got (NaN included), the counterexample's input always shown.

Layers in tests/data/third_party; each docstring there names its defect."""

from __future__ import annotations

from pathlib import Path

import torch

from bncheck.engine.compare import compare
from bncheck.engine.runner import Status, build_target, verify
from bncheck.engine.target import load_target

SEED = Path(__file__).parents[1] / "data" / "seed_bn_fixed.py"


# one finding per root cause -------------------------------------------------------------------
def test_plain_attribute_statistics_are_owned_by_stats_are_buffers(third_party):
    props = ["eval_forward", "running_stats_update", "differential", "stats_are_buffers"]
    report = third_party.run("plain_attr_bn.py:PlainAttrBN", props, examples=8, shrink=False)
    failed = {r.name: r for r in report.failed}
    assert "stats_are_buffers" in failed and failed["stats_are_buffers"].consequence_of is None
    others = [r for n, r in failed.items() if n != "stats_are_buffers"]
    assert others, "float64 cases should expose the float32 statistics"
    for r in others:
        assert r.consequence_of and "running statistics are not buffers" in r.consequence_of
        assert r.message.startswith("consequence of: running statistics are not buffers")


def test_hidden_statistics_are_reported_once_and_differential_compares_what_it_can(third_party):
    report = third_party.run("hidden_stats_bn.py:HiddenStatsBN", ["eval_forward", "differential"])
    by = {r.name: r for r in report.results}
    assert by["running_statistics"].status is Status.FAILED
    assert "--names running_mean=" in by["running_statistics"].message
    assert by["eval_forward"].status is Status.SKIPPED
    assert by["differential"].status is Status.PASSED
    declared = third_party.run("hidden_stats_bn.py:HiddenStatsBN",
                               ["eval_forward", "differential"],
                               names={"running_mean": "_rm", "running_var": "_rv"})
    assert declared.ok, declared.render()


def test_a_frozen_batchnorm_is_named_once_and_its_eval_behaviour_verifiable(third_party):
    """torchvision's FrozenBatchNorm2d always normalizes with its stored statistics: one
    training_mode failure says so and how to verify it; the training properties are skipped."""
    report = third_party.run("frozen_bn.py:FrozenBatchNorm2d", ["train_forward", "eval_forward"],
                             dims=(4,))
    by = {r.name: r for r in report.results}
    assert by["training_mode"].status is Status.FAILED
    assert "frozen" in by["training_mode"].message
    assert "--property eval_forward" in by["training_mode"].message
    assert by["train_forward"].status is Status.SKIPPED
    assert by["eval_forward"].status is Status.PASSED
    eval_only = third_party.run("frozen_bn.py:FrozenBatchNorm2d",
                                ["eval_forward", "grad_mode_independence", "stats_are_buffers",
                                 "initial_state"], dims=(4,))
    assert eval_only.ok, eval_only.render()


# every independent check, a crashing flag once ------------------------------------------------
def test_every_independent_check_is_reported_and_a_crashing_flag_once(third_party):
    report = third_party.run("no_affine_bn.py:NoAffineBN", ["running_stats_update"])
    (constructor, update) = report.results
    assert constructor.name == "constructor" and "affine=False" in constructor.message
    assert "--fixed affine=true" in constructor.message
    assert update.status is Status.FAILED and "num_batches_tracked is 0" in update.message
    fixed = third_party.run("no_affine_bn.py:NoAffineBN", ["running_stats_update"],
                            fixed={"affine": True})
    assert [r.name for r in fixed.results] == ["running_stats_update"]


def test_stats_are_buffers_reports_every_statistic_and_every_check():
    seed = load_target(f"{SEED}:BatchNorm")
    report = verify(seed, convention="onnx", properties=["stats_are_buffers"], examples=3)
    message = report.failed[0].message
    assert "moving_mean is a plain attribute" in message
    assert "Also failed (3 more independent checks)" in message
    assert "- moving_var is a plain attribute" in message
    assert "left moving_var in float32" in message


# the defect named -----------------------------------------------------------------------------
def test_initial_state_catches_zero_initialised_variance(third_party):
    report = third_party.run("zero_init_bn.py:ZeroInitBN", ["initial_state", "train_forward"],
                             examples=3)
    by = {r.name: r for r in report.results}
    assert by["train_forward"].status is Status.PASSED
    assert by["initial_state"].status is Status.FAILED
    assert "running_var is [0.0" in by["initial_state"].message


def test_a_norm_activation_block_is_named_as_such(third_party):
    # timm-style BatchNormAct2d: the failure names the activation, not only the numbers; with the
    # activation off it is a plain BatchNorm2d and passes.
    for name, act in (("BatchNormAct2d", "ReLU"), ("BatchNormSiLU2d", "SiLU/Swish")):
        report = verify(third_party.load(f"norm_act_bn.py:{name}"), examples=5, jobs=1,
                        properties=["train_forward", "eval_forward"], shrink=False)
        assert [r.status for r in report.results] == [Status.FAILED] * 2
        for r in report.results:
            assert f"The output equals {act}(expected output): an activation is applied " \
                   "after the normalization" in r.message, r.message
    plain = verify(third_party.load("norm_act_bn.py:without_activation"), examples=5, jobs=1,
                   properties=["train_forward", "eval_forward"], dims=(4,))
    assert plain.ok, plain.render()
    # A wrong normalization that no activation explains gets no such line.
    seed = verify(load_target(f"{SEED}:BatchNorm"), examples=5, jobs=1,
                  properties=["train_forward"], convention="onnx", shrink=False)
    assert not seed.ok and "activation" not in seed.results[0].message


# the message: where, expected vs. got, the input ----------------------------------------------
def test_exceptions_name_the_users_file_and_line(third_party):
    report = third_party.run("odd_targets.py:AssertingBN", ["train_forward"], dims=(2,), examples=5)
    message = report.failed[0].message
    assert "AssertionError at" in message and "odd_targets.py:" in message
    assert "in forward" in message and "Traceback" not in message
    debug = verify(build_target(third_party.load("odd_targets.py:AssertingBN"), dims=(2,),
                                debug=True), properties=["train_forward"], examples=5)
    assert "assert x.shape[0] < 4" in debug.failed[0].message


def test_mismatch_reports_expected_got_and_nan():
    m = compare(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), name="y")
    assert m is not None
    text = str(m)
    assert "Greatest absolute difference: nan" in text and "expected 2, got nan" in text
    m = compare(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 2.0]), name="y")
    assert "At channel 1: expected 2, got 3" in str(m)


def test_counterexample_always_shows_x():
    from bncheck.engine.strategies import BNCase, BNConfig, Mode

    x = torch.arange(40.0).reshape(4, 10)
    case = BNCase((4, 10), torch.float32, Mode(True), BNConfig(), x, torch.ones(10),
                  torch.zeros(10), ("standard",) * 10, "contiguous")
    assert "x=<40 values, min 0, max 39, mean 19.5>" in case.describe()
