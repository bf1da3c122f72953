"""The pytest plugin, as a user's own test suite sees it: real pytest subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"

USER_TESTS = f'''
import sys
import pytest
import torch
from hypothesis import settings
settings.register_profile("ci", max_examples=1234)  # the user's own "ci" profile
sys.path.insert(0, {str(DATA)!r})
import seed_bn_fixed

def test_torch_bn(bncheck_verify):
    bncheck_verify(torch.nn.BatchNorm1d, dims=(2,), properties=["train_forward"], examples=5)

@pytest.mark.bncheck(convention="onnx", properties=["stats_are_buffers"], examples=5)
def test_seed_bn(bncheck_verify):
    bncheck_verify(seed_bn_fixed.BatchNorm)

def test_profile_from_env():
    assert settings.default.derandomize  # bncheck-ci, named by HYPOTHESIS_PROFILE
    assert settings.get_profile("ci").max_examples == 1234  # the user's, untouched
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "HYPOTHESIS_PROFILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _pytest(folder: Path, *args: str, **env: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "-p", "no:randomly", "-p", "no:xdist", "-p", "no:benchmark", *args],
                       capture_output=True, text=True, cwd=folder, env=_env(**env), timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_fixture_marker_profile_and_failure_output(tmp_path: Path) -> None:
    """The fixture and the marker run the catalogue; the user's profiles are untouched; a
    failure is the test's own line and bncheck's report, with no frame of bncheck's code."""
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    code, out = _pytest(tmp_path, "test_user.py", HYPOTHESIS_PROFILE="bncheck-ci")
    assert code == 1, out
    assert re.search(r"\b2 passed, 1 failed|1 failed, 2 passed\b", out), out
    assert "property stats_are_buffers failed (" in out           # the counterexample
    assert "moving_mean is a plain attribute" in out
    failure = out.split("= FAILURES =", 1)[1].split("short test summary", 1)[0]
    assert ">       bncheck_verify(seed_bn_fixed.BatchNorm)" in failure  # the user's call
    assert len([ln for ln in failure.splitlines() if ln.startswith(">")]) == 1, failure
    for internal in ("bncheck/", "def check_batchnorm", "report = verify(", "__call__"):
        assert internal not in failure, f"{internal!r} in the failure:\n{failure}"


UNUSED = '''
import sys

def test_nothing_imported():
    assert "hypothesis" not in sys.modules
    assert "torch" not in sys.modules
'''


def test_installed_but_unused_imports_no_hypothesis(tmp_path: Path) -> None:
    (tmp_path / "test_unused.py").write_text(UNUSED)
    code, out = _pytest(tmp_path, "test_unused.py")  # the header says the plugin was loaded
    header = "bncheck_verify profile ci (default), seed 0 (the ci default)"
    assert code == 0 and "bncheck 0." in out and header in out, out


def test_options_ini_and_header(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nbncheck_profile = thorough\nbncheck_seed = 7\n")
    (tmp_path / "test_header.py").write_text(
        "def test_defaults(bncheck_verify):\n"
        "    assert bncheck_verify.defaults == {'profile': 'ci', 'seed': 3}\n")
    code, out = _pytest(tmp_path, "--co", "test_header.py")
    assert "bncheck_verify profile thorough (ini bncheck_profile), seed 7 (ini bncheck_seed)" \
        in out, out
    code, out = _pytest(tmp_path, "test_header.py", "--bncheck-profile", "ci",
                        "--bncheck-seed", "3")
    assert code == 0, out
    assert "bncheck_verify profile ci (--bncheck-profile), seed 3 (--bncheck-seed)" in out, out
    code, out = _pytest(tmp_path, "--help")
    assert "--bncheck-profile={dev,ci,thorough}" in out and "--bncheck-seed=SEED" in out
    assert "bncheck_profile (string)" in out and "bncheck_seed (string)" in out


def test_marker_misuse_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n"
        "@pytest.mark.bncheck(dimz=(2,))\ndef test_typo(bncheck_verify):\n    pass\n\n"
        "@pytest.mark.bncheck('torch')\ndef test_positional(bncheck_verify):\n    pass\n")
    code, out = _pytest(tmp_path, "test_bad.py")
    assert code == 1 and "2 error" in out, out
    assert "unknown keyword 'dimz' (did you mean 'dims'?)" in out
    assert "takes keywords only" in out
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n@pytest.mark.bncheck(dims=(2,))\ndef test_x():\n    pass\n")
    code, out = _pytest(tmp_path, "test_bad.py")
    assert code == 4 and "this test does not use it" in out, out


def test_bad_ini_value(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nbncheck_profile = fast\n")
    code, out = _pytest(tmp_path, "--co")
    assert code == 4 and "received bncheck_profile='fast'" in out, out


def test_profile_names_are_bnchecks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's copies (kept so that loading it imports no Hypothesis) are bncheck's."""
    from bncheck.engine.profiles import PREFIX, PROFILES
    from bncheck.engine.runner import resolve_profile
    from bncheck.pytest_plugin import PREFIX as PLUGIN_PREFIX
    from bncheck.pytest_plugin import PROFILE_NAMES

    assert tuple(PROFILES) == PROFILE_NAMES and PREFIX == PLUGIN_PREFIX
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    assert resolve_profile(None) == "ci"  # what the header says when nothing is chosen


def test_readme_pytest_example_runs(tmp_path: Path) -> None:
    """The README's pytest form, run by pytest as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "bncheck_verify" in b)
    (tmp_path / "test_readme_form.py").write_text(block)
    code, out = _pytest(tmp_path, "-q", "test_readme_form.py")
    assert code == 0 and "1 passed" in out, out
