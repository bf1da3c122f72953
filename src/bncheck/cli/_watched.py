"""Run a command's body in a worker process whose calls into the user's model are time limited.

``bncheck export`` and ``bncheck check`` with ``--bn FILE.py:Name`` or ``--model`` run the
user's code throughout: building the model, each calibration forward, the exporter's trace, the
eager forwards. With :func:`runs_watched` the command's body runs in a forked
:class:`~bncheck.infra.workers.Worker` and its output comes back over the pipe. Each block of user
code (:func:`bncheck.engine.target.user_code`, :func:`bncheck.infra.workers.time_limited`) may take
``--timeout`` seconds; then the parent reads where the worker is (also when its code holds the
GIL), kills it, and exits 2 with one paragraph naming the step and the user's file and line.
Ctrl-C is passed on to the worker, which ends the command as it would in-process (exit 130);
one that cannot (stuck in C code) is killed after a few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import click

from bncheck.cli._common import AS_IT_ENDED, EXIT_INTERRUPTED, EXIT_USAGE, err

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds a worker gets to end the command itself after Ctrl-C.
_CTRL_C_GRACE = 3.0


def timeout_option(help_text: str) -> Callable[[F], F]:
    """``--timeout S``, default :data:`bncheck.infra.workers.DEFAULT_TIMEOUT`."""
    from bncheck.infra.workers import DEFAULT_TIMEOUT

    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                        default=DEFAULT_TIMEOUT, show_default=True, metavar="S",
                        help=help_text)


def runs_watched(needs_watch: Callable[[dict[str, Any]], bool]) -> Callable[[F], F]:
    """Run the command in a watched worker when ``needs_watch(its keyword arguments)`` (the
    command runs the user's code), except with ``--debug`` (in-process, for the traceback and a
    debugger, without the time limit). Put it above
    :func:`~bncheck.cli._common.handles_errors`, which then maps the errors inside the worker."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from bncheck.errors import UsageError
            from bncheck.infra.validation import check_timeout

            try:
                check_timeout(kwargs["timeout"])  # click's range lets nan and inf through
            except UsageError as e:
                err(str(e))
                sys.exit(EXIT_USAGE)
            if not needs_watch(kwargs) or not can_watch(debug=kwargs.get("debug", False)):
                return fn(*args, **kwargs)
            from bncheck.infra.workers import DEFAULT_TIMEOUT

            code = run_watched(lambda: fn(*args, **kwargs),
                               timeout=kwargs["timeout"] or DEFAULT_TIMEOUT)
            if code:
                sys.exit(code)
            return None

        return wrapper  # type: ignore[return-value]

    return deco


def import_watched_first(load: Callable[[], Any], *, timeout: float, debug: bool) -> None:
    """Run ``load`` (what imports the user's module) once in a watched worker before bncheck's
    own process runs it, for a command that then loads the module itself: a module that exits
    at import (``os._exit(0)``), hangs or kills its process ends the command with exit 2
    naming it, instead of ending bncheck with the module's own code. Nothing with ``--debug``
    (in-process by request)."""
    if not can_watch(debug=debug):
        return
    from bncheck.cli._common import handles_errors

    @handles_errors
    def body(debug: bool = False) -> None:
        load()

    code = run_watched(body, timeout=timeout)
    if code:
        sys.exit(code)


def can_watch(*, debug: bool) -> bool:
    """Whether a command's body can run in a watched worker: not with ``--debug`` (in-process,
    for the traceback and a debugger, without the time limit), and only where ``fork`` is."""
    return not debug and "fork" in multiprocessing.get_all_start_methods()


def run_watched(body: Callable[[], Any], *, timeout: float) -> int:
    """Run ``body`` (a command, under ``handles_errors``) in a forked worker; its exit code."""
    from bncheck.engine.adapter import is_user_file
    from bncheck.infra.workers import TIMED_OUT, Worker, WorkerDied, stuck_at

    worker = Worker(_serve, (body, sys.stdout.isatty(), sys.stderr.isatty()),
                    start_method="fork", name="bncheck-command")
    worker.start()
    doing: list[str] = []
    code: int | None = None
    try:
        try:
            while code is None:
                got = worker.receive(timeout if doing else None)
                if got is TIMED_OUT:
                    where, _ = stuck_at(worker.where(), is_user_file)
                    err(f"{doing[-1]}: did not return within {timeout:g} s"
                        + (f" (at {where})" if where else "")
                        + "; bncheck stopped it (raise --timeout if it is only slow)")
                    return EXIT_USAGE
                code = _handle(got, doing)
        except WorkerDied as e:
            err(f"{doing[-1] if doing else 'running the command'}: {e}; nothing more was "
                f"written")
            return EXIT_USAGE
        except KeyboardInterrupt:
            return _interrupted(worker, doing)
    finally:
        worker.stop(hung=code is None)
    if _lost:  # the report is incomplete where the user reads it: not a clean pass
        err(f"the command's output could not be written to {', '.join(dict.fromkeys(_lost))}; "
            f"the command itself ran to its end")
        _lost.clear()
        return code or EXIT_USAGE
    return code


#: The streams the command's output could not be written to (:func:`_handle`), with why.
_lost: list[str] = []


def _handle(got: tuple[str, Any], doing: list[str]) -> int | None:
    """Act on one message from the worker; its exit code when it ended."""
    kind, payload = got
    if kind in ("out", "err"):
        stream = sys.stdout if kind == "out" else sys.stderr
        try:
            stream.write(payload)
            stream.flush()
        except BrokenPipeError:  # e.g. piped into `head`: the command goes on, its files too
            _stop_writing(stream)
        except OSError as e:  # a full disk, an I/O error: the command goes on, its files too
            _stop_writing(stream)
            _lost.append(f"{'standard output' if kind == 'out' else 'standard error'} "
                         f"({e.strerror or e})")
    elif kind == "enter":
        doing.append(payload)
    elif kind == "leave":
        doing.pop()
    elif kind == "exit":
        return int(payload)
    return None


def _stop_writing(stream: Any) -> None:
    """The reader of ``stream`` is gone: what is still written there goes nowhere (not an
    error at exit either)."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull.fileno(), stream.fileno())


def _interrupted(worker: Any, doing: list[str]) -> int:
    """Ctrl-C: ask the worker to end the command as it would in-process (it writes what it
    keeps); it is killed when it has not within the grace period, or at once at a second
    Ctrl-C (a target that ignores SIGINT cannot hold bncheck). Exit 130 whatever the worker's
    own code: an interrupted run is never evidence."""
    again = threading.Event()  # from now on Ctrl-C only says "stop now", it raises nothing
    before = signal.signal(signal.SIGINT, lambda *_: again.set())
    try:
        return _pass_on_ctrl_c(worker, doing, again)
    finally:  # run_watched may run again in this process (the API, a test's CliRunner)
        signal.signal(signal.SIGINT, before)


def _pass_on_ctrl_c(worker: Any, doing: list[str], again: threading.Event) -> int:
    """The body of :func:`_interrupted`, while Ctrl-C only sets ``again``."""
    import time

    from bncheck.infra.workers import TIMED_OUT, WorkerDied

    try:
        os.kill(worker.pid, signal.SIGINT)
        deadline = time.monotonic() + _CTRL_C_GRACE
        while not again.is_set() and time.monotonic() < deadline:
            got = worker.receive(min(0.1, max(0.0, deadline - time.monotonic())))
            code = None if got is TIMED_OUT else _handle(got, doing)
            if code is not None:
                if code != EXIT_INTERRUPTED:  # it had ended on its own: it said nothing of it
                    err(f"interrupted (Ctrl-C) {AS_IT_ENDED}")
                return EXIT_INTERRUPTED  # the worker said what it kept
    except (OSError, WorkerDied):
        pass
    err("interrupted (Ctrl-C)" + (f" while {doing[-1]}" if doing else "")
        + ("; stopped at the second Ctrl-C" if again.is_set() else "")
        + "; nothing more was written")
    return EXIT_INTERRUPTED


# -- the worker's side -----------------------------------------------------------------------
class _Forward:
    """A text stream that sends what is written to the parent."""

    def __init__(self, kind: str, send: Callable[[str, Any], None], tty: bool) -> None:
        self.kind, self.send, self.tty = kind, send, tty
        self.encoding, self.errors = "utf-8", "replace"

    def write(self, text: str | bytes) -> int:
        if text:  # click.echo may hand over bytes
            self.send(self.kind, text if isinstance(text, str) else text.decode("utf-8",
                                                                                 "replace"))
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return self.tty

    def writable(self) -> bool:
        return True


def _serve(conn: Connection, body: Callable[[], Any], out_tty: bool, err_tty: bool) -> None:
    """Run the command; send its output, its user-code blocks and its exit code."""
    import pickle

    from bncheck.infra.workers import watch_with

    lock = threading.Lock()  # a progress display writes from its own thread

    def send(kind: str, payload: Any) -> None:
        with lock:
            conn.send_bytes(pickle.dumps((kind, payload)))

    # The command starts workers of its own (verify's properties, distributed ranks), which
    # multiprocessing refuses to a daemonic process; this one is stopped by its parent anyway.
    multiprocessing.current_process().daemon = False
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which passes it on once
    signal.signal(signal.SIGINT, signal.default_int_handler)
    watch_with(lambda doing: send("leave", None) if doing is None else send("enter", doing))
    sys.stdout = _Forward("out", send, out_tty)  # type: ignore[assignment]
    sys.stderr = _Forward("err", send, err_tty)  # type: ignore[assignment]
    code: Any = 0
    try:
        body()
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - a bug: shown as in-process, as a traceback
        traceback.print_exc()
        code = 1
    from bncheck.cli._program import exit_code

    send("exit", exit_code(code))
