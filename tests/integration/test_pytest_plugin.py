"""The pytest plugin, as a user's own test suite sees it: a real pytest subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "data"

USER_TESTS = f'''
import sys
import torch
from hypothesis import settings
settings.register_profile("ci", max_examples=1234)  # the user's own "ci" profile
sys.path.insert(0, {str(DATA)!r})
import seed_bn_fixed

def test_torch_bn(bncheck_verify):
    bncheck_verify(torch.nn.BatchNorm1d, dims=(2,), properties=["train_forward"], examples=5)

def test_seed_bn(bncheck_verify):
    bncheck_verify(seed_bn_fixed.BatchNorm, convention="onnx",
                   properties=["stats_are_buffers"], examples=5)

def test_profile_from_env():
    assert settings.default.derandomize  # bncheck-ci, named by HYPOTHESIS_PROFILE
    assert settings.get_profile("ci").max_examples == 1234  # the user's, untouched
'''


@pytest.mark.slow
def test_fixture_and_profile(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_user.py")], capture_output=True, text=True,
                       cwd=tmp_path, env={**_env(), "HYPOTHESIS_PROFILE": "bncheck-ci"},
                       timeout=300)
    out = r.stdout + r.stderr
    assert "2 passed, 1 failed" in out or "1 failed, 2 passed" in out, out
    assert "property stats_are_buffers failed" in out
    assert "moving_mean is a plain attribute" in out


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
