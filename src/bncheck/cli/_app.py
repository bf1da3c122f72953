"""The top-level ``bncheck`` group. Subcommands live one per module and are imported lazily,
so ``bncheck --help`` stays fast and a subcommand's heavy imports happen only when it runs."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

import click

from bncheck._version import __version__

# name -> "module:attribute" of the click command.
_COMMANDS: dict[str, str] = {
    "verify": "bncheck.cli._verify:verify",
    "mutants": "bncheck.cli._mutants:mutants",
    "export": "bncheck.cli._export:export",
    "check": "bncheck.cli._check:check",
    "gate": "bncheck.cli._gate:gate",
    "train": "bncheck.cli._train:train",
    "bench": "bncheck.cli._bench:bench",
    "scan": "bncheck.cli._scan:scan",
}


#: Whether Ctrl-C reached this process during the command (see :func:`_ctrl_c_exits`).
_ctrl_c_seen = False


def _on_ctrl_c(signum: int, frame: Any) -> None:
    """SIGINT: remembered, then raised as Python does (``KeyboardInterrupt``), except while a
    module is being imported (see :func:`_raise_after_the_import`)."""
    global _ctrl_c_seen
    _ctrl_c_seen = True
    if _importing(frame) and not _deferred_too_long:
        _raise_after_the_import()
        return
    raise KeyboardInterrupt


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import (importlib's bootstrap is on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


#: The thread waiting to raise a deferred Ctrl-C (:func:`_raise_after_the_import`), and
#: whether it waited :data:`_DEFER_AT_MOST` seconds (an import that never ends is interrupted).
_deferred: Any = None
_deferred_too_long = False
_DEFER_AT_MOST = 10.0


def _raise_after_the_import() -> None:
    """A KeyboardInterrupt raised inside an import can come out of a Python callback that a C++
    extension's static initializer called (torch.distributed's, through pybind11): C++ then
    calls ``std::terminate`` and the process dies with SIGABRT instead of exiting 130 (1 try
    in 50 of Ctrl-C during ``bncheck verify``'s first second). So the interrupt is deferred:
    a thread watches the main thread's stack and sends SIGINT again once no import is under
    way, when it is raised as usual (or after :data:`_DEFER_AT_MOST` s, wherever it is)."""
    global _deferred
    import threading

    if _deferred is not None and _deferred.is_alive():
        return

    def resend() -> None:
        import os
        import signal
        import time

        global _deferred_too_long
        main, since = threading.main_thread().ident or 0, time.monotonic()
        while True:
            time.sleep(0.02)
            frame = sys._current_frames().get(main)  # noqa: SLF001 - the documented way
            if frame is None or not _importing(frame):
                break
            if time.monotonic() - since > _DEFER_AT_MOST:
                _deferred_too_long = True
                break
        os.kill(os.getpid(), signal.SIGINT)

    _deferred = threading.Thread(target=resend, name="bncheck-deferred-ctrl-c", daemon=True)
    _deferred.start()


def _from_ctrl_c(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions that led to ``error`` (one raised by
    a handler other than bncheck's, which a library may have installed while running)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _exit_interrupted() -> None:
    from bncheck.cli._common import EXIT_INTERRUPTED, err

    _deaf_to_ctrl_c()
    err("interrupted (Ctrl-C); the run is not a result")
    sys.exit(EXIT_INTERRUPTED)


def _listen_for_ctrl_c() -> None:
    """Remember a Ctrl-C (:func:`_on_ctrl_c`) where Python's own handler is installed."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread (an embedding caller)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_ctrl_c)


@contextlib.contextmanager
def _ctrl_c_exits() -> Iterator[None]:
    """Once Ctrl-C reached bncheck, the exit code is 130, whatever the command did with the
    interrupt (one swallowed by a library, e.g. inside a garbage-collector callback, would
    otherwise end as a pass); Ctrl-C outside a command's own handling (parsing, importing the
    command, returning from it) exits 130 with one line saying which (:data:`_phase`), not
    click's "Aborted!" and exit 1."""
    from bncheck.cli._common import AS_IT_ENDED, BEFORE_START, EXIT_INTERRUPTED, err

    _listen_for_ctrl_c()
    try:
        yield
    except KeyboardInterrupt:
        if "--debug" in sys.argv[1:]:  # a command's --debug: the traceback it asked for
            raise
        _deaf_to_ctrl_c()
        err(f"interrupted (Ctrl-C) {BEFORE_START if _phase == 'starting' else AS_IT_ENDED}")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        if e.code != EXIT_INTERRUPTED and _ctrl_c_seen:
            _exit_interrupted()
        if e.code == EXIT_INTERRUPTED:
            _deaf_to_ctrl_c()
        raise
    except Exception:
        if _ctrl_c_seen and "--debug" not in sys.argv[1:]:
            _exit_interrupted()
        raise
    if _ctrl_c_seen:
        _exit_interrupted()


def _output_lost(error: BaseException) -> bool:
    """Whether ``error`` is the terminal's or a file's refusal to take what bncheck prints (a
    full disk, an I/O error: ``bncheck verify > /dev/full``), not a bug to show as a
    traceback. Files bncheck writes (``--json``, ...) name their own errors."""
    import errno

    lost = {errno.ENOSPC, errno.EIO, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
    return (isinstance(error, OSError) and error.errno in lost
            and "--debug" not in sys.argv[1:])


def _exit_output_lost(error: BaseException) -> None:
    from bncheck.cli._common import EXIT_USAGE, err

    with contextlib.suppress(OSError, ValueError):  # stderr may be the same full disk
        err(f"bncheck's output could not be written ({getattr(error, 'strerror', error)}); "
            f"nothing it printed can be trusted to be whole")
    sys.exit(EXIT_USAGE)


def forget_unhandled_ctrl_c() -> None:
    """CPython marks a Ctrl-C that interrupted code it evaluates from C (an extension module
    being imported) as unhandled, and at exit kills itself with SIGINT instead of returning the
    exit code, even when bncheck handled the interrupt. bncheck, the program, handled it: the
    mark is cleared (where this CPython exposes it)."""
    with contextlib.suppress(Exception):  # not CPython, or a CPython without the symbol
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0


#: Whether bncheck is the program (``bncheck ...``, ``python -m bncheck``), not a call of
#: :func:`main` with arguments (click's test runner, an embedding program): only then does it
#: change how the process answers SIGINT for good.
_owns_process = False


def _deaf_to_ctrl_c() -> None:
    """The command is over (or ending with exit 130): a Ctrl-C now cannot stop anything. As the
    program, bncheck then exits 130 at once (:func:`bncheck.cli._program.ctrl_c_ends_now`); a
    caller of :func:`main` gets Python's own handler back instead."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread (an embedding caller)
        if _owns_process:
            from bncheck.cli._program import ctrl_c_ends_now

            forget_unhandled_ctrl_c()
            ctrl_c_ends_now()
        elif signal.getsignal(signal.SIGINT) is _on_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _survive_encoding() -> None:
    """A terminal or pipe that cannot encode a character (an ASCII locale, a Unicode target
    name) gets an escape for it, not a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


class _LazyGroup(click.Group):
    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        global _owns_process, _ctrl_c_seen, _phase, _deferred_too_long
        _owns_process, _ctrl_c_seen, _phase = args is None, False, "starting"
        _deferred_too_long = False
        if not _owns_process:
            return self._run(args, *rest, **kwargs)
        from bncheck.cli._program import end

        try:
            self._run(args, *rest, **kwargs)
        except SystemExit as e:
            end(e.code)
        end(0)

    def _run(self, args: Any, *rest: Any, **kwargs: Any) -> Any:
        """:meth:`main` as click runs it, with a Ctrl-C anywhere ending in exit 130."""
        _listen_for_ctrl_c()
        try:
            return super().main(args, *rest, **kwargs)
        except SystemExit as e:  # also click's own "Aborted!" (exit 1) for a Ctrl-C it caught
            if e.code != 130 and (_ctrl_c_seen or _from_ctrl_c(e)):
                _exit_interrupted()
            raise
        except Exception as e:  # a library turned the interrupt into another error (C++ code)
            if _ctrl_c_seen or _from_ctrl_c(e):
                _exit_interrupted()
            if _output_lost(e):
                _exit_output_lost(e)
            raise

    def make_context(self, info_name: str | None, args: list[str], *rest: Any,
                     **kwargs: Any) -> click.Context:
        # A shell cannot pass a NUL byte, but a caller of main() can; paths would then fail
        # deep inside os.stat (found by fuzz/fuzz_cli.py).
        _survive_encoding()
        bad = next((a for a in args if "\x00" in a), None)
        if bad is not None:
            from bncheck.cli._common import EXIT_USAGE, err

            err(f"Expected arguments without NUL bytes, received {bad!r}")
            sys.exit(EXIT_USAGE)
        with _ctrl_c_exits():
            return super().make_context(info_name, args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        _listen_for_ctrl_c()  # again: the command's imports may have replaced the handler
        try:
            with _ctrl_c_exits():
                return super().invoke(ctx)
        finally:  # the command is over: a Ctrl-C now cannot stop anything, only kill the exit
            _deaf_to_ctrl_c()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = _COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS or not self._available(name):
            return None
        module, attr = _COMMANDS[name].split(":")
        command: Any = getattr(importlib.import_module(module), attr)
        _mark_phases(command)
        return command  # type: ignore[no-any-return]


#: Where the command is: "starting" (parsing, importing it), "running" (its body, which handles
#: Ctrl-C itself), "ended" (its body returned or raised).
_phase = "starting"


def _mark_phases(command: click.Command) -> None:
    """Make ``command``'s body keep :data:`_phase` (once per command object)."""
    body = command.callback
    if body is None or getattr(body, "_marks_phases", False):
        return

    @functools.wraps(body)
    def marked(*args: Any, **kwargs: Any) -> Any:
        global _phase
        _phase = "running"
        try:
            return body(*args, **kwargs)
        finally:
            _phase = "ended"

    marked._marks_phases = True  # type: ignore[attr-defined]
    command.callback = marked


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="bncheck")
def main() -> None:
    """bncheck: property-based verification for batch normalization.

    Run `bncheck COMMAND --help` for each command's options.
    """
