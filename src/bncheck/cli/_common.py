"""Shared CLI plumbing: error-to-exit-code mapping, the --debug flag, the console."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from bncheck.errors import BNCheckError, ExportFailed, UsageError, VerificationFailed

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
#: What ``Error: interrupted (Ctrl-C) ...`` says of a Ctrl-C outside a command's own handling.
BEFORE_START = "before the command started; nothing was done"
AS_IT_ENDED = "as the command ended; its result does not count"
WHILE_EXITING = "while bncheck was exiting; the command had finished"

#: The environment variable that sets ``--jobs`` (``bncheck verify``; ``train``'s verify step).
JOBS_ENV = "BNCHECK_JOBS"
#: ``--jobs auto`` uses at most this many workers (13 properties; beyond 4 the longest ones
#: decide the wall time).
MAX_AUTO_JOBS = 4


def console() -> Console:
    """The console every command renders to (stdout; wide enough for tables in CI logs)."""
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


@contextlib.contextmanager
def status_line(out: Console, total: int | None = None) -> Iterator[Callable[[str], None]]:
    """A transient status line on a terminal (a bar when ``total`` steps are known: each
    call of the yielded ``update(text)`` starts the next); nothing when piped."""
    if not out.is_terminal:
        yield lambda _: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = (BarColumn(), MofNCompleteColumn()) if total is not None else ()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), *bar, TimeElapsedColumn(),
                  console=out, transient=True) as progress:
        task = progress.add_task("starting", total=total)
        started = 0

        def update(text: str) -> None:
            nonlocal started
            if total is not None and started:
                progress.advance(task)
            started += 1
            progress.update(task, description=text)

        yield update


def resolve_jobs(text: str | None, name: str = "--jobs") -> int:
    """Properties run at once: ``text`` a whole number >= 1, or ``auto``/``None`` (one worker
    per CPU this process may use, at most :data:`MAX_AUTO_JOBS`).

    >>> resolve_jobs("3")
    3

    Raises:
        InvalidArgument: ``text`` is neither (``name`` is the option or variable it came from).
    """
    import os

    from bncheck.errors import InvalidArgument

    if text is None or text.strip().lower() == "auto":
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        return max(1, min(usable, MAX_AUTO_JOBS))
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise InvalidArgument(f"Expected {name} to be a whole number >= 1 or 'auto', received "
                              f"{name}={text!r}")
    return jobs


def err(message: str) -> None:
    click.echo(f"Error: {message}", err=True)


debug_option = click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")


def interrupted(what: str) -> NoReturn:
    """Ctrl-C: ``Error: interrupted (Ctrl-C) WHAT`` (what was finished, what was written), then
    exit 130."""
    err(f"interrupted (Ctrl-C) {what}")
    sys.exit(EXIT_INTERRUPTED)


def handles_errors(fn: F) -> F:
    """Map bncheck's errors to exit codes: usage errors 2, failed checks of the user's code
    (verification, export) 1, Ctrl-C 130.

    With ``--debug`` the original exception propagates with its traceback. A command that has
    partial results to save on Ctrl-C catches ``KeyboardInterrupt`` itself, writes them, and
    exits with :data:`EXIT_INTERRUPTED`; this is the fallback for every other command.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            if debug:
                raise
            err(str(e))
            sys.exit(EXIT_USAGE)
        except (VerificationFailed, ExportFailed) as e:
            if debug:
                raise
            err(str(e))
            sys.exit(EXIT_FAILED)
        except BNCheckError as e:
            if debug:
                raise
            err(str(e))
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            if debug:
                raise
            err("interrupted (Ctrl-C); nothing more was written")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]
