"""What a user declares about a layer is honoured: momentum (incl. None), own attribute names,
channels last, a running standard deviation, Keras's preset with the mode as a call argument, a
layer with no running statistics by design; a bad declaration is one usage error naming it.

Layers in tests/data/third_party; each docstring there names what it does."""

from __future__ import annotations

import pytest
import torch

import bncheck
from bncheck import check_batchnorm
from bncheck.engine.runner import Status, build_target, describe_target, verify
from bncheck.errors import UsageError


# momentum -------------------------------------------------------------------------------------
def test_momentum_none_declares_a_cumulative_average(third_party):
    cls = third_party.load("cumulative_bn.py:CumulativeBN2d")
    check_batchnorm(cls, momentum=None, dims=(4,), properties=["running_stats_update"],
                    examples=5)
    with pytest.raises(AssertionError, match="running_(mean|var) after training step"):
        check_batchnorm(cls, dims=(4,), properties=["running_stats_update"], examples=5)


def test_declared_momentum_is_honoured_and_shown():
    t = build_target(torch.nn.BatchNorm1d, momentum=0.3)
    assert "momentum" not in t.configurable
    assert t.build(3, ndim=2, momentum=0.7).module.momentum == 0.3
    assert "momentum 0.3 (declared)" in describe_target(t)
    assert "momentum drawn (incl. None)" in describe_target(build_target(torch.nn.BatchNorm1d))


# names, layout and the running statistic ------------------------------------------------------
def test_own_names_and_channels_last_are_declarable(third_party):
    props = ["train_forward", "eval_forward", "running_stats_update", "differential"]
    report = third_party.run("nhwc_names_bn.py:NHWCBatchNorm", props, channel_axis=-1,
                             dims=(2, 3, 4),
                             names={"weight": "scale", "bias": "shift",
                                    "running_mean": "exp_mean", "running_var": "exp_var"})
    assert report.ok, report.render()


def test_running_std_is_declarable(third_party):
    conv = bncheck.engine.conventions.convention("torch", running_stat="std")
    props = ["eval_forward", "running_stats_update", "running_stats_convergence"]
    report = third_party.run("running_std_bn.py:RunningStdBN", props, convention=conv,
                             names={"running_var": "running_std"})
    assert report.ok, report.render()
    undeclared = third_party.run("running_std_bn.py:RunningStdBN", ["running_stats_update"],
                                 names={"running_var": "running_std"})
    assert not undeclared.ok


# presets and the mode as a call argument ------------------------------------------------------
def test_keras_preset_and_mode_as_call_argument(third_party):
    # the torch-written Keras style; Keras itself: tests/integration/test_keras.py
    props = ["train_forward", "eval_forward", "running_stats_update", "train_eval_switch"]
    report = third_party.run("keras_style_bn.py:KerasStyleBN", props, convention="keras",
                             mode_argument="training", dims=(2, 4),
                             names={"running_var": "moving_variance"})
    assert report.ok, report.render()


# no running statistics by design --------------------------------------------------------------
def test_a_batchnorm_without_running_statistics_by_design_can_say_so(third_party):
    # Undeclared: one running_statistics finding that names both ways out; declared
    # track_running_stats=False: verified as torch's BatchNorm without running statistics.
    layer = third_party.load("train_only_bn.py:TrainOnlyBN")
    props = ["train_forward", "eval_forward", "differential"]
    names = {"weight": "gamma", "bias": "beta"}
    undeclared = verify(layer, examples=4, jobs=1, properties=props, names=names,
                        dtypes=["float32", "float64"], shrink=False)
    finding = next(r for r in undeclared.results if r.name == "running_statistics")
    assert "--fixed track_running_stats=false" in finding.message
    declared = verify(layer, examples=4, jobs=1, properties=props, names=names,
                      dtypes=["float32", "float64"], fixed={"track_running_stats": False})
    assert declared.ok, declared.render()
    assert [r.status for r in declared.results] == [Status.PASSED, Status.SKIPPED,
                                                    Status.PASSED]
    assert "declares it keeps none" in declared.results[1].message
    buggy = verify(third_party.load("train_only_bn.py:UnbiasedTrainOnlyBN"), examples=4, jobs=1,
                   properties=props, names=names, dtypes=["float32", "float64"],
                   fixed={"track_running_stats": False}, shrink=False)
    assert {r.name for r in buggy.failed} >= {"train_forward"}


# bad declarations: one rule per argument, in the API and the CLI ------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -1.0}, "eps=-1.0"),
    ({"eps": float("nan")}, "eps=nan"),
    ({"momentum": 2.0}, "momentum=2.0"),
    ({"names": {"gain": "g"}}, "'gain' is not one of them"),
    ({"fixed": {"affine": "yes"}}, "fixed\\['affine'\\]"),
    ({"channel_axis": 2}, "channel_axis=2"),
])
def test_check_batchnorm_rejects_bad_declarations(kwargs, match):
    with pytest.raises(UsageError, match=match):  # InvalidArgument or InvalidArgumentType
        check_batchnorm(torch.nn.BatchNorm1d, examples=1, **kwargs)
