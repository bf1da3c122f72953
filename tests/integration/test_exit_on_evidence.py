"""Real ``bncheck`` processes: exit 0 only on evidence, the user's module never in bncheck's own
process, outputs that never clobber what is not bncheck's (issue 19's battery, as a user runs it).

Every way the battery found to get a 0 without anything verified is tried here; the rule they
all meet is :func:`bncheck.engine.evidence.verdict`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bncheck.engine.evidence import verdict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals, /proc")


def bncheck(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bncheck", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return name


BN = "import torch\nBN = torch.nn.BatchNorm1d\n"


# -- the one rule ------------------------------------------------------------------------------
def test_the_rule_needs_one_pass_and_no_failure() -> None:
    assert verdict(passed=1, failed=0).code == 0
    assert verdict(passed=5, failed=1).code == 1
    nothing = verdict(passed=0, failed=0, skipped="x: needs float16")
    assert (nothing.ok, nothing.code) == (False, 2) and "x: needs float16" in nothing.reason


def test_a_report_with_every_property_skipped_is_not_ok() -> None:
    from bncheck.engine.runner import PropertyResult, Report, Status

    report = Report("t", "torch", 0, "ci", [PropertyResult("p", Status.SKIPPED, "why")])
    assert not report.ok and report.verdict().code == 2
    report.results.append(PropertyResult("q", Status.PASSED))
    assert report.ok


def test_onnx_reports_need_a_compared_output_too() -> None:
    from bncheck.onnx._report import Report as OnnxReport
    from bncheck.onnx._report import Row
    from bncheck.onnx.gate import GateResult

    empty = OnnxReport(rows=[Row("eval output", "onnxruntime", "", None, None, None, None,
                                 "skipped", "not installed")])
    assert not empty.ok and empty.verdict().code == 2
    assert "not installed" in empty.verdict().reason
    assert not GateResult(skipped=["monai: not installed"]).ok
    assert GateResult(written=[Path("x.json")]).ok  # --update: judged by what it wrote


# -- every way the battery found to a 0 without evidence --------------------------------------
def test_os_exit_0_at_import_is_not_a_pass(tmp_path: Path) -> None:
    name = write(tmp_path, "exits.py", "import os\nos._exit(0)\n")
    r = bncheck("verify", f"{name}:BN", cwd=tmp_path)
    assert r.returncode == 2, r
    assert "importing the target exits.py:BN: the process exited with code 0" in r.stderr


def test_an_empty_target_is_not_the_reference(tmp_path: Path) -> None:
    r = bncheck("verify", "", cwd=tmp_path)
    assert r.returncode == 2 and "received TARGET=''" in r.stderr, r
    assert "passed" not in r.stdout


def test_every_property_skipped_is_not_a_pass(tmp_path: Path) -> None:
    r = bncheck("verify", "--property", "reduced_precision", "--dtypes", "float32,float64",
                "--json", "r.json", cwd=tmp_path)
    assert r.returncode == 2, r
    assert "nothing was verified" in r.stderr and "needs float16 or bfloat16" in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_ctrl_c_under_world_size_is_never_a_pass(tmp_path: Path) -> None:
    """The battery saw the interrupt swallowed inside Hypothesis's gc callback (exit 0): once
    Ctrl-C reached the command, the exit code is 130 whatever the command's process says."""
    codes = [ctrl_c("verify", "--world-size", "2", cwd=tmp_path, after=delay)
             for delay in (2.0, 4.0, 6.0)]
    assert codes == [130] * len(codes)


# -- the user's module runs in the watched worker ---------------------------------------------
def test_a_module_looping_at_import_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    name = write(tmp_path, "loops.py", "while True:\n    pass\n")
    r = bncheck("verify", f"{name}:BN", "--timeout", "2", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r
    assert "importing the target loops.py:BN: did not return within 2 s (at loops.py:" in \
        r.stderr


def test_a_thread_started_at_import_does_not_keep_bncheck_alive(tmp_path: Path) -> None:
    name = write(tmp_path, "thread.py", "import threading, time\n"
                 "threading.Thread(target=time.sleep, args=(10**6,)).start()\n" + BN)
    r = bncheck("verify", f"{name}:BN", "--property", "eval_forward", "--examples", "2",
                cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "1 passed, 0 failed" in r.stdout, r


@pytest.mark.parametrize("change,seen", [
    ("torch.set_default_dtype(torch.float64)", "default dtype float32 -> float64"),
    ("torch.set_grad_enabled(False)", "grad mode (torch.set_grad_enabled) True -> False"),
])
def test_a_global_torch_change_at_import_is_named(tmp_path: Path, change: str,
                                                  seen: str) -> None:
    name = write(tmp_path, "changes_torch.py", f"import torch\n{change}\n" + BN)
    r = bncheck("verify", f"{name}:BN", cwd=tmp_path)
    assert r.returncode == 2, r
    assert "importing it changed torch's global state" in r.stderr and seen in r.stderr
    assert "failed" not in r.stdout  # not ten failures blaming the layer


def test_chdir_at_import_keeps_a_relative_json_here(tmp_path: Path) -> None:
    name = write(tmp_path, "cd.py", "import os\nos.chdir('/')\n" + BN)
    r = bncheck("verify", f"{name}:BN", "--property", "eval_forward", "--examples", "2",
                "--json", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


# -- outputs -----------------------------------------------------------------------------------
def test_json_through_a_symlink_replaces_its_file_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    r = bncheck("verify", "--property", "eval_forward", "--examples", "2", "--json",
                "link.json", cwd=tmp_path)
    assert r.returncode == 0, r
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text())["ok"] is True


def test_json_onto_a_fifo_is_written_through_it(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even with no writer
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", "verify", "--property",
                             "eval_forward", "--examples", "2", "--json", str(fifo)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data = b""
    while proc.poll() is None or select.select([reader], [], [], 0)[0]:
        if select.select([reader], [], [], 0.2)[0]:
            chunk = os.read(reader, 65536)
            data += chunk
            if not chunk and proc.poll() is not None:
                break
    os.close(reader)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert json.loads(data)["ok"] is True
    assert fifo.is_fifo()  # still a FIFO, not replaced by a regular file


def test_json_is_written_when_stdout_is_closed_early(tmp_path: Path) -> None:
    """``bncheck verify --json r.json | head -1``: the reader goes away after one line."""
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", "verify", "--examples", "2",
                             "--json", "r.json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(240) == 0
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_a_second_train_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-m", "bncheck", "train", "--limit", "4000",
                              "--epochs", "3", "--out", "run"], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = bncheck("train", "--limit", "300", "--epochs", "1", "--out", "run",
                         cwd=tmp_path)
        assert second.returncode == 2, second
        assert "--out='run' is in use by another bncheck run" in second.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


# -- Ctrl-C ------------------------------------------------------------------------------------
def ctrl_c(*args: str, cwd: Path, after: float, again: float | None = None) -> int:
    """Start ``bncheck ARGS`` in a session of its own, Ctrl-C it as a terminal does (SIGINT to
    the foreground process group) ``after`` seconds in (and once more ``again`` s later);
    the exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", *args], cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(after)
    for delay in (0.0,) if again is None else (0.0, again):
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"bncheck {' '.join(args)} did not end 60 s after Ctrl-C") from None
    return proc.returncode


def test_a_target_that_ignores_ctrl_c_is_stopped(tmp_path: Path) -> None:
    name = write(tmp_path, "deaf.py", "import signal, time\nimport torch\n"
                 "signal.signal(signal.SIGINT, signal.SIG_IGN)\n\n\n"
                 "class BN(torch.nn.BatchNorm1d):\n    def forward(self, x):\n"
                 "        time.sleep(0.5)\n        return super().forward(x)\n")
    assert ctrl_c("verify", f"{name}:BN", cwd=tmp_path, after=4.0) == 130
    assert ctrl_c("verify", f"{name}:BN", cwd=tmp_path, after=4.0, again=0.5) == 130
