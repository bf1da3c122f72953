"""The installed CLI, run as a user runs it: real subprocesses."""

from __future__ import annotations

import subprocess
import sys

import bncheck


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bncheck", *args], capture_output=True,
                          text=True, timeout=300)


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"bncheck, version {bncheck.__version__}"


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    assert "property-based verification for batch normalization" in r.stdout


def test_unknown_command_is_a_usage_error():
    r = run("frobnicate")
    assert r.returncode == 2
    assert "No such command 'frobnicate'" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_bncheck_stays_light():
    code = ("import sys, bncheck; heavy = [m for m in ('onnxruntime', 'onnx', 'hypothesis', "
            "'rich', 'onnxscript', 'bncheck.distributed', 'openvino', 'monai', "
            "'efficientnet_pytorch') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
