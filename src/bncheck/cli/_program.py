"""How ``bncheck`` ends when it is the program (``bncheck ...``, ``python -m bncheck``).

A Ctrl-C while the process lives exits 130, also one that lands after the command has finished
(while Python joins threads, runs exit handlers and tears the interpreter down). Left to
CPython, such a late interrupt either dies with a traceback in an exit handler, is ignored (the
command's own code, 0 for a pass, comes out), or kills the process by the signal once Python
has given its handlers up: three outcomes for one key press, decided by microseconds. So the
program ends here, explicitly: threads are joined and exit handlers run as Python would run
them, the streams are flushed, and the process exits with ``os._exit`` -- the command's code,
or 130 the moment a Ctrl-C arrives. Nothing of the interpreter's own teardown is left for a
signal to land in.

A caller of :func:`bncheck.cli.main` with arguments (click's test runner, an embedding program)
is not the program: none of this applies to it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from bncheck.cli._common import EXIT_INTERRUPTED, EXIT_USAGE, WHILE_EXITING

#: What a Ctrl-C once the command is over says (written from the signal handler, as bytes).
_WHILE_EXITING = (f"Error: interrupted (Ctrl-C) {WHILE_EXITING}\n").encode()


def exit_code(code: Any) -> int:
    """The status a ``SystemExit(code)`` gives, as CPython computes it (``None`` is 0, an int
    is itself, anything else is printed to stderr and is 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _flush() -> bool:
    """Write out what the streams still hold; whether they could be (a reader that left, e.g.
    ``| head``, is no error: it asked for no more)."""
    written = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except Exception:  # noqa: BLE001 - a full disk, a closed stream: the output is lost
            written = False
    return written


def _ctrl_c_while_exiting(signum: int, frame: Any) -> None:
    """SIGINT once the command is over: its outputs are written; the process ends now, 130."""
    _flush()
    with contextlib.suppress(OSError):
        os.write(2, _WHILE_EXITING)
    os._exit(EXIT_INTERRUPTED)


def ctrl_c_ends_now() -> None:
    """From now on a Ctrl-C ends the process at once with exit 130 (the command is over, or
    ending with 130 itself)."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _ctrl_c_while_exiting)


def end(code: Any) -> NoReturn:
    """End the program with ``SystemExit(code)``'s status: what CPython's shutdown does that a
    program can observe (join non-daemon threads, run the exit handlers, flush the streams),
    under :func:`ctrl_c_ends_now`, then ``os._exit``."""
    status = exit_code(code)
    ctrl_c_ends_now()
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first
    if shutdown is not None:
        with contextlib.suppress(Exception):
            shutdown()
    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own exit handlers, run once, in order
    if not _flush() and status == 0:  # what was printed is lost: a pass nobody could read
        with contextlib.suppress(OSError):
            os.write(2, b"Error: bncheck's output could not be written\n")
        status = EXIT_USAGE
    os._exit(status)
