"""Polygraphy's saved inputs/outputs, both ways, with the real ``polygraphy run``: it accepts
bncheck's goldens, and ``bncheck check`` accepts what it saved (and fails on a changed value)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.onnx.graph import ModelFileError
from bncheck.onnx.polygraphy_io import outputs_bytes, parse_inputs, parse_outputs

#: The script installed beside this interpreter (a venv run without activating it), else on PATH.
POLYGRAPHY = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which(
    "polygraphy")
MODELS = str(Path(__file__).parents[1] / "data" / "models.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = [pytest.mark.skipif(POLYGRAPHY is None, reason="polygraphy is not installed"),
              pytest.mark.xdist_group("polygraphy")]  # one worker builds `exported` once


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pg") / "mlp.onnx"
    code, stdout, stderr = invoke("export", out, "--model", f"{MODELS}:mlp_bn1d",
                                  "--input-shape", "4,16", "--exporter", "torchscript",
                                  "--polygraphy")
    assert code == 0, stdout + stderr
    return out


def polygraphy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert POLYGRAPHY is not None
    return subprocess.run([POLYGRAPHY, "run", *map(str, args), "--onnxrt"],
                          capture_output=True, text=True, timeout=120, env=ENV)


def test_polygraphy_run_accepts_bnchecks_goldens(exported: Path) -> None:
    result = polygraphy(exported, "--load-inputs", exported.with_suffix(".polygraphy-inputs.json"),
                        "--load-outputs", exported.with_suffix(".polygraphy-outputs.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All outputs matched" in result.stdout + result.stderr


def test_bncheck_checks_against_what_polygraphy_saved(exported: Path, tmp_path: Path) -> None:
    ins, outs = tmp_path / "in.json", tmp_path / "out.json"
    result = polygraphy(exported, "--input-shapes", "input:[5,16]", "--save-inputs", ins,
                        "--save-outputs", outs)
    assert result.returncode == 0, result.stdout + result.stderr
    code, stdout, stderr = invoke("check", exported, "--polygraphy-inputs", ins,
                                  "--polygraphy-outputs", outs)
    assert code == 0, stdout + stderr
    assert "vs golden" in stdout and "OpenVINO CPU" in stdout
    # One changed value in Polygraphy's outputs: the check fails and names the output.
    runner = json.loads(outs.read_text())["lst"][0][0]
    values = parse_outputs(outs.read_bytes(), where="out")
    values["output"][2, 1] += 0.01
    outs.write_bytes(outputs_bytes(values, runner=runner))
    code, _, stderr = invoke("check", exported, "--polygraphy-inputs", ins,
                             "--polygraphy-outputs", outs)
    assert code == 1
    assert "output (onnxruntime CPU DISABLE_ALL, batch 5, vs golden): Mismatched elements: 1" \
        in stderr and "at index (2, 1)" in stderr
    assert parse_inputs(ins.read_bytes(), where="in")["input"].shape == (5, 16)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "is not JSON"),
    ('{"lst": []}', "is not Polygraphy's saved outputs"),
    ('{"lst": [], "polygraphy_class": "RunResults"}', "holds no runner results"),
    ('{"lst": [["a", [{"outputs": {}}]]], "polygraphy_class": "RunResults"}',
     "has no runner 'b'; it has ['a']"),
    ('{"lst": [["a", [{"outputs": {"y": {"polygraphy_class": "LazyArray"}}}]]], '
     '"polygraphy_class": "RunResults"}', "stored in a separate file"),
])
def test_bad_polygraphy_outputs(text: str, message: str) -> None:
    with pytest.raises(ModelFileError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        parse_outputs(text, where="out.json", runner="b" if "'b'" in message else None)
    assert np.array_equal(parse_outputs(outputs_bytes({"y": np.ones(2)}), where="x")["y"],
                          np.ones(2))
