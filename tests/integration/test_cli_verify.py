"""`bncheck verify` and `bncheck mutants` end to end: a few real subprocesses (the reference
passing, a replay in a fresh interpreter, a usage error, a subset of mutants), the rest in-process
with click's runner (the same code path without 2-3 s of interpreter start-up each)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bncheck.engine.properties import names

DATA = Path(__file__).parents[1] / "data"
SEED = f"{DATA / 'seed_bn.py'}:BatchNorm"
SEED_FIXED = f"{DATA / 'seed_bn_fixed.py'}:BatchNorm"


@pytest.mark.slow
def test_verify_reference_passes_and_says_what_it_checked(tmp_path, cli_subprocess):
    out = tmp_path / "report.json"
    r = cli_subprocess("verify", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bncheck reference BatchNorm" in r.stdout
    assert "convention: torch" in r.stdout
    for name in names():
        assert name in r.stdout
    assert "13 passed, 0 failed, 0 skipped" in r.stdout  # empty_batch too: it is declared
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["profile"] == "ci" and data["seed"] == 0
    for p in data["properties"]:
        assert p["status"] == "passed" and p["examples"] >= 1 and p["seconds"] > 0
    # the run's wall time covers each property's (how fast: benchmarks, property examples/s)
    assert data["wall_seconds"] >= max(p["seconds"] for p in data["properties"])


@pytest.mark.slow
def test_verify_verbatim_seed_fails_with_name_error(cli):
    r = cli("verify", SEED, "--convention", "onnx")
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
#: bncheck.engine.profiles.machine_independent_draws.) Its initial state is correct.
SEED_FIXED_PASSES = {"gradients", "initial_state"}
SEED_FIXED_FAILS = set(names()) - SEED_FIXED_PASSES - {"empty_batch"}


@pytest.mark.slow
def test_verify_fixed_seed_fails_exactly_the_expected_properties(tmp_path, cli):
    out = tmp_path / "seed.json"
    r = cli("verify", SEED_FIXED, "--convention", "onnx", "--json", str(out))
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


def test_failure_report_and_replay(tmp_path, cli, cli_subprocess):
    """The failure in this process, its replay in a fresh interpreter: the same case."""
    target = "bncheck.engine.mutants:BiasedRunningVar"
    r = cli("verify", target, "--property", "running_stats_update", "--seed", "11",
            "--json", str(tmp_path / "a.json"))
    assert r.returncode == 1
    assert ("property running_stats_update failed (bncheck.engine.mutants:BiasedRunningVar, "
            "shape=") in r.stdout
    assert "Greatest absolute difference" in r.stdout
    replay = next(line for line in r.stdout.splitlines() if line.startswith("Reproduce: "))
    args = shlex.split(replay.removeprefix("Reproduce: "))
    assert args[:3] == ["bncheck", "verify", target]
    again = cli_subprocess(*args[1:], "--json", str(tmp_path / "b.json"))
    assert again.returncode == 1
    first = json.loads((tmp_path / "a.json").read_text())["properties"][0]
    second = json.loads((tmp_path / "b.json").read_text())["properties"][0]
    assert (first["counterexample"], first["message"]) == (second["counterexample"],
                                                           second["message"])


def test_torch_target_and_skips(cli):
    r = cli("verify", "torch.nn:BatchNorm1d", "--dtypes", "float16", "--examples", "3",
            "--property", "train_forward", "--property", "reduced_precision")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped" in r.stdout and "requested dtypes: float16" in r.stdout


def test_usage_error_exits_2_without_traceback(cli_subprocess):
    # The whole table (this case included) runs in-process in tests/unit/test_bad_input.py.
    r = cli_subprocess("verify", "nope.py:BN")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_error_in_target_is_a_usage_error(tmp_path, cli):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise ImportError('no such thing')\n")
    r = cli("verify", f"{f}:BN")
    assert r.returncode == 2
    assert "ImportError: no such thing" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(Exception) as info:  # --debug: the exception escapes, with its traceback
        cli("verify", f"{f}:BN", "--debug")
    assert "no such thing" in repr(info.value) + repr(info.value.__cause__)


def run_on_a_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """``python -m bncheck ARGS`` with a pseudo-terminal as stdout and stderr; its exit status
    and what it showed, without terminal escape sequences."""
    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", *args], stdin=child,
                            stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1.0)[0]:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                shown += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
        os.close(main)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))


def test_mutants_subset_shows_progress_on_a_terminal():
    code, shown = run_on_a_terminal("mutants", "--mutant", "seed_grad_mode", "--mutant",
                                    "eps_outside_sqrt")
    assert code == 0, shown
    assert "mutants: 1 of 2" in shown  # the status line (transient: erased when done)
    assert "Mutation score: 2/2 (100%) killed; 2/2 by the property meant for them" in shown
    assert "grad_mode_independence" in shown


def test_mutants_all_killed_by_their_property_quietly_when_piped(tmp_path, cli):
    out = tmp_path / "mutants.json"
    r = cli("mutants", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["score"] == 1.0 and data["killed_as_meant"] == data["total"] >= 12
    # Each killed by its own property, so nothing else ran against it.
    assert all(m["killed_by"] == [m["meant"]] for m in data["mutants"])
    assert r.stderr == "" and "mutants: " not in r.stdout  # no progress when piped
    assert r.stdout.splitlines()[-1].startswith("Mutation score: ")


def test_mutants_every_property_names_everything_that_catches_it(tmp_path, cli):
    out = tmp_path / "mutants.json"
    r = cli("mutants", "--mutant", "gamma_beta_swapped", "--every-property", "--json", out)
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = json.loads(out.read_text())["mutants"]
    assert m["killed_by"][0] == "train_forward" and len(m["killed_by"]) > 1
    assert "train_forward (+" in r.stdout and "more)" in r.stdout
