"""The installed CLI: ``--version`` and ``import bncheck`` in real subprocesses (a fresh
interpreter is the point), ``--help`` and an unknown command through click's runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import bncheck

CLI = Callable[..., Any]  # conftest's cli / cli_subprocess


def test_version(cli_subprocess: CLI) -> None:
    r = cli_subprocess("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"bncheck, version {bncheck.__version__}"


def test_help_lists_commands(cli: CLI) -> None:
    r = cli("--help")
    assert r.returncode == 0
    assert "property-based verification for batch normalization" in r.stdout


def test_unknown_command_is_a_usage_error(cli: CLI) -> None:
    r = cli("frobnicate")
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
