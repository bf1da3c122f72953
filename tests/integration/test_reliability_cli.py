"""Real signals to real `bncheck` processes whose target hangs in C code holding the GIL: Ctrl-C
exits 130 with the finished properties written, and no worker outlives its parent, even one
killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HANGING = Path(__file__).parents[1] / "data" / "hanging_bn.py"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; the target blocks in glibc")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_hanging(tmp_path: Path, *extra: str, command: tuple[str, ...] = ()
                   ) -> tuple[subprocess.Popen[str], int]:
    """`bncheck verify` on a target that blocks in C on float16 (or ``command``); returns once
    the worker hangs, with the worker's pid."""
    mark = tmp_path / "worker.pid"
    env = {**os.environ, "BNCHECK_HANG_MARK": str(mark)}
    command = command or ("verify", f"{HANGING}:BlocksInCOnFloat16", "--examples", "3",
                          "--property", "train_forward", "--property", "reduced_precision")
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", *command, "--timeout", "300",
                             *extra], env=env, text=True, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (mark.exists() and mark.read_text()) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.05)
    return proc, int(mark.read_text())


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    """Send SIGINT, wait for the process to end; its stderr."""
    try:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return stderr


def test_ctrl_c_exits_130_writes_the_finished_properties_and_kills_the_worker(tmp_path):
    out = tmp_path / "report.json"
    # One worker: train_forward has finished when reduced_precision hangs (with --jobs 2 the
    # two run side by side, and which has finished at Ctrl-C depends on the machine's speed).
    proc, worker = _start_hanging(tmp_path, "--json", str(out), "--jobs", "1")
    stderr = _ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert stderr == (f"Error: interrupted (Ctrl-C) after 1 properties (finished: "
                      f"train_forward); partial report written to {out}\n")
    data = json.loads(out.read_text())
    assert data["interrupted"] is True
    assert [(p["name"], p["status"]) for p in data["properties"]] == [("train_forward", "passed")]
    assert _gone(worker)


def test_ctrl_c_on_export_ends_it_in_its_worker_and_writes_nothing(tmp_path):
    # The model's forward loops in Python: Ctrl-C reaches the worker, which ends the command
    # as it would in-process.
    proc, worker = _start_hanging(tmp_path, command=(
        "export", "m.onnx", "--bn", f"{HANGING}:LoopsInTraining"))
    stderr = _ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert stderr.startswith(f"Error: interrupted (Ctrl-C) while building and calibrating "
                             f"LeNet-BN (bn={HANGING}:LoopsInTraining); nothing written"), stderr
    assert "Traceback" not in stderr and not (tmp_path / "m.onnx").exists()
    assert _gone(worker)


def test_a_worker_dies_with_its_parent_even_while_it_holds_the_gil(tmp_path):
    proc, worker = _start_hanging(tmp_path)
    proc.kill()  # SIGKILL: the parent cannot clean up
    proc.wait(timeout=60)  # not communicate(): an orphaned worker would hold the pipes open
    try:  # the parent-death signal does it, not a thread (which would need the GIL)
        assert _gone(worker)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()
