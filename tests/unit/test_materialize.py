"""State made at the first call: Keras layers built in ``build()``, torch's lazy BatchNorms.

bncheck materializes them as their framework does (Keras's ``build(input_shape)``; a dry eval
call without autograd for torch's lazy modules) before it reads their state, and compares a
Keras layer's state through ``get_weights()``/``set_weights()`` (its state_dict keys are per
instance). Layers: tests/data/third_party/keras_build_bn.py, lazy_bn.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bncheck.engine.runner import Status, build_target, verify
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"
KERAS_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


@pytest.mark.parametrize("obj", [torch.nn.LazyBatchNorm2d, f"{DATA}/lazy_bn.py:lazy_bn"],
                         ids=["class", "factory"])
def test_lazy_batchnorm_is_materialized_without_touching_its_statistics(obj):
    obj = load_target(obj) if isinstance(obj, str) else obj
    bn = build_target(obj, dims=(4,)).build(3, ndim=4)
    assert bn.module.running_mean.tolist() == [0.0, 0.0, 0.0]  # the dry call changed nothing
    assert bn.module.running_var.tolist() == [1.0, 1.0, 1.0]
    assert int(bn.module.num_batches_tracked) == 0 and bn.module.training
    report = verify(obj, dims=(4,), properties=["running_stats_update", "train_eval_switch",
                                                 "train_forward", "gradients"],
                    examples=5, seed=0, shrink=False)
    assert report.ok, report.render()


def test_materializing_a_layer_that_raises_names_the_step():
    class Broken(torch.nn.LazyBatchNorm1d):
        def initialize_parameters(self, input):
            raise RuntimeError("no shape for you")

    with pytest.raises(Exception, match="no shape for you.*before the first call"):
        build_target(Broken, dims=(2,)).build(3, ndim=2)


@pytest.fixture(scope="module")
def keras():
    if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("KERAS_BACKEND names another backend")
    return pytest.importorskip("keras")


def test_keras_layer_with_weights_made_in_build_passes(keras):
    cls = load_target(f"{DATA}/keras_build_bn.py:KerasBuildBN")
    report = verify(cls, convention="keras", mode_argument="training", names=KERAS_NAMES,
                    dtypes=["float32"], examples=5, seed=0, shrink=False)
    assert report.ok, report.render()
    assert report.count(Status.PASSED) >= 10  # found its statistics: not skipped


def test_real_keras_batchnorm_class_is_built_and_round_trips_its_state(keras):
    report = verify(keras.layers.BatchNormalization, convention="keras",
                    mode_argument="training", names=KERAS_NAMES, dtypes=["float32"],
                    properties=["initial_state", "eval_forward", "train_eval_switch"],
                    examples=10, seed=0, shrink=False)
    by = {r.name: r for r in report.results}
    assert "running_statistics" not in by
    assert by["initial_state"].status is Status.PASSED
    assert by["eval_forward"].status is Status.PASSED
    # its one-pass variance may show in the resumed update, never the state round trip
    assert "fresh instance" not in by["train_eval_switch"].message
