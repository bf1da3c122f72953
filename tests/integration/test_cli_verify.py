"""`bncheck verify` and `bncheck mutants`, run as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bncheck.properties import names

DATA = Path(__file__).parents[1] / "data"
SEED = f"{DATA / 'seed_bn.py'}:BatchNorm"
SEED_FIXED = f"{DATA / 'seed_bn_fixed.py'}:BatchNorm"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bncheck", *args], capture_output=True,
                          text=True, timeout=600)


def test_verify_reference_passes_and_says_what_it_checked(tmp_path):
    out = tmp_path / "report.json"
    r = run("verify", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bncheck reference BatchNorm" in r.stdout
    assert "convention: torch" in r.stdout
    for name in names():
        assert name in r.stdout
    assert "13 passed, 0 failed, 0 skipped" in r.stdout  # empty_batch too: it is declared
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["profile"] == "ci" and data["seed"] == 0
    assert data["wall_seconds"] < 60
    for p in data["properties"]:
        assert p["status"] == "passed" and p["examples"] >= 1 and p["seconds"] > 0


def test_verify_verbatim_seed_fails_with_name_error():
    r = run("verify", SEED, "--convention", "onnx")
    assert r.returncode == 1
    assert "NameError" in r.stdout and "'beta' is not defined" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


#: The typo-fixed seed's defects and the properties they break, for every drawn case (not for
#: one draw): training normalizes with the moving variance -> train_forward, invariances,
#: differential (input gradient); the moving variance is updated from itself ->
#: running_stats_update, running_stats_convergence, train_eval_switch (the resumed update);
#: the mode follows torch.is_grad_enabled() -> grad_mode_independence, eval_forward (named as
#: its consequence); plain-attribute statistics -> stats_are_buffers; float32 parameters
#: promote a float16 input -> reduced_precision.
#: None of them is a gradient defect: with grad enabled the seed's training branch is a
#: differentiable function whose gradient autograd computes correctly, and gradients evaluates
#: every forward from the same module state, so it passes. (It used to fail on some machines
#: only: gradcheck's finite differences straddled a one-ulp float32 drift of the plain-attribute
#: moving variance under 0.9*v + 0.1*v, which shows only for some installed variances, and which
#: variances seed 0 drew depended on Hypothesis's pool of "local constants" -- see
#: bncheck.profiles.machine_independent_draws.) Its initial state is correct.
SEED_FIXED_PASSES = {"gradients", "initial_state"}
SEED_FIXED_FAILS = set(names()) - SEED_FIXED_PASSES - {"empty_batch"}


def test_verify_fixed_seed_fails_exactly_the_expected_properties(tmp_path):
    out = tmp_path / "seed.json"
    r = run("verify", SEED_FIXED, "--convention", "onnx", "--json", str(out))
    assert r.returncode == 1
    data = json.loads(out.read_text())
    status = {p["name"]: p["status"] for p in data["properties"]}
    assert {n for n, s in status.items() if s == "failed"} == SEED_FIXED_FAILS
    assert {n for n, s in status.items() if s == "passed"} == SEED_FIXED_PASSES
    assert status["empty_batch"] == "skipped"
    owners = {p["name"]: p["consequence_of"] for p in data["properties"]}
    for own in ("train_forward", "running_stats_update", "grad_mode_independence",
                "stats_are_buffers", "reduced_precision"):
        assert owners[own] is None, own
    assert "moving_mean is a plain attribute" in r.stdout
    assert "Reproduce: bncheck verify" in r.stdout


def test_failure_report_and_replay(tmp_path):
    target = "bncheck.mutants:BiasedRunningVar"
    r = run("verify", target, "--property", "running_stats_update", "--seed", "11",
            "--json", str(tmp_path / "a.json"))
    assert r.returncode == 1
    assert "property running_stats_update failed (bncheck.mutants:BiasedRunningVar, shape=" in \
        r.stdout
    assert "Greatest absolute difference" in r.stdout
    replay = next(line for line in r.stdout.splitlines() if line.startswith("Reproduce: "))
    args = shlex.split(replay.removeprefix("Reproduce: "))
    assert args[:3] == ["bncheck", "verify", target]
    again = run(*args[1:], "--json", str(tmp_path / "b.json"))
    assert again.returncode == 1
    first = json.loads((tmp_path / "a.json").read_text())["properties"][0]
    second = json.loads((tmp_path / "b.json").read_text())["properties"][0]
    assert (first["counterexample"], first["message"]) == (second["counterexample"],
                                                           second["message"])


def test_torch_target_and_skips():
    r = run("verify", "torch.nn:BatchNorm1d", "--dtypes", "float16", "--examples", "3",
            "--property", "train_forward", "--property", "reduced_precision")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped" in r.stdout and "requested dtypes: float16" in r.stdout


@pytest.mark.parametrize("args,match", [
    (["nope.py:BN"], "does not exist"),
    (["torch.nn:BatchNorm2D"], "has no attribute 'BatchNorm2D'; did you mean BatchNorm2d"),
    (["--dims", "2,x"], "--dims='2,x'"),
    (["--convention", "flax"], "Invalid value for '--convention'"),
])
def test_usage_errors_exit_2_without_traceback(args, match):
    # The whole table runs in-process in tests/unit/test_cli_verify_options.py.
    r = run("verify", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert match in r.stderr
    assert "Traceback" not in r.stderr


def test_import_error_in_target_is_a_usage_error(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise ImportError('no such thing')\n")
    r = run("verify", f"{f}:BN")
    assert r.returncode == 2
    assert "ImportError: no such thing" in r.stderr and "Traceback" not in r.stderr
    r = run("verify", f"{f}:BN", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_mutants_subset():
    r = run("mutants", "--mutant", "seed_grad_mode", "--mutant", "eps_outside_sqrt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Mutation score: 2/2 (100%) killed; 2/2 by the property meant for them" in r.stdout
    assert "grad_mode_independence" in r.stdout


@pytest.mark.slow
def test_mutants_all_killed_by_their_property(tmp_path):
    out = tmp_path / "mutants.json"
    r = run("mutants", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["score"] == 1.0 and data["killed_as_meant"] == data["total"] >= 12
