"""Test-wide setup.

- The Hypothesis profile comes from HYPOTHESIS_PROFILE (nox sets "ci": deterministic).
- One intra-op thread per test process, and OMP_NUM_THREADS=1 for every subprocess a test
  starts: the tensors here are small, and `nox -s tests` runs two pytest-xdist workers on two
  cores, where more threads only spin against each other (4-20x slower when loaded).
- Every test must leave the process as it found it (torch threads, default dtype, grad mode,
  the Hypothesis profile, the working directory): checked after each test, since under xdist a
  leak would make another test's result depend on which worker ran it, and in what order.
- Every test starts from the same torch/numpy/random state on every machine and in any order.
- SIGINT is handled as on a terminal even when the run was started in the background.
- ``cli`` runs the ``bncheck`` command in this process (click's runner: the same code path,
  without a new interpreter's 2-3 s of imports); ``cli_subprocess`` runs it as a user does. The
  standards ask for a few real subprocess runs of each command, the rest in-process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

from bncheck.engine.profiles import load_profile, profile_from_env

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every subprocess the tests start
# Keras 3 runs on torch here (no TensorFlow). Set before any test starts a process: the fork
# server bncheck's workers come from keeps the environment it was started with, and a Keras
# test run after it (a test-order accident under xdist) imported Keras there without it.
os.environ.setdefault("KERAS_BACKEND", "torch")
# A shell starts background jobs (`nox -s tests &`, nohup, some CI runners) with SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: the Ctrl-C tests would see
# nothing. Restore what a terminal gives, here and (a handler becomes the default across exec)
# in every process a test starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
torch.set_num_threads(1)
load_profile(profile_from_env("dev"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, the order otherwise kept: under xdist the two workers then
    finish together, instead of one still running a long test collected last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _global_state() -> dict[str, Any]:
    return {"torch threads": torch.get_num_threads(),
            "torch default dtype": torch.get_default_dtype(),
            "torch grad mode": torch.is_grad_enabled(),
            "torch deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            "Hypothesis profile": settings._current_profile,
            "working directory": os.getcwd(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE")}


@pytest.fixture(autouse=True)
def _no_os_exit_in_pytests_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test whose code calls ``os._exit`` in pytest's own process (a user module exiting at
    import that a regression let run in-process, run through click's CliRunner) would end
    pytest with that code, 0 included, with nothing reported (under ``-n 0``): it raises
    instead. Forked children (bncheck's watched workers) exit as usual."""
    real, parent = os._exit, os.getpid()

    def guarded(code: int) -> None:
        if os.getpid() == parent:
            raise AssertionError(f"os._exit({code}) was called in pytest's own process")
        real(code)

    monkeypatch.setattr(os, "_exit", guarded)


@pytest.fixture(autouse=True)
def _same_random_state_everywhere(request: pytest.FixtureRequest) -> None:
    """Each test starts from a random state of its own (seeded from its node id): under xdist
    which tests ran before it on its worker depends on timing, and a test drawing from the
    global generators would otherwise see other numbers on every run and every machine."""
    import numpy as np

    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.fixture(autouse=True)
def _leaves_global_state_as_it_found_it() -> Iterator[None]:
    before = _global_state()
    yield
    after = _global_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the test changed process-wide state (before, after): {changed}"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests (the session default; kept for modules that
    declare it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Ran:
    """A finished ``bncheck`` run: exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(*args: str | Path, env: dict[str, str | None] | None = None) -> Ran:
    """``bncheck ARGS`` through click's runner. An exception that escapes the command (a bug,
    or ``--debug``) propagates to the test instead of passing as exit status 1."""
    from click.testing import CliRunner

    from bncheck.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="bncheck", env=env,
                                catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_subprocess(*args: str | Path, cwd: Path | None = None,
                   env: dict[str, str] | None = None, timeout: float = 300) -> Ran:
    """``python -m bncheck ARGS`` in a new interpreter, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "bncheck", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, cwd=cwd, env=env)
    return Ran(r.returncode, r.stdout, r.stderr)


@pytest.fixture(scope="session")
def cli() -> Callable[..., Ran]:
    """Run ``bncheck ARGS`` in this process: ``cli("verify", "--json", path)``."""
    return run_in_process


@pytest.fixture(scope="session")
def cli_subprocess() -> Callable[..., Ran]:
    """Run ``bncheck ARGS`` in a new interpreter: ``cli_subprocess("verify")``."""
    return run_subprocess


class ThirdParty:
    """The layers in tests/data/third_party (each docstring there names its source and defect):
    ``load("file.py:Name")`` loads one; ``run(spec, properties, ...)`` verifies it with few
    examples (``kwargs``: :func:`bncheck.engine.runner.build_target`'s declarations)."""

    data = Path(__file__).parent / "data" / "third_party"

    def load(self, spec: str) -> Any:
        from bncheck.engine.target import load_target

        return load_target(f"{self.data / spec}")

    def run(self, spec: str, props: list[str], *, examples: int = 5, seed: int = 0,
            shrink: bool = True, **kwargs: Any) -> Any:
        from bncheck.engine.runner import build_target, verify

        return verify(build_target(self.load(spec), label=spec, **kwargs), properties=props,
                      examples=examples, seed=seed, shrink=shrink)


@pytest.fixture(scope="session")
def third_party() -> ThirdParty:
    """:class:`ThirdParty`: load and verify the layers in tests/data/third_party."""
    return ThirdParty()


@pytest.fixture(scope="session")
def lenet_torch_onnx() -> bytes:
    """LeNet-BN (bn=torch, seed 0) exported with the TorchScript exporter, once per process."""
    from bncheck.onnx import build_model, export_onnx

    return export_onnx(build_model("torch"), exporter="torchscript")
