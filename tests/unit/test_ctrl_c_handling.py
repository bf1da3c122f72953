"""How bncheck's own process takes a Ctrl-C (``bncheck.cli._app``, ``bncheck.cli._program``):
deferred past an import under way, and ``SystemExit`` codes as CPython turns them into exit
statuses. The real signals to real processes are in
``tests/integration/test_ctrl_c_everywhere.py``."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from bncheck.cli import _app, _program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")

#: A module that is Ctrl-C'd while it is being imported, and goes on importing for a while.
INTERRUPTED_AT_IMPORT = """
import signal, time
signal.raise_signal(signal.SIGINT)
for _ in range(20):
    time.sleep(0.01)
FINISHED = True
"""


def test_a_ctrl_c_during_an_import_is_raised_once_the_import_is_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raised inside the import, a KeyboardInterrupt can unwind through a C++ static initializer
    # (torch.distributed's, via pybind11), which then aborts the process: SIGABRT, not 130.
    (tmp_path / "interrupted_at_import.py").write_text(INTERRUPTED_AT_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_app, "_ctrl_c_seen", False)
    before = signal.signal(signal.SIGINT, _app._on_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            import interrupted_at_import  # noqa: F401
            for _ in range(500):  # the deferred interrupt is raised here, within 0.1 s or so
                time.sleep(0.01)
        assert sys.modules["interrupted_at_import"].FINISHED  # the import ran to its end
        assert _app._ctrl_c_seen
    finally:
        signal.signal(signal.SIGINT, before)
        sys.modules.pop("interrupted_at_import", None)


def test_a_ctrl_c_outside_an_import_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app, "_ctrl_c_seen", False)
    before = signal.signal(signal.SIGINT, _app._on_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            for _ in range(100):
                pass
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("code,status", [(None, 0), (0, 0), (1, 1), (130, 130), (256, 0),
                                         ("a message", 1)])
def test_exit_status_of_a_system_exit_code_is_cpythons(code: object, status: int,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert _program.exit_code(code) == status
    if isinstance(code, str):
        assert capsys.readouterr().err == "a message\n"  # printed, as CPython prints it
