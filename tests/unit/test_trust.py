"""Trust in the verdict (issue 7): each numbered item, in-process and with few examples.

Third-party layers live in tests/data/third_party; each docstring there names its defect.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import find, settings

import bncheck
from bncheck import check_batchnorm
from bncheck.cli import main
from bncheck.engine.compare import compare, max_errors
from bncheck.engine.runner import Status, build_target, describe_target, verify
from bncheck.engine.strategies import inputs
from bncheck.engine.target import load_target
from bncheck.errors import BNCheckError, PropertyFailure, TargetError, UsageError

DATA = Path(__file__).parents[1] / "data" / "third_party"


def _load(spec: str):
    return load_target(f"{DATA / spec}")


def _run(spec: str, props: list[str], *, examples: int = 5, seed: int = 0,
         shrink: bool = True, **kwargs):
    return verify(build_target(_load(spec), label=spec, **kwargs), properties=props,
                  examples=examples, seed=seed, shrink=shrink)


# 1 -------------------------------------------------------------------------------------------
def test_momentum_none_declares_a_cumulative_average():
    cls = _load("cumulative_bn.py:CumulativeBN2d")
    check_batchnorm(cls, momentum=None, dims=(4,), properties=["running_stats_update"],
                    examples=5)
    with pytest.raises(AssertionError, match="running_(mean|var) after training step"):
        check_batchnorm(cls, dims=(4,), properties=["running_stats_update"], examples=5)


# 2 -------------------------------------------------------------------------------------------
def test_plain_attribute_statistics_are_owned_by_stats_are_buffers():
    report = _run("plain_attr_bn.py:PlainAttrBN",
                  ["eval_forward", "running_stats_update", "differential", "stats_are_buffers"],
                  examples=8, shrink=False)
    failed = {r.name: r for r in report.failed}
    assert "stats_are_buffers" in failed and failed["stats_are_buffers"].consequence_of is None
    others = [r for n, r in failed.items() if n != "stats_are_buffers"]
    assert others, "float64 cases should expose the float32 statistics"
    for r in others:
        assert r.consequence_of and "running statistics are not buffers" in r.consequence_of
        assert r.message.startswith("consequence of: running statistics are not buffers")


# 3 -------------------------------------------------------------------------------------------
def test_hidden_statistics_are_reported_once_and_differential_compares_what_it_can():
    report = _run("hidden_stats_bn.py:HiddenStatsBN", ["eval_forward", "differential"])
    by = {r.name: r for r in report.results}
    assert by["running_statistics"].status is Status.FAILED
    assert "--names running_mean=" in by["running_statistics"].message
    assert by["eval_forward"].status is Status.SKIPPED
    assert by["differential"].status is Status.PASSED
    declared = _run("hidden_stats_bn.py:HiddenStatsBN", ["eval_forward", "differential"],
                    names={"running_mean": "_rm", "running_var": "_rv"})
    assert declared.ok, declared.render()


# 5 -------------------------------------------------------------------------------------------
def test_initial_state_catches_zero_initialised_variance():
    report = _run("zero_init_bn.py:ZeroInitBN", ["initial_state", "train_forward"],
                  examples=3)
    by = {r.name: r for r in report.results}
    assert by["train_forward"].status is Status.PASSED
    assert by["initial_state"].status is Status.FAILED
    assert "running_var is [0.0" in by["initial_state"].message


# 6 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,check", [
    ("permuted", lambda x: x.stride(1) > x.stride(0)),
    ("storage_offset", lambda x: x.storage_offset() > 0),
    ("expanded", lambda x: 0 in x.stride()),
    ("channels_last", lambda x: x.is_contiguous(memory_format=torch.channels_last)),
])
def test_layouts_are_drawn(layout, check):
    x = find(inputs((3, 2, 2, 2), layouts=[layout]), lambda t: True,
             settings=settings(database=None))
    assert check(x)


def test_layout_assuming_kernel_fails_train_forward():
    report = _run("layout_kernel_bn.py:ContiguousKernelBN", ["train_forward"], examples=20,
                  dims=(4,), shrink=False)
    assert report.failed, "a kernel that assumes contiguous NCHW storage passed"
    assert "layout=" in report.failed[0].counterexample
    assert "layout=contiguous" not in report.failed[0].counterexample


# 7 and 11 ------------------------------------------------------------------------------------
def test_every_independent_check_is_reported_and_a_crashing_flag_once():
    report = _run("no_affine_bn.py:NoAffineBN", ["running_stats_update"])
    (constructor, update) = report.results
    assert constructor.name == "constructor" and "affine=False" in constructor.message
    assert "--fixed affine=true" in constructor.message
    assert update.status is Status.FAILED and "num_batches_tracked is 0" in update.message
    fixed = _run("no_affine_bn.py:NoAffineBN", ["running_stats_update"],
                 fixed={"affine": True})
    assert [r.name for r in fixed.results] == ["running_stats_update"]


def test_stats_are_buffers_reports_every_statistic_and_every_check():
    seed = load_target(f"{DATA.parent / 'seed_bn_fixed.py'}:BatchNorm")
    report = verify(seed, convention="onnx", properties=["stats_are_buffers"], examples=3)
    message = report.failed[0].message
    assert "moving_mean is a plain attribute" in message
    assert "Also failed (3 more independent checks)" in message
    assert "- moving_var is a plain attribute" in message
    assert "left moving_var in float32" in message


# 8, 9, 10 ------------------------------------------------------------------------------------
def test_own_names_and_channels_last_are_declarable():
    report = _run("nhwc_names_bn.py:NHWCBatchNorm",
                  ["train_forward", "eval_forward", "running_stats_update", "differential"],
                  channel_axis=-1, dims=(2, 3, 4),
                  names={"weight": "scale", "bias": "shift", "running_mean": "exp_mean",
                         "running_var": "exp_var"})
    assert report.ok, report.render()


def test_running_std_is_declarable():
    conv = bncheck.engine.conventions.convention("torch", running_stat="std")
    props = ["eval_forward", "running_stats_update", "running_stats_convergence"]
    report = _run("running_std_bn.py:RunningStdBN", props, convention=conv,
                  names={"running_var": "running_std"})
    assert report.ok, report.render()
    undeclared = _run("running_std_bn.py:RunningStdBN", ["running_stats_update"],
                      names={"running_var": "running_std"})
    assert not undeclared.ok


# 12 (the torch-written Keras style; Keras itself: tests/integration/test_keras.py) -------------
def test_keras_preset_and_mode_as_call_argument():
    report = _run("keras_style_bn.py:KerasStyleBN",
                  ["train_forward", "eval_forward", "running_stats_update", "train_eval_switch"],
                  convention="keras", mode_argument="training", dims=(2, 4),
                  names={"running_var": "moving_variance"})
    assert report.ok, report.render()


# 13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,match", [
    ("NotAModule", "is a class but not a torch.nn.Module"),
    ("NeedsMore", "cannot be built from num_features alone: it also needs groups"),
    ("Flattens", "is not a BatchNorm: for an input of shape"),
    ("functional", "also needs running_mean, running_var"),
])
def test_targets_that_are_not_batchnorms_are_one_usage_error(name, match):
    with pytest.raises(TargetError, match=match):
        verify(_load(f"odd_targets.py:{name}"), dims=(3,), examples=1)


def test_not_a_batchnorm_exits_2_from_the_cli():
    r = CliRunner().invoke(main, ["verify", f"{DATA / 'odd_targets.py'}:Flattens",
                                  "--dims", "3"])
    assert r.exit_code == 2 and "is not a BatchNorm" in r.output, r.output


# 14 ------------------------------------------------------------------------------------------
def test_exceptions_name_the_users_file_and_line():
    report = _run("odd_targets.py:AssertingBN", ["train_forward"], dims=(2,), examples=5)
    message = report.failed[0].message
    assert "AssertionError at" in message and "odd_targets.py:" in message
    assert "in forward" in message and "Traceback" not in message
    debug = verify(build_target(_load("odd_targets.py:AssertingBN"), dims=(2,), debug=True),
                   properties=["train_forward"], examples=5)
    assert "assert x.shape[0] < 4" in debug.failed[0].message


# 15 ------------------------------------------------------------------------------------------
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


# 16 ------------------------------------------------------------------------------------------
def test_declared_momentum_is_honoured_and_shown():
    t = build_target(torch.nn.BatchNorm1d, momentum=0.3)
    assert "momentum" not in t.configurable
    assert t.build(3, ndim=2, momentum=0.7).module.momentum == 0.3
    assert "momentum 0.3 (declared)" in describe_target(t)
    assert "momentum drawn (incl. None)" in describe_target(build_target(torch.nn.BatchNorm1d))


# 17 ------------------------------------------------------------------------------------------
def test_bncheck_profiles_never_redefine_the_users():
    from bncheck.engine.profiles import load_profile, register_profiles

    before = settings._current_profile
    settings.register_profile("ci", max_examples=1234)
    try:
        register_profiles()
        assert settings.get_profile("ci").max_examples == 1234
        assert load_profile("ci").max_examples == 20  # bncheck's ci is bncheck-ci
        assert settings.get_profile("ci").max_examples == 1234
    finally:
        settings.load_profile(before)


# issue 11: one rule per argument, in the API and the CLI -------------------------------------
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


def test_json_write_failure_keeps_the_results_and_exits_2(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = tmp_path / "vanishing.py"
    # The folder exists when --json is checked and is gone when the report is written.
    target.write_text(f"import shutil\nfrom torch.nn import BatchNorm1d as BN\n"
                      f"shutil.rmtree({str(out_dir)!r})\n")
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--property", "train_forward",
                                  "--examples", "2", "--json", str(out_dir / "r.json")])
    assert r.exit_code == 2, r.output
    assert "1 passed, 0 failed" in r.output and "(no such folder)" in r.output
    assert "Traceback" not in r.output


def test_ctrl_c_exits_130_and_writes_the_partial_report(tmp_path):
    # A real SIGINT to this process (bncheck's), sent while the target runs in its worker.
    target = tmp_path / "interrupting.py"
    target.write_text("import os, signal, time, torch\nfrom torch import nn\n"
                      "class BN(nn.BatchNorm1d):\n"
                      "    def forward(self, x):\n"
                      "        if x.dtype == torch.float16:\n"
                      f"            os.kill({os.getpid()}, signal.SIGINT)\n"
                      "            time.sleep(60)\n"
                      "        return super().forward(x)\n")
    out = tmp_path / "r.json"
    # One worker: train_forward has finished when reduced_precision interrupts (side by side,
    # which one finishes first depends on the machine).
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--examples", "2",
                                  "--property", "train_forward", "--property",
                                  "reduced_precision", "--json", str(out), "--jobs", "1"])
    assert r.exit_code == 130, r.output
    assert "interrupted (Ctrl-C) after 1 properties (finished: train_forward)" in r.output
    import json

    data = json.loads(out.read_text())
    assert data["interrupted"] is True and [p["name"] for p in data["properties"]] == [
        "train_forward"]


def test_ctrl_c_with_jobs_reports_every_finished_property(tmp_path):
    # Side by side: the slow property interrupts only once every other one has finished (a
    # marker file), out of catalogue order; the partial report still holds them all.
    target = tmp_path / "interrupting.py"
    target.write_text("import os, signal, time, torch\nfrom pathlib import Path\n"
                      "from torch import nn\n"
                      "class BN(nn.BatchNorm1d):\n"
                      "    def forward(self, x):\n"
                      "        if x.dtype == torch.float16:\n"
                      f"            time.sleep(3)\n"
                      f"            os.kill({os.getpid()}, signal.SIGINT)\n"
                      "            time.sleep(60)\n"
                      "        return super().forward(x)\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--examples", "2", "--property",
                                  "reduced_precision", "--property", "eval_forward",
                                  "--dtypes", "float32,float16", "--json", str(out),
                                  "--jobs", "2"])
    assert r.exit_code == 130, r.output
    import json

    data = json.loads(out.read_text())  # eval_forward (2nd in order) finished first
    assert [p["name"] for p in data["properties"]] == ["eval_forward"], r.output


# Renovation ----------------------------------------------------------------------------------
def test_one_error_hierarchy_and_enum_status():
    assert issubclass(PropertyFailure, BNCheckError) and issubclass(PropertyFailure,
                                                                    AssertionError)
    report = verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2)
    assert report.results[0].status is Status.PASSED
    assert report.to_json()["properties"][0]["status"] == "passed"


def test_entry_points():
    assert {"verify", "check_batchnorm", "BatchNorm", "batch_norm", "BNCheckError",
            "VerificationFailed"} <= set(bncheck.__all__)
    assert "lenet_bn" not in bncheck.__all__
    assert bncheck.verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2).ok


def test_max_errors_is_shared_and_handles_empty_arrays():
    from bncheck.onnx import _report, gate, verify

    assert gate.max_errors is _report.max_errors is verify.max_errors is max_errors
    empty = np.zeros((0, 3), dtype=np.float32)
    assert max_errors(empty, empty) == (0.0, 0.0)
    assert max_errors(np.array([1.0]), np.array([np.nan]))[0] == math.inf
    assert max_errors(np.ones(2), np.ones(3)) == (math.inf, math.inf)


# Replay: the same seed draws the same cases wherever bncheck runs ----------------------------
class _Recording(torch.nn.BatchNorm1d):
    seen: list[list[float]] = []

    def forward(self, x):
        _Recording.seen.append(x.detach().flatten().tolist())
        return super().forward(x)


def test_draws_do_not_depend_on_the_machines_local_constants(tmp_path, monkeypatch):
    """Hypothesis draws some values from the literals of every loaded non-site-packages module
    (bncheck's own source under an editable install, the caller's script, the target's file).
    Loading a module full of literals must not change what a seed draws."""
    def drawn():
        _Recording.seen.clear()
        verify(_Recording, properties=["train_forward"], seed=5, examples=20, dims=(2,))
        return list(_Recording.seen)

    first = drawn()
    lots = ", ".join(f"{-2 + k / 64:.6f}" for k in range(256))
    (tmp_path / "local_literals_i7.py").write_text(f"VALUES = [{lots}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("local_literals_i7")
    try:
        assert drawn() == first
    finally:
        sys.modules.pop("local_literals_i7", None)


def test_seed_gradients_is_a_fixed_function_of_its_inputs():
    seed = load_target(f"{DATA.parent / 'seed_bn_fixed.py'}:BatchNorm")
    for s in (0, 2, 3):
        report = verify(seed, convention="onnx", properties=["gradients"], seed=s, examples=10)
        assert report.ok, report.render()


# Real layers from public code (tests/data/third_party: frozen_bn, ghost_bn, batch_renorm) ------
def test_a_frozen_batchnorm_is_named_once_and_its_eval_behaviour_verifiable():
    """torchvision's FrozenBatchNorm2d always normalizes with its stored statistics: one
    training_mode failure says so and how to verify it; the training properties are skipped."""
    report = _run("frozen_bn.py:FrozenBatchNorm2d", ["train_forward", "eval_forward"],
                  dims=(4,))
    by = {r.name: r for r in report.results}
    assert by["training_mode"].status is Status.FAILED
    assert "frozen" in by["training_mode"].message
    assert "--property eval_forward" in by["training_mode"].message
    assert by["train_forward"].status is Status.SKIPPED
    assert by["eval_forward"].status is Status.PASSED
    eval_only = _run("frozen_bn.py:FrozenBatchNorm2d",
                     ["eval_forward", "grad_mode_independence", "stats_are_buffers",
                      "initial_state"], dims=(4,))
    assert eval_only.ok, eval_only.render()


def test_a_wrappers_batchnorm_submodule_is_found():
    """TabNet's ghost BatchNorm keeps its statistics in ``self.bn``: found undeclared (as
    ``bn.running_mean``), and a dotted --names declaration reaches it too."""
    props = ["running_stats_update", "gradients", "differential", "stats_are_buffers"]
    report = _run("ghost_bn.py:GBN", props, dims=(2,), momentum=0.01)
    assert report.ok, report.render()
    assert [r.name for r in report.results] == props
    declared = _run("ghost_bn.py:GBN", ["running_stats_update"], dims=(2,), momentum=0.01,
                    names={"running_mean": "bn.running_mean", "running_var": "bn.running_var"})
    assert declared.ok, declared.render()


def test_parameters_switched_off_by_affine_false_are_not_the_layers_affine():
    """Batch Renorm keeps weight and bias with affine=False and skips them: bncheck neither sets
    nor expects them; its TorchScript base class still gets a functional call for gradcheck."""
    t = build_target(_load("batch_renorm.py:BatchRenorm1d"))
    assert not t.build(3, ndim=2, affine=False).affine
    bn = t.build(3, ndim=2)
    assert bn.affine and bn.param_names() == ["weight", "bias"]
    x = torch.randn(4, 3)
    y = bn.functional(x, {"weight": torch.full((3,), 2.0), "bias": torch.ones(3)}, what="f")
    assert torch.allclose(y, bn.call(x) * 2 + 1, atol=1e-5)


def test_a_norm_activation_block_is_named_as_such():
    # timm-style BatchNormAct2d: the failure names the activation, not only the numbers; with the
    # activation off it is a plain BatchNorm2d and passes.
    for name, act in (("BatchNormAct2d", "ReLU"), ("BatchNormSiLU2d", "SiLU/Swish")):
        report = verify(load_target(f"{DATA / 'norm_act_bn.py'}:{name}"), examples=5, jobs=1,
                        properties=["train_forward", "eval_forward"], shrink=False)
        assert [r.status for r in report.results] == [Status.FAILED] * 2
        for r in report.results:
            assert f"The output equals {act}(expected output): an activation is applied " \
                   "after the normalization" in r.message, r.message
    plain = verify(load_target(f"{DATA / 'norm_act_bn.py'}:without_activation"), examples=5,
                   jobs=1, properties=["train_forward", "eval_forward"], dims=(4,))
    assert plain.ok, plain.render()
    # A wrong normalization that no activation explains gets no such line.
    seed = verify(load_target(f"{DATA.parent / 'seed_bn_fixed.py'}:BatchNorm"), examples=5,
                  jobs=1, properties=["train_forward"], convention="onnx", shrink=False)
    assert not seed.ok and "activation" not in seed.results[0].message


def test_a_batchnorm_without_running_statistics_by_design_can_say_so():
    # Undeclared: one running_statistics finding that names both ways out; declared
    # track_running_stats=False: verified as torch's BatchNorm without running statistics.
    layer = load_target(f"{DATA / 'train_only_bn.py'}:TrainOnlyBN")
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
    buggy = verify(load_target(f"{DATA / 'train_only_bn.py'}:UnbiasedTrainOnlyBN"), examples=4,
                   jobs=1, properties=props, names=names, dtypes=["float32", "float64"],
                   fixed={"track_running_stats": False}, shrink=False)
    assert {r.name for r in buggy.failed} >= {"train_forward"}
