"""Child processes that run user code for bncheck, which the parent can always stop.

>>> from bncheck.infra.workers import Worker
>>> w = Worker(echo_main, start_method="fork")    # doctest: +SKIP
>>> w.start(); w.send("hi"); w.receive(5.0)       # doctest: +SKIP
'hi'
>>> w.stop()                                      # doctest: +SKIP

The one process manager of bncheck: single-process verification runs its target in one
:class:`Worker`, distributed verification runs N ranks in a
:class:`~bncheck.distributed.launcher.WorkerPool` of them. A worker talks to the parent over a
pipe (pickled messages). The parent never waits without a deadline: a worker whose user code
never returns (a Python loop, or a C call that holds the GIL) is asked where it is
(:meth:`Worker.where`: ``faulthandler`` dumps its Python stack from a C signal handler, which
needs no GIL) and then stopped: asked, terminated, killed (:func:`stop_workers`). A worker exits
when its parent dies, even while it holds the GIL (Linux's parent-death signal; elsewhere a
watcher thread), and ignores Ctrl-C, which is the parent's to handle.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from bncheck.errors import WorkerDied
from bncheck.infra.validation import DEFAULT_TIMEOUT, MAX_TIMEOUT

__all__ = ["Worker", "WorkerDied", "stop_workers", "exit_description", "start_method_for",
           "reimport_spec", "main_thread_frames", "stuck_at", "time_limited", "watch_with",
           "TIMED_OUT", "DEFAULT_TIMEOUT", "MAX_TIMEOUT", "check_process_count",
           "check_fits_in_memory"]

#: Seconds one example (single-process verify) may take before the target counts as hung: a
#: tiny case takes milliseconds, but a ``torch.compile``-d target's first call per dtype compiles
#: (21.5 s measured here for a BatchNorm2d on the loaded 2-core machine), which must not be
#: reported as a hang.
# DEFAULT_TIMEOUT and MAX_TIMEOUT: decided in bncheck.infra.validation (imported above)
#: Seconds a stopping worker gets to exit on its own, then after SIGTERM, before SIGKILL.
_GRACE = 1.0
#: How long the parent waits for a ``faulthandler`` stack dump.
_DUMP_WAIT = 1.0


def exit_description(exitcode: int | None) -> str:
    """``was killed by SIGKILL``, ``exited with code 3`` or ``was still running``."""
    if exitcode is None:
        return "was still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def reimport_spec(obj: Any) -> str | None:
    """The ``module:Name`` or ``file.py:Name`` string with which a fresh process imports ``obj``
    (:func:`bncheck.engine.target.load_target`), or ``None`` when it cannot (a class defined inside
    a
    function or in ``__main__``, a lambda, an instance)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not name or "<locals>" in name or "." in name or module == "__main__":
        return None
    loaded = sys.modules.get(module)
    if getattr(loaded, name, None) is not obj:  # e.g. made by exec() or type(): not there
        return None
    if module.startswith("_bncheck_target_"):  # loaded from a file by load_target
        file = getattr(loaded, "__file__", None)
        return f"{file}:{name}" if file else None
    return f"{module}:{name}"


def start_method_for(obj: Any = None) -> str | None:
    """How to start a worker that runs ``obj``; ``None``: no way on this platform (run in-process).

    ``fork`` when this process can be forked safely (one thread, CUDA not initialised): the
    worker starts in milliseconds and sees every object as the caller does, even a class defined
    inside a test function. Otherwise a fresh interpreter (``forkserver``, else ``spawn``) when
    it can import ``obj`` by name, else ``fork`` anyway (the only way to reach such an object).
    """
    import torch

    methods = multiprocessing.get_all_start_methods()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if "fork" in methods and _only_thread() and not cuda and not _jax_started():
        return "fork"
    if obj is None or reimport_spec(obj) is not None:
        return "forkserver" if "forkserver" in methods else "spawn"
    return "fork" if "fork" in methods and not cuda else None


#: The name of a worker's own parent-watching thread: it only sleeps and polls, holds no lock,
#: and so does not make forking from the worker unsafe (a watched command forks its workers).
_WATCHER = "bncheck-parent-watch"


def _only_thread() -> bool:
    """Whether this is the process's only thread (bncheck's parent watcher aside)."""
    return all(t is threading.current_thread() or t.name == _WATCHER
               for t in threading.enumerate())


def _jax_started() -> bool:
    """Whether JAX has started a backend in this process: XLA's C++ threads (which
    ``threading`` does not count) then make a forked child deadlock in its first JAX call."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


# -- the child's side ------------------------------------------------------------------------
#: In a worker whose parent limits the time of each call into user code: told when such a call
#: starts (its description) and ends (``None``). See :func:`time_limited`.
_watch: Callable[[str | None], None] | None = None


@contextlib.contextmanager
def time_limited(doing: str) -> Iterator[None]:
    """A block that runs the user's code. In a watched worker the parent stops the worker when
    the block takes longer than its time limit; elsewhere it does nothing.

    >>> with time_limited("building the model"):
    ...     pass
    """
    if _watch is None:
        yield
        return
    _watch(doing)
    try:
        yield
    finally:
        _watch(None)


def watch_with(report: Callable[[str | None], None] | None) -> None:
    """In a worker: send the start and end of each :func:`time_limited` block to ``report``."""
    global _watch
    _watch = report


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started the worker is gone (no orphans)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # its own stack dumps: main's
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent_pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or its pid reused by another user
            os._exit(3)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL when the parent dies, delivered even while user code holds the GIL."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        os.kill(parent_pid, 0)  # it may have died before the signal was armed
    except (ProcessLookupError, PermissionError):
        os._exit(3)


def _forget_parents_fork_server() -> None:
    """In a forked worker: forget the fork server the parent started (``multiprocessing`` keeps
    its pid, socket and "alive" pipe in a module-level object, which ``fork`` copies).

    The copy is wrong in the child: the server is the parent's child, not this process's, so
    the next ``forkserver`` start (a watched command's own workers, e.g. ``verify`` under
    ``runs_watched``) fails in ``os.waitpid`` with ``ChildProcessError`` (ECHILD), and the copied
    pipe would keep the parent's server alive as long as this worker lives. Forgotten, the
    child starts a server of its own on first use, with its own preload and ``sys.path``. A
    worker started by a fork server or by spawn has none to forget. The resource tracker is
    left shared: it is found by its pipe alone and meant to be shared with children."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
    server._lock = threading.Lock()  # it may have been held by another thread at the fork
    server._forkserver_pid = None
    server._forkserver_address = None
    server._forkserver_alive_fd = None


def _child(main: Callable[..., None], parent_pid: int, dump_path: str, conn: Connection,
           args: tuple[Any, ...]) -> None:
    """A worker's life: set up, then ``main(conn, *args)``; exits with ``os._exit``."""
    import torch

    _forget_parents_fork_server()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent_pid)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name=_WATCHER).start()
    if hasattr(signal, "SIGUSR1"):
        dump = open(dump_path, "w")  # noqa: SIM115 - kept open for the handler, closed by exit
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    torch.set_num_threads(1)  # after fork, more threads hang in OpenMP; tiny tensors anyway
    try:
        main(conn, *args)
    finally:
        os._exit(0)


# -- the parent's side -----------------------------------------------------------------------
class Worker:
    """One child process running ``main(conn, *args)``.

    Args:
        main: a module-level function; it receives the child's end of the pipe first.
        args: more arguments for ``main`` (pickled unless ``start_method`` is ``fork``).
        start_method: ``fork``, ``forkserver`` or ``spawn`` (:func:`start_method_for`).
        name: the process name.
        preload: modules a fork server imports once for all its workers.
    """

    def __init__(self, main: Callable[..., None], args: Sequence[Any] = (), *,
                 start_method: str = "fork", name: str = "bncheck-worker",
                 preload: Sequence[str] = ("torch", "bncheck.engine.adapter",
                                           "bncheck.engine.target")) -> None:
        self.main, self.args, self.name = main, tuple(args), name
        self.start_method, self.preload = start_method, list(preload)
        self.proc: Any = None
        self.conn: Connection | None = None
        self._dump_path = ""

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else int(self.proc.pid)

    def start(self) -> None:
        """Start the process (idempotent)."""
        if self.running:
            return
        ctx: Any = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(self.preload)
        fd, self._dump_path = tempfile.mkstemp(prefix="bncheck-stack-", suffix=".txt")
        os.close(fd)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, name=self.name, daemon=True,
                           args=(self.main, os.getpid(), self._dump_path, child, self.args))
        import gc

        gc.freeze()  # the child's collections then leave the parent's objects (and pages) alone
        try:
            proc.start()
        finally:
            gc.unfreeze()
        child.close()
        self.proc, self.conn = proc, parent

    def send(self, message: Any) -> None:
        """Send one pickled message (a worker that is gone raises :class:`WorkerDied`)."""
        assert self.conn is not None, "start() the worker first"
        try:
            self.conn.send_bytes(pickle.dumps(message))
        except OSError as e:
            raise WorkerDied(f"the process {self.exit_text()}") from e

    def receive(self, timeout: float | None) -> Any:
        """The next message, or :data:`TIMED_OUT` when none came within ``timeout`` seconds
        (``None``: wait as long as it takes).

        Raises:
            WorkerDied: the process exited or closed its pipe.
        """
        assert self.conn is not None and self.proc is not None, "start() the worker first"
        ready = multiprocessing.connection.wait(
            [self.conn, self.proc.sentinel], timeout=None if timeout is None else max(0.0, timeout))
        if not ready:
            return TIMED_OUT
        return self.read()

    def read(self) -> Any:
        """A message that :func:`multiprocessing.connection.wait` said is ready (or death)."""
        assert self.conn is not None
        try:
            if not self.conn.poll():
                raise EOFError
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise WorkerDied(f"the process {self.exit_text()}") from None

    def exit_text(self) -> str:
        if self.proc is not None:
            self.proc.join(1.0)
        return exit_description(None if self.proc is None else self.proc.exitcode)

    def where(self) -> str:
        """The worker's Python stack now (``faulthandler``'s dump of every thread, the main
        thread last), even when its code holds the GIL; empty where unavailable."""
        if self.proc is None or not hasattr(signal, "SIGUSR1") or not self.proc.is_alive():
            return ""
        try:
            before = os.path.getsize(self._dump_path)
            os.kill(self.proc.pid, signal.SIGUSR1)
        except OSError:
            return ""
        deadline, size = time.monotonic() + _DUMP_WAIT, -1
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = os.path.getsize(self._dump_path)
            if now > before and now == size:
                break
            size = now
        with open(self._dump_path, errors="replace") as fh:
            fh.seek(before)
            return fh.read()

    def stop(self, *, hung: bool = False) -> None:
        """Ask, terminate, kill (a ``hung`` worker: kill at once): no process left behind."""
        stop_workers([self], hung=hung)


#: What :meth:`Worker.receive` returns when nothing came in time.
TIMED_OUT: Any = object()


def stop_workers(workers: Iterable[Worker], *, grace: float = _GRACE, hung: bool = False
                 ) -> None:
    """Stop every worker: ask (``"stop"``), then terminate, then kill, each stage for all at
    once (``hung`` workers cannot answer: killed at once); leaves no process and no temporary
    file behind."""
    workers = [w for w in workers if w.proc is not None]
    if not hung:
        for w in workers:
            with contextlib.suppress(OSError, WorkerDied):
                w.send("stop")
    for stage in ("kill",) if hung else (None, "terminate", "kill"):
        alive = [w for w in workers if w.proc.is_alive()]
        if stage is not None:
            for w in alive:
                getattr(w.proc, stage)()
        deadline = time.monotonic() + grace
        for w in alive:
            w.proc.join(max(0.0, deadline - time.monotonic()) if stage != "kill" else None)
    for w in workers:
        assert w.conn is not None
        w.conn.close()
        with contextlib.suppress(OSError):
            os.unlink(w._dump_path)
        w.proc, w.conn = None, None


#: Memory one rank's process takes, bytes: a fresh interpreter with torch, torch.distributed and
#: bncheck's rank code imported peaks at 220 MB resident (ru_maxrss, Linux, torch 2.13 CPU).
_RANK_BYTES = 220 * 2**20


def check_process_count(count: int, name: str) -> None:
    """Refuse to start ``count`` worker processes when this machine cannot hold them (the
    memory each takes, and the processes this user may still start), before any is started.

    Raises:
        InvalidArgument: naming ``name=count``, what the machine has, and how many fit.
    """
    from bncheck.errors import InvalidArgument

    fits: list[tuple[int, str]] = []
    available = _available_memory()
    if available is not None:
        fits.append((available // _RANK_BYTES,
                     f"each takes about {_RANK_BYTES // 2**20} MB and "
                     f"{available / 2**30:.1f} GB of memory is available"))
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY:
            fits.append((soft // 2, f"this user may run {soft} processes"))
    for most, why in fits:
        if count > most:
            raise InvalidArgument(f"Expected {name} to be a number of processes this machine "
                                  f"can run, received {name}={count}: {why}, so at most "
                                  f"{max(most, 0)} fit here")


#: An input may take at most this share of the available memory: a forward's activations (and
#: the calibration's, and two runtimes' copies when a model is checked) take several times it.
_INPUT_SHARE = 8


def check_fits_in_memory(nbytes: int, given: str, what: str) -> None:
    """Refuse an allocation of ``nbytes`` that this machine cannot hold with room to run.

    Raises:
        InvalidArgument: ``given`` (``name=value``), its size and what is available.
    """
    from bncheck.errors import InvalidArgument

    available = _available_memory()
    if available is not None and nbytes * _INPUT_SHARE > available:
        raise InvalidArgument(f"Expected an input this machine can hold, received {given}: "
                              f"{what} takes {_size(nbytes)}, and a forward needs several "
                              f"times its input, while {_size(available)} of memory is "
                              f"available (at most 1/{_INPUT_SHARE} of it for the input)")


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "bytes" else f"{int(nbytes)} bytes"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _available_memory() -> int | None:
    """Bytes of memory available for new processes (Linux's MemAvailable), else ``None``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# -- reading a stack dump --------------------------------------------------------------------
_THREAD = re.compile(r"^(Current thread|Thread) 0x([0-9a-f]+)", re.MULTILINE)
_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>\S+)', re.MULTILINE)


def stuck_at(dump: str, is_user: Callable[[str], bool]) -> tuple[str, str]:
    """From a stack dump: ``file:line in function`` of the innermost frame ``is_user`` accepts
    (else the innermost frame), and those frames as a traceback, innermost last."""
    frames = main_thread_frames(dump)
    user = [f for f in frames if is_user(f[0])]
    inner = user[0] if user else (frames[0] if frames else None)
    where = f"{_relative(inner[0])}:{inner[1]} in {inner[2]}" if inner else ""
    stack = "\n".join(f"  {_relative(f)}:{line} in {func}" for f, line, func in reversed(user))
    return where, stack


def _relative(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename


def main_thread_frames(dump: str) -> list[tuple[str, int, str]]:
    """The worker's main-thread frames in ``dump`` (``faulthandler``'s text; the main thread is
    the one that runs :func:`_child`), innermost first, as ``(file, line, function)``."""
    blocks = _THREAD.split(dump)[1:]
    texts = [blocks[i + 2] for i in range(0, len(blocks), 3)]
    chosen = next((text for text in texts if " in _child" in text), "")
    return [(m["file"], int(m["line"]), m["func"]) for m in _FRAME.finditer(chosen)]
