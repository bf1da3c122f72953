"""Third-party-style BatchNorms (tests/data/third_party): correct ones pass, buggy ones fail.

Each correct case is a false alarm bncheck once raised; each buggy one is a realistic defect that
is not a bundled mutant, killed by the property meant for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bncheck.engine.runner import build_target, verify
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"


def _target(spec: str, **kwargs):
    return build_target(load_target(str(DATA / spec)), label=spec, **kwargs)


@pytest.mark.parametrize(("spec", "kwargs", "props", "seed"), [
    # momentum=None was drawn for every constructor taking `momentum`: F.batch_norm raised.
    ("fbn_wrap.py:FBN", {}, ["train_forward", "running_stats_update", "differential"], 0),
    # The unbiased batch variance overflows float16 before blending; the blend would not.
    ("welford_bn.py:WelfordBN", {}, ["reduced_precision", "running_stats_update"], 0),
    # float64 running statistics vs. torch.nn's float32 ones (subnormal installed mean).
    ("f64buf_bn.py:F64BN", {}, ["differential"], 1),
    ("keras_bn.py:KerasBN", {"convention": "onnx", "momentum": 0.99, "eps": 1e-3},
     ["train_forward", "eval_forward", "running_stats_update", "stats_are_buffers"], 0),
    ("chlast_bn.py:ChannelsLastBN", {"dims": (2, 3, 4, 5)},
     ["train_forward", "eval_forward", "running_stats_update", "differential"], 0),
])
def test_correct_third_party_pass(spec, kwargs, props, seed):
    report = verify(_target(spec, **kwargs), properties=props, examples=20, seed=seed,
                    dtypes=["float32", "float64", "float16", "bfloat16"])
    assert report.ok, report.render()


@pytest.mark.parametrize(("name", "killer"), [
    ("Unbiased2DOnly", "train_forward"),
    ("UpdateThenNormalize", "train_forward"),
    ("MomentumBoth", "running_stats_update"),
    ("EpsAfterSqrtEval", "eval_forward"),
    ("WeightBeforeMean", "train_forward"),
    ("MeanDim0Only4D", "train_forward"),
    ("RunningStd", "running_stats_update"),
    ("NoCount", "running_stats_update"),
    ("InplaceGraph", "stats_are_buffers"),
    ("EvalBatchStatsIfBig", "eval_forward"),
    ("Fp16EvalFloat32", "reduced_precision"),
    ("BiasIgnoredNoAffine", "train_forward"),
    ("EpsSquared", "train_forward"),
    ("DetachedMeanGrad", "gradients"),
    ("VarFromCenteredByRunning", "running_stats_update"),
])
def test_buggy_third_party_fail(name, killer):
    report = verify(_target(f"buggy.py:{name}"), properties=[killer], examples=20, seed=0,
                    shrink=False)
    assert not report.ok, f"{name} passed {killer}"


def test_statistics_computed_in_float16_are_named_as_overflow():
    # Keras style computes the batch variance in the input dtype: (x - mean)**2 overflows float16.
    report = verify(_target("keras_bn.py:KerasBN", convention="onnx", momentum=0.99, eps=1e-3),
                    properties=["reduced_precision"], examples=20, seed=1)
    (result,) = report.results
    assert result.status == "failed"
    assert "overflowed" in result.message and "float32" in result.message, result.message


#: Issue 7's third-party styles (tests/data/third_party; each file's header names its defect):
#: (implementation, declarations, properties run, the failing properties that own a defect).
#: Failures that are consequences of another property's defect are named as such and are not
#: listed. More of these run in tests/unit/test_declarations.py and test_findings.py.
STYLES = [
    ("d2l_old.py:BatchNorm", {"convention": "onnx"},
     ["running_stats_update", "grad_mode_independence", "stats_are_buffers", "eval_forward"],
     {"grad_mode_independence", "stats_are_buffers"}),
    ("d2l_new.py:BatchNorm", {"convention": "torch"},
     ["running_stats_update", "grad_mode_independence", "stats_are_buffers"],
     {"running_stats_update", "grad_mode_independence", "stats_are_buffers"}),
    ("custom_gan_bn.py:CustomBN", {"dims": (2,)},
     ["train_forward", "running_stats_update", "stats_are_buffers"],
     {"running_stats_update", "stats_are_buffers"}),
    ("cumulative_bn.py:CumulativeBN2d", {"momentum": None, "dims": (4,)},
     ["running_stats_update", "running_stats_convergence", "differential", "empty_batch"],
     set()),
]


@pytest.mark.parametrize(("spec", "kwargs", "props", "owners"), STYLES,
                         ids=[s[0] for s in STYLES])
def test_third_party_styles(spec, kwargs, props, owners):
    report = verify(_target(spec, **kwargs), properties=props, examples=8, seed=0,
                    shrink=False, dtypes=["float32", "float64"])
    own = {r.name for r in report.failed if r.consequence_of is None}
    assert own == owners, report.render()
