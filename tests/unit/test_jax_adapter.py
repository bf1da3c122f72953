"""The framework boundary for Flax: NNX and Linen BatchNorms behind the properties' interface,
float64 scoped to bncheck's calls, jax never imported by torch-only runs, Flax's flags declared,
and the one-pass variance named where it explains a failure."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

jax = pytest.importorskip("jax")
flax = pytest.importorskip("flax")

from flax import linen, nnx  # noqa: E402

from bncheck.engine.runner import build_target, verify  # noqa: E402
from bncheck.errors import InvalidArgument, InvalidArgumentType  # noqa: E402

TARGETS = [(nnx.BatchNorm, "flax-nnx"), (linen.BatchNorm, "flax-linen")]


@pytest.mark.parametrize("obj,framework", TARGETS)
def test_flax_batchnorm_is_read_as_flax_declares_it(obj, framework):
    t = build_target(obj, framework=framework)
    assert t.convention.name == "flax" and t.channel_axis == -1 and t.eps == 1e-5
    assert t.constructor.accepts == {"eps", "momentum", "affine", "bias"}
    bn = t.build(3, ndim=4)
    assert (bn.weight_name, bn.bias_name) == ("scale", "bias")
    assert (bn.mean_name, bn.var_name, bn.stat_collection) == ("mean", "var", "batch_stats")
    assert bn.stats()[1].tolist() == [1.0, 1.0, 1.0]
    bn.set_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    assert bn.stats()[0].tolist() == [1.0, 2.0, 3.0]
    x = torch.randn(4, 3, 2, 2)
    y = bn.train(False).call(x)  # channels moved last for Flax and back
    expected = (x - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.sqrt(
        torch.tensor([4.0, 5.0, 6.0]).view(1, 3, 1, 1) + 1e-5)
    torch.testing.assert_close(y, expected)
    assert set(bn.state_dict()) == {"params.scale", "params.bias", "batch_stats.mean",
                                    "batch_stats.var"}
    assert bn.to(torch.float64).stat_dtype() == torch.float64


def test_flags_are_flax_declarations():
    t = build_target(nnx.BatchNorm, framework="flax-nnx",
                     fixed={"use_fast_variance": False, "use_scale": False})
    bn = t.build(2, ndim=2)
    assert bn.module.use_fast_variance is False and bn.weight_name is None
    assert bn.bias_name == "bias"
    with pytest.raises(InvalidArgument, match=r"fixed keys from \['axis', 'axis_name', "
                                              r"'use_bias', 'use_fast_variance', 'use_scale'\]"):
        build_target(nnx.BatchNorm, framework="flax-nnx", fixed={"affine": True})
    with pytest.raises(InvalidArgumentType, match=r"fixed\['use_fast_variance'\]"):
        build_target(nnx.BatchNorm, framework="flax-nnx", fixed={"use_fast_variance": "no"})
    with pytest.raises(InvalidArgument, match="framework='jax'"):
        build_target(nnx.BatchNorm, framework="jax")


def test_axis_name_is_bound_for_a_single_device_call():
    t = build_target(linen.BatchNorm, framework="flax-linen", fixed={"axis_name": "batch"})
    bn = t.build(2, ndim=2)
    x = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    y = bn.train(True).call(x)  # lax.pmean over a one-member axis: the batch's own statistics
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-4, rtol=0)


def test_float64_is_scoped_to_bncheck_calls():
    assert jax.config.jax_enable_x64 is False
    report = verify(nnx.BatchNorm, framework="flax-nnx", properties=["gradients"], examples=2,
                    timeout=None, fixed={"use_fast_variance": False})
    assert report.ok, report.render()
    assert jax.config.jax_enable_x64 is False
    assert jax.numpy.zeros(1, dtype=float).dtype == jax.numpy.float32


def test_torch_only_runs_never_import_jax():
    code = ("import sys, torch, bncheck\n"
            "from bncheck.engine.runner import verify\n"
            "assert verify(torch.nn.BatchNorm1d, properties=['train_forward'], examples=2,"
            " timeout=None).ok\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_torch_property_without_meaning_is_skipped_with_the_reason():
    report = verify(linen.BatchNorm, framework="flax-linen", properties=["differential",
                                                                         "empty_batch"],
                    timeout=None)
    reasons = {r.name: (r.status, r.message) for r in report.results}
    assert reasons["differential"][0] == "skipped"
    assert "jax.test_util.check_grads" in reasons["differential"][1]
    assert "does not declare that it accepts empty batches" in reasons["empty_batch"][1]


@pytest.mark.parametrize("obj,framework", TARGETS)
def test_one_pass_variance_is_named_and_two_pass_passes(obj, framework):
    fast = verify(obj, framework=framework, properties=["train_forward"], timeout=None,
                  examples=10, shrink=False)
    (r,) = fast.results
    assert r.status == "failed" and "one-pass variance E[x^2] - E[x]^2" in r.message
    assert "use_fast_variance=False" in r.message
    exact = verify(obj, framework=framework, properties=["train_forward"], timeout=None,
                   examples=10, fixed={"use_fast_variance": False})
    assert exact.ok, exact.render()


def test_one_pass_variance_is_not_named_for_another_defect():
    from bncheck.engine.mutants import EpsOutsideSqrt, UnbiasedNormalization

    for obj in (EpsOutsideSqrt, UnbiasedNormalization):
        (r,) = verify(obj, properties=["train_forward"], timeout=None, examples=10,
                      shrink=False).results
        assert r.status == "failed" and "one-pass" not in r.message, r.message
