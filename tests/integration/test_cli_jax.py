"""`bncheck verify --framework flax-nnx|flax-linen`: Flax's own BatchNorms and user classes from
a file, through the CLI (in-process, click's runner), with the report, JSON and replay line a
torch target gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flax")

DATA = Path(__file__).parents[1] / "data"
FORWARD = ["--property", "train_forward", "--examples", "10"]


# Linen's one-pass and two-pass runs: tests/unit/test_jax_adapter.py (the same code path)
@pytest.mark.parametrize("target,framework", [("flax.nnx:BatchNorm", "flax-nnx")])
def test_flax_batchnorm_one_pass_variance_fails_and_two_pass_passes(cli, target, framework):
    r = cli("verify", target, "--framework", framework, *FORWARD)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "convention: flax: new = m * old + (1 - m) * batch, biased running variance, " \
           "m = 0.99" in r.stdout
    assert "property train_forward failed" in r.stdout
    assert "one-pass variance E[x^2] - E[x]^2" in " ".join(r.stdout.split())
    assert (f"Reproduce: bncheck verify {target} --examples 10 --framework {framework} "
            f"--property train_forward --seed 0") in r.stdout
    fixed = cli("verify", target, "--framework", framework, "--property", "train_forward",
                "--examples", "5", "--fixed", "use_fast_variance=false")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    text = " ".join(fixed.stdout.split())  # the console wraps long lines
    assert "1 passed, 0 failed, 0 skipped" in text
    assert "declared: use_fast_variance=False, channels last" in text


def test_json_report_has_the_same_shape_for_torch_and_flax(cli, tmp_path):
    out = {}
    for key, args in (("torch", ["torch.nn:BatchNorm1d"]),
                      ("flax", ["flax.nnx:BatchNorm", "--framework", "flax-nnx"])):
        path = tmp_path / f"{key}.json"
        r = cli("verify", *args, "--property", "eval_forward", "--examples", "3",
                "--json", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        out[key] = json.loads(path.read_text())
    assert set(out["torch"]) == set(out["flax"])
    assert set(out["torch"]["properties"][0]) == set(out["flax"]["properties"][0])
    assert out["flax"]["convention"].startswith("flax:")


def test_user_classes_from_a_file(cli):
    r = cli("verify", f"{DATA / 'jax_bn.py'}:TwoPassBN", "--framework", "flax-nnx",
            "--property", "train_forward", "--property", "running_stats_update",
            "--property", "stats_are_buffers", "--examples", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("verify", f"{DATA / 'jax_bn.py'}:Block", "--framework", "flax-linen",
            "--mode-argument", "train", "--names", "running_mean=bn.mean,running_var=bn.var",
            "--property", "eval_forward", "--property", "train_eval_switch",
            "--examples", "5")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("args,message", [
    (["--framework", "flax-nnx"], "--framework flax-nnx verifies a TARGET written in Flax"),
    (["flax.nnx:BatchNorm", "--framework", "flax-nnx", "--fixed", "affine=true"],
     "Expected fixed keys from ['axis', 'axis_name', 'use_bias', 'use_fast_variance', "
     "'use_scale']"),
    (["flax.nnx:BatchNorm", "--framework", "flax-nnx", "--fixed", "axis=last"],
     "Expected --fixed axis to be a whole number"),
    (["flax.nnx:BatchNorm"], "it is a Flax module: give --framework flax-nnx or flax-linen"),
    (["torch.nn:BatchNorm1d", "--framework", "flax-nnx"], "expected a flax.nnx.Module"),
])
def test_bad_input_is_a_usage_error(cli, args, message):
    r = cli("verify", *args, "--property", "train_forward", "--examples", "2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_synchronised_flax_batchnorm_over_shards(cli):
    """axis_name under jax.vmap and shard_map on 2 CPU devices (a fresh interpreter with
    XLA_FLAGS); a BatchNorm without axis_name (JaxClean) normalizes each shard alone."""
    r = cli("verify", "flax.linen:BatchNorm", "--framework", "flax-linen", "--world-size", "2",
            "--fixed", "use_fast_variance=false", "--property", "sync_running_stats",
            "--property", "sync_eval", "--examples", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed, 0 skipped" in r.stdout
    r = cli("verify", "bncheck.frameworks.flax_mutants:JaxClean", "--framework", "flax-nnx",
            "--world-size", "2", "--property", "sync_forward", "--examples", "5")
    assert r.returncode == 1, r.stdout + r.stderr
    text = " ".join(r.stdout.split())
    assert "property sync_forward failed" in text
    assert "(global batch statistics)" in text
    assert ("Reproduce: bncheck verify bncheck.frameworks.flax_mutants:JaxClean --examples 5 "
            "--world-size 2 --framework flax-nnx --property sync_forward --seed 0") in text
