"""Ctrl-C in every command, with and without ``--world-size``, exits 130: a loop of real
processes, each interrupted as a terminal does (SIGINT to its foreground process group) at a
drawn moment of its run.

``BNCHECK_CTRL_C_TRIES`` sets the tries per command (default 2, so the suite stays fast; the
issue's acceptance run used 50: ``BNCHECK_CTRL_C_TRIES=50 pytest
tests/integration/test_ctrl_c_everywhere.py``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TRIES = int(os.environ.get("BNCHECK_CTRL_C_TRIES", "2"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")]

#: Each command as a user runs it, long enough (many seconds here) to be interrupted anywhere:
#: while Python imports, while the command parses, builds, runs the user's code or writes.
COMMANDS: dict[str, tuple[str, ...]] = {
    "verify": ("verify", "--json", "r.json"),
    "verify --world-size 2": ("verify", "--world-size", "2", "--json", "r.json"),
    "mutants": ("mutants",),
    "mutants --world-size 2": ("mutants", "--world-size", "2"),
    "export": ("export", "m.onnx"),
    "check": ("check", "m.onnx", "--bn", "scratch"),
    "gate": ("gate", "--exports", str(ROOT / "exports"), "--variant", "lenet_scratch"),
    "train": ("train", "--limit", "6000", "--epochs", "5", "--out", "run"),
    "bench": ("bench", "--section", "properties"),
    "scan": ("scan", str(ROOT / "tests" / "data" / "scan_models.py") + ":correct_cnn",
             "--input-shape", "2,3,8,8"),
    "scan --jobs 2": ("scan", str(ROOT / "tests" / "data" / "scan_models.py") + ":correct_cnn",
                      "--input-shape", "2,3,8,8", "--jobs", "2"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an exported LeNet-BN (``m.onnx``) for ``check``."""
    here = tmp_path_factory.mktemp("ctrl_c")
    r = subprocess.run([sys.executable, "-m", "bncheck", "export", "m.onnx"], cwd=here,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return here


def interrupt(args: tuple[str, ...], cwd: Path, after: float) -> int | None:
    """Start ``bncheck ARGS`` in a session of its own, send SIGINT to its process group after
    ``after`` seconds; its exit code, or ``None`` when it had already ended (not a try)."""
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(after)
    if proc.poll() is not None:
        return None
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -999  # hung after Ctrl-C


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctrl_c_exits_130(folder: Path, name: str) -> None:
    rng = random.Random(f"{name}-{TRIES}")
    codes = []
    for _ in range(TRIES):
        # within the first 2 s: every command here runs longer than that even on an idle
        # machine (check, the shortest, 2.6 s), so the signal lands mid-run; a Ctrl-C after
        # the command has finished is test_ctrl_c_after_the_report_exits_130's
        code = interrupt(COMMANDS[name], folder, after=rng.uniform(0.3, 2.0))
        if code is not None:
            codes.append(code)
    assert len(codes) >= max(1, TRIES // 2), f"{name}: ended before most Ctrl-Cs: {codes}"
    assert codes == [130] * len(codes), f"{name}: exit codes {codes}"



#: ``bncheck ARGS`` with an exit handler that runs last and takes its time, as a library's
#: may (torch's, multiprocessing's joining its helpers): it says ``exiting`` on stdout first,
#: so the Ctrl-C lands after the command has finished, while the process exits.
SLOW_EXIT = """
import atexit, sys, time
atexit.register(lambda: (print("exiting", flush=True), time.sleep(30)))
sys.argv = ["bncheck", *sys.argv[1:]]
from bncheck.cli import main
main()
"""


@pytest.mark.parametrize("args", [("verify", "--property", "initial_state"),
                                  ("verify", "--world-size", "2", "--property", "sync_forward"),
                                  ("export", "m.onnx")],
                         ids=["verify", "verify --world-size 2", "export"])
def test_ctrl_c_after_the_command_finished_exits_130(folder: Path, args: tuple[str, ...]
                                                     ) -> None:
    """A Ctrl-C that lands once the command is over (its report printed, Python running exit
    handlers) exits 130 at once, with one line saying the command had finished: not the
    command's own 0 after the handlers, not a traceback from inside one."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXIT, *args], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "exiting":
                os.killpg(proc.pid, signal.SIGINT)
                break
        else:
            pytest.fail(f"no exit handler ran: {proc.communicate()}")
        _, stderr = proc.communicate(timeout=20)  # less than the handler's 30 s
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr.strip().splitlines()[-1] == ("Error: interrupted (Ctrl-C) while bncheck was "
                                               "exiting; the command had finished"), stderr
