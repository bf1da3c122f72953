"""Output that cannot be written (``bncheck ... > /dev/full``): exit 2 with one line on stderr,
never a traceback and never a clean 0 for a report nobody could read. Real processes, a real
full device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


def run_into_full(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "bncheck", *args], cwd=cwd, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)


def test_a_watched_verify_whose_report_is_lost_exits_2_and_still_writes_its_json(
        tmp_path: Path) -> None:
    r = run_into_full("verify", "--property", "initial_state", "--examples", "2", "--json",
                      "r.json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert ("Error: the command's output could not be written to standard output (No space "
            "left on device); the command itself ran to its end") in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


@pytest.mark.parametrize("args", [("--version",), ("verify", "--help")])
def test_an_in_process_command_whose_output_is_lost_exits_2(tmp_path: Path,
                                                            args: tuple[str, ...]) -> None:
    r = run_into_full(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("Error: bncheck's output could not be written (No space left "
                                "on device); nothing it printed can be trusted to be whole")
