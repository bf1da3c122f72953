"""Run every call into the target in a worker process, under a time limit per example.

>>> import torch
>>> from bncheck.engine.runner import verify
>>> verify(torch.nn.BatchNorm1d, properties=["eval_forward"], examples=2, timeout=30).ok
True

:func:`bncheck.engine.runner.verify` hands the target to a :class:`Watched` runner: the preflight
and
each property run in one :class:`~bncheck.infra.workers.Worker`, which sends a heartbeat (the case's
description) before each example. When no message comes for ``timeout`` seconds, the parent
asks the worker where it is (``faulthandler``, which works even while the target holds the GIL
in C code), kills it, fails that property with "did not return within S s", the case and the
user's file and line, and goes on with the next property in a fresh worker. A worker the target
crashes (a segfault, ``os._exit``) fails the property the same way.

A preflight step that hangs is replayed in the next worker as a :class:`~bncheck.errors.TargetHung`
raised at the same step (preflight is deterministic), so it is reported like a step that raises;
the first training forward hanging ends the run (every property would hang the same way).

:class:`InProcess` runs the same steps in this process without a time limit (``timeout=None``).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

from bncheck.engine.adapter import Target, is_user_file
from bncheck.engine.preflight import Finding, preflight
from bncheck.engine.properties import Context, Facts, Property, get
from bncheck.engine.runner import PropertyResult, Status, _settings, run_property
from bncheck.errors import BNCheckError, TargetHung
from bncheck.infra.workers import (
    TIMED_OUT,
    Worker,
    WorkerDied,
    reimport_spec,
    start_method_for,
    stuck_at,
)

__all__ = ["InProcess", "Watched", "Hang", "runner_for", "run_parallel"]

_PRELOAD = ("torch", "hypothesis", "bncheck.engine.runner", "bncheck.infra.watchdog")
#: The label of the worker's own start, when it imports the target by name (user code).
_SETUP = "importing the target "


@dataclasses.dataclass(frozen=True)
class Hang:
    """What the watchdog saw when the worker stopped answering (or died)."""

    label: str  # what was running: a drawn case or a preflight step
    seconds: float  # the time limit
    where: str  # "file:line in function" of the innermost user frame, else bncheck's
    stack: str  # the worker's main-thread frames, user code only, innermost last
    examples: int  # examples started before (and including) the one that hung
    died: str = ""  # how the process ended when it died instead of hanging

    def message(self, *, debug: bool = False) -> str:
        if self.died.startswith("the target raised"):
            head = f"{self.died}; the process it ran in ended"
        elif self.died:
            head = f"the target crashed the process it ran in ({self.died})"
        else:
            head = f"the target did not return within {self.seconds:g} s"
        text = head + (f" (at {self.where})" if self.where else "")
        if debug and self.stack:
            text += f"\nStack of the target's code when stopped (innermost last):\n{self.stack}"
        return text


#: A job's answer, or the :class:`Hang` that ended it.
_Answer = tuple[Any, "Hang | None"]
#: A property running in a worker: its index, the property, the exchange, when it started.
_Job = tuple[int, Property, Generator[float, Any, _Answer], float]


def _hang_from(worker: Worker, label: str, seconds: float, examples: int,
               died: str = "") -> Hang:
    """Where the worker is stuck (its stack, before it is killed)."""
    where, stack = ("", "") if died else stuck_at(worker.where(), is_user_file)
    return Hang(label, seconds, where, stack, examples, died)


class InProcess:
    """The preflight and the properties in this process, without a time limit."""

    def __init__(self, target: Target, requested: tuple[Any, ...], profile: str,
                 examples: int | None, shrink: bool) -> None:
        self.target, self.requested = target, requested
        self.config = _settings(profile, examples, shrink)
        self.ctx: Context | None = None

    def preflight(self) -> tuple[Target, list[Finding], Facts]:
        t, findings, facts = preflight(self.target)
        self.ctx = Context(t, self.requested, facts)
        return t, findings, facts

    def run(self, prop: Property, seed: int) -> PropertyResult:
        assert self.ctx is not None, "preflight() first"
        return run_property(prop, self.ctx, seed=seed, config=self.config)

    def close(self) -> None:
        return None


class Watched:
    """The preflight and the properties in a worker process, ``timeout`` seconds per example.

    Args:
        target: what to verify.
        requested: the dtypes requested.
        profile, examples, shrink: the Hypothesis settings (as
        :func:`bncheck.engine.runner.verify`).
        timeout: seconds one example (or preflight step) may take.
        start_method: how to start the worker (``fork``, ``forkserver``, ``spawn``).
    """

    def __init__(self, target: Target, requested: tuple[Any, ...], profile: str,
                 examples: int | None, shrink: bool, *, timeout: float,
                 start_method: str) -> None:
        self.target, self.requested, self.timeout = target, requested, timeout
        self.settings = (profile, examples, shrink)
        self.start_method = start_method
        self.facts: Facts | None = None
        self.worker: Worker | None = None
        self.restarts = 0
        #: bncheck's own work between examples (drawing, shrinking) has no time limit of its
        #: own; this generous bound only turns a bug of bncheck's into an error, not a hang.
        self.idle_limit = 10 * timeout + 120
        self.busy = False  # a job is running (stopping it cannot wait for an answer)

    # -- the worker ----------------------------------------------------------------------------
    def _start(self) -> Worker:
        if self.worker is None:
            fork = self.start_method == "fork"
            spec = None if fork else reimport_spec(self.target.obj)
            shipped = self.target if fork else dataclasses.replace(
                self.target, obj=cast(Any, None))
            self.worker = Worker(_serve, (shipped, spec, self.requested, self.settings,
                                          self.facts), start_method=self.start_method,
                                 name="bncheck-target", preload=_PRELOAD)
            self.worker.start()
        return self.worker

    def _discard(self) -> None:
        if self.worker is not None:
            self.worker.stop(hung=True)
            self.worker = None
            self.restarts += 1

    def _exchange(self, message: tuple[Any, ...]) -> Generator[float, Any, _Answer]:
        """One job as a conversation: sends ``message``, then yields how many seconds it may
        wait for the next message and is sent what :meth:`Worker.read` gave (or
        :data:`TIMED_OUT`; :class:`WorkerDied` is thrown in). Returns the job's answer, or the
        :class:`Hang` that ended it (the worker is then gone). :meth:`_ask` drives one;
        :func:`run_parallel` drives several at once."""
        worker = self._start()
        label: str | None = None  # what the target's code is running, else bncheck's own
        count = 0
        self.busy = True
        try:
            worker.send(message)
            while True:
                got = yield self.timeout if label is not None else self.idle_limit
                if got is TIMED_OUT:
                    if label is None:
                        raise RuntimeError(f"bncheck's worker did not answer within "
                                           f"{self.idle_limit:g} s outside the target's code")
                    hang = _hang_from(worker, label, self.timeout, count)
                    self._discard()
                    return None, hang
                kind, payload = got
                if kind == "beat":
                    label, count = payload, count + (not payload.startswith(_SETUP))
                    continue
                if kind == "idle":
                    label = None
                    continue
                if kind == "raised":
                    self.busy = False
                    raise payload
                if kind == "crash":
                    raise RuntimeError(f"bncheck's worker failed:\n{payload}")
                if kind == "fatal":  # the target raised SystemExit or KeyboardInterrupt
                    raise WorkerDied(payload)
                self.busy = False
                return payload, None
        except WorkerDied as e:
            hang = _hang_from(worker, label or "bncheck's own code", self.timeout, count,
                              died=str(e))
            self._discard()
            return None, hang

    def _ask(self, message: tuple[Any, ...]) -> _Answer:
        """Send a job and wait for its answer, or the :class:`Hang` that ended it."""
        exchange = self._exchange(message)
        try:
            wait = next(exchange)
            while True:
                assert self.worker is not None
                try:
                    got = self.worker.receive(wait)
                except WorkerDied as e:
                    wait = exchange.throw(e)
                else:
                    wait = exchange.send(got)
        except StopIteration as done:
            return cast(_Answer, done.value)

    # -- the steps -------------------------------------------------------------------------------
    def preflight(self) -> tuple[Target, list[Finding], Facts]:
        """The preflight in the worker; a step that hangs is replayed as :class:`TargetHung`.

        Raises:
            TargetError: as :func:`bncheck.engine.preflight.preflight`.
            TargetHung: the first training forward did not return.
        """
        hangs: dict[str, str] = {}
        while True:
            answer, hang = self._ask(("preflight", hangs))
            if hang is None:
                break
            if hang.label in hangs:  # cannot happen: the step is replayed, not run
                raise TargetHung(hang.message(debug=self.target.debug))
            hangs[hang.label] = hang.message(debug=self.target.debug)
        shipped, findings, facts = answer
        self.target = dataclasses.replace(shipped, obj=self.target.obj)
        self.facts = facts
        return self.target, findings, facts

    def run(self, prop: Property, seed: int) -> PropertyResult:
        """One property in the worker; a hang or a crash fails it with the case and where."""
        start = time.perf_counter()
        return self._result(prop, self._ask(("property", prop.name, seed)), start)

    def sibling(self) -> Watched:
        """A runner like this one, after :meth:`preflight`, with a worker of its own."""
        assert self.facts is not None, "preflight() first"
        twin = Watched(self.target, self.requested, *self.settings, timeout=self.timeout,
                       start_method=self.start_method)
        twin.facts = self.facts
        return twin

    def _result(self, prop: Property, reply: _Answer, start: float) -> PropertyResult:
        answer, hang = reply
        if hang is None:
            return cast(PropertyResult, answer)
        what = ("bncheck stopped it and went on with the other properties in a fresh process"
                + ("" if hang.died else "; if it is only slow, raise the timeout"))
        return PropertyResult(prop.name, Status.FAILED,
                              f"{hang.message(debug=self.target.debug)}\n{what}",
                              hang.label, hang.examples, time.perf_counter() - start)

    def close(self) -> None:
        """Stop the worker (at once when it is still running a job: after Ctrl-C)."""
        if self.worker is not None:
            self.worker.stop(hung=self.busy)
            self.worker = None


def runner_for(target: Target, requested: tuple[Any, ...], profile: str,
               examples: int | None, shrink: bool, timeout: float | None,
               start_method: str | None = None) -> InProcess | Watched:
    """A :class:`Watched` runner, or :class:`InProcess` when ``timeout`` is None or no worker
    can reach the target on this platform."""
    method = start_method or (start_method_for(target.obj) if timeout is not None else None)
    if timeout is None or method is None:
        return InProcess(target, requested, profile, examples, shrink)
    return Watched(target, requested, profile, examples, shrink, timeout=timeout,
                   start_method=method)


def run_parallel(runner: Watched, props: Sequence[Property], seed: int, jobs: int,
                 on_result: Callable[[int, PropertyResult], None]) -> None:
    """Run ``props`` on ``jobs`` workers at once (``runner``'s and siblings of it, after its
    preflight), each property whole in one worker, under the same time limit per example;
    ``on_result(index, result)`` as each finishes, in the order they finish.

    Everything happens on this thread: one :func:`multiprocessing.connection.wait` over every
    worker's pipe and process, so a worker that needs replacing after a hang is forked from a
    process that runs no other thread.
    """
    runners = [runner] + [runner.sibling() for _ in range(min(jobs, len(props)) - 1)]
    todo = collections.deque(enumerate(props))
    first: Any = object()  # what starts an exchange (it is sent nothing yet)
    #: runner -> its job (index, property, exchange, start time) and when its wait ends
    active: dict[Watched, tuple[_Job, float]] = {}

    def advance(r: Watched, job: _Job, got: Any = first, died: WorkerDied | None = None
                ) -> None:
        i, prop, exchange, start = job
        try:
            wait = (exchange.throw(died) if died is not None
                    else next(exchange) if got is first else exchange.send(got))
        except StopIteration as done:
            on_result(i, r._result(prop, cast(_Answer, done.value), start))
            if todo:
                begin(r)
            return
        active[r] = (job, time.monotonic() + wait)

    def begin(r: Watched) -> None:
        i, prop = todo.popleft()
        advance(r, (i, prop, r._exchange(("property", prop.name, seed)), time.perf_counter()))

    try:
        for r in runners:
            begin(r)
        while active:
            owner: dict[Any, Watched] = {}
            for r in active:
                assert r.worker is not None and r.worker.conn is not None
                owner[r.worker.conn] = owner[r.worker.proc.sentinel] = r
            soonest = min(deadline for _, deadline in active.values())
            ready = multiprocessing.connection.wait(
                list(owner), timeout=max(0.0, soonest - time.monotonic()))
            for r in dict.fromkeys(owner[obj] for obj in ready):
                job, _ = active.pop(r)
                assert r.worker is not None
                try:
                    got = r.worker.read()
                except WorkerDied as e:
                    advance(r, job, died=e)
                else:
                    advance(r, job, got)
            now = time.monotonic()
            for r, (job, deadline) in list(active.items()):
                if deadline <= now:
                    del active[r]
                    advance(r, job, TIMED_OUT)
    finally:
        for r in runners[1:]:
            r.close()


# -- the worker's side -----------------------------------------------------------------------
def _beat(send: Callable[[str, Any], None], prop: Property) -> Callable[[Any], None]:
    """A property's heartbeat in the worker: the case about to run, as reports show it."""

    def beat(case: Any) -> None:
        if case is None:
            send("idle", None)
        else:
            send("beat", prop.describe(case))

    return beat


def _guard(send: Callable[[str, Any], None], hangs: dict[str, str]) -> Callable[[str], None]:
    """Preflight's guard in the worker: a heartbeat naming the step; a step that hung in an
    earlier worker raises :class:`TargetHung` instead of running again."""

    def guard(step: str) -> None:
        send("beat", step)
        if step in hangs:
            raise TargetHung(hangs[step])

    return guard


def _serve(conn: Connection, target: Target, spec: str | None, requested: tuple[Any, ...],
           settings: tuple[str, int | None, bool], facts: Facts | None) -> None:
    """Answer ``("preflight", hangs)`` and ``("property", name, seed)`` until ``"stop"``."""
    import pickle

    from bncheck.engine.target import load_target

    def send(kind: str, payload: Any) -> None:
        conn.send_bytes(pickle.dumps((kind, payload)))

    failed: BNCheckError | None = None
    try:
        if spec is not None:  # the user's module runs: time limited like the target's calls
            send("beat", f"{_SETUP}{spec}")
            target = dataclasses.replace(target, obj=load_target(spec))
            send("idle", None)
    except BNCheckError as e:  # reported as the answer to the first job
        failed = e
    config = _settings(*settings)
    ctx = None if facts is None else Context(target, requested, facts)
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message == "stop":
            return
        try:
            if failed is not None:
                raise failed
            if message[0] == "preflight":
                target, findings, facts = preflight(target, guard=_guard(send, message[1]))
                ctx = Context(target, requested, facts)
                send("done", (dataclasses.replace(target, obj=cast(Any, None)), findings,
                              facts))
            else:
                _, name, seed = message
                prop = get(name)
                assert ctx is not None, "preflight first"
                result = run_property(prop, ctx, seed=seed, config=config,
                                      on_example=_beat(send, prop))
                send("done", result)
        except (KeyboardInterrupt, SystemExit) as e:  # raised by the target: this worker ends
            from bncheck.engine.adapter import describe_exception

            send("fatal", f"the target raised {describe_exception(e)}")
            return
        except BNCheckError as e:  # TargetError, TargetHung, ...: raised again in the parent
            try:
                send("raised", e)
            except (pickle.PicklingError, TypeError, AttributeError):
                send("crash", traceback.format_exc())
        except Exception:  # noqa: BLE001 - a bug in bncheck: the parent reports it
            send("crash", traceback.format_exc())
