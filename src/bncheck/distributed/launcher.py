"""Start N ranks on this machine once, feed them many cases, and tear them down.

>>> from bncheck.distributed.launcher import WorkerPool
>>> with WorkerPool(2) as pool:          # doctest: +SKIP
...     results = pool.run([task0, task1])

The parent holds the rendezvous store (a ``TCPStore`` on 127.0.0.1, port chosen by the OS, so
no free-port race); the ranks join it with the gloo backend (NCCL for CUDA with a GPU per rank)
and create the process groups the properties need, once. Each case is one message per rank
over a pipe and one answer back. A watchdog bounds every case: a rank that dies, hangs (a
collective waiting for a peer that never comes) or whose target raises fails the case with the
rank and the reason (a hung rank with where it was stuck), and the pool is restarted before the
next case. Each rank is a :class:`~bncheck.infra.workers.Worker` (bncheck's one process manager):
ranks exit when the parent goes away, and :meth:`WorkerPool.close` asks, terminates, then kills.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from types import TracebackType
from typing import Any

import torch.distributed as dist

from bncheck.errors import InvalidArgument, RankFailure
from bncheck.infra.validation import RANK_TIMEOUT, check_finite_float, check_positive_int
from bncheck.infra.workers import Worker, WorkerDied, stop_workers, stuck_at

__all__ = ["WorkerPool", "RankFailure", "partitions", "DEFAULT_TIMEOUT"]

#: Seconds a rank may take for one case (tiny tensors take milliseconds; a hang takes forever).
DEFAULT_TIMEOUT = RANK_TIMEOUT  # decided in bncheck.infra.validation
#: Seconds the ranks may take to start (import torch, join the group, create the subgroups).
START_TIMEOUT = 120.0


def partitions(world_size: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Ways to split ranks ``0..world_size-1`` into independent process groups: contiguous
    halves and even/odd ranks (the same for 2 ranks: each rank alone)."""
    ranks = tuple(range(world_size))
    half = (world_size + 1) // 2
    found = []
    for pair in ((ranks[:half], ranks[half:]), (ranks[0::2], ranks[1::2])):
        blocks = tuple(b for b in pair if b)
        if blocks not in found:
            found.append(blocks)
    return tuple(found)


def _groups(world_size: int) -> tuple[tuple[int, ...], ...]:
    """Every process group a rank may be asked to use, in creation order."""
    made: list[tuple[int, ...]] = [tuple(range(k)) for k in range(2, world_size)]
    for blocks in partitions(world_size):
        made += [b for b in blocks if b not in made and len(b) < world_size]
    return tuple(made)


class WorkerPool:
    """``world_size`` worker processes joined in one process group, reused for many cases.

    Args:
        world_size: the number of ranks (processes) to start, at least 2.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL when there is a GPU per rank, else gloo
            with CUDA tensors).
        timeout: seconds a case may take on any rank before it counts as hung.
        start_method: ``multiprocessing`` start method; ``None`` means ``"forkserver"`` with
            torch preloaded where available (the ranks then do not each import torch), else
            ``"spawn"``.

    Raises:
        InvalidArgument: bad arguments.
        RankFailure: (from :meth:`start`, :meth:`run`) a rank failed to start, died or hung.
    """

    def __init__(self, world_size: int, *, device: str = "cpu",
                 timeout: float = DEFAULT_TIMEOUT, start_method: str | None = None) -> None:
        check_positive_int(world_size, "world_size")
        if world_size < 2:
            raise InvalidArgument(f"Expected world_size >= 2 (ranks to synchronise), received "
                                  f"world_size={world_size}")
        check_finite_float(timeout, "timeout", min_value=0.0, exclude_min=True)
        if device not in ("cpu", "cuda"):
            raise InvalidArgument(f"Expected device to be 'cpu' or 'cuda', received "
                                  f"device={device!r}")
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise InvalidArgument(f"Expected start_method to be one of {methods}, received "
                                  f"start_method={start_method!r}")
        self.world_size, self.device, self.timeout = world_size, device, float(timeout)
        self.start_method = start_method or ("forkserver" if "forkserver" in methods
                                             else "spawn")
        self.partitions = partitions(world_size)
        self.backend = ""
        self.starts = 0
        self._workers: list[Worker] = []
        self._store: Any = None

    # -- life cycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._workers)

    @property
    def pids(self) -> list[int]:
        """The ranks' process ids (empty when stopped)."""
        return [int(w.pid) for w in self._workers if w.pid is not None]

    def start(self) -> None:
        """Start the ranks and wait until every one has joined the group (idempotent)."""
        if self.running:
            return
        from bncheck.distributed._worker import worker_main

        self._store = dist.TCPStore("127.0.0.1", 0, self.world_size + 1, is_master=True,
                                    wait_for_workers=False)
        groups = _groups(self.world_size)
        self.starts += 1
        for rank in range(self.world_size):
            worker = Worker(worker_main, (rank, self.world_size, self._store.port, self.device,
                                          groups, max(30.0, 2 * self.timeout)),
                            start_method=self.start_method, name=f"bncheck-rank-{rank}")
            worker.start()
            self._workers.append(worker)
        answers = self._collect(START_TIMEOUT, "start")
        self.backend = str(answers[0])

    def close(self) -> None:
        """Stop every rank: ask, then terminate, then kill; leaves no process behind."""
        stop_workers(self._workers)
        self._workers, self._store = [], None

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- cases -----------------------------------------------------------------------------
    def run(self, tasks: Sequence[Any]) -> list[Any]:
        """Send ``tasks[r]`` to rank ``r`` (``None``: the rank sits out) and return the answers.

        Raises:
            RankFailure: a rank died, did not answer within ``timeout`` seconds, or its target
                raised (``RankResult.error``); the pool is stopped and restarts on the next call.
        """
        if len(tasks) != self.world_size:
            raise InvalidArgument(f"Expected one task per rank ({self.world_size}), received "
                                  f"{len(tasks)}")
        self.start()
        for worker, task in zip(self._workers, tasks, strict=True):
            with contextlib.suppress(WorkerDied):  # reported by _collect with how it ended
                worker.send(task)
        return self._collect(self.timeout, "case")

    def _collect(self, timeout: float, what: str) -> list[Any]:
        """One answer per rank within ``timeout`` seconds, or :class:`RankFailure` (the ranks
        that died first, then those whose target raised, then those that hung)."""
        from bncheck.engine.adapter import is_user_file

        answers: dict[int, Any] = {}
        failures: dict[int, str] = {}
        pending = dict(enumerate(self._workers))
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            handles: dict[Any, int] = {w.conn: r for r, w in pending.items()}
            handles |= {w.proc.sentinel: r for r, w in pending.items()}
            for obj in wait(list(handles), timeout=left):
                rank = handles[obj]
                if rank not in pending:
                    continue  # answered through the other handle already
                try:
                    status, payload = pending.pop(rank).read()
                except WorkerDied as e:
                    failures[rank] = f"{e} during the {what}"
                    continue
                if status == "crash":
                    failures[rank] = f"bncheck's worker failed:\n{payload}"
                elif getattr(payload, "error", None) is not None:
                    failures[rank] = f"the target raised {payload.error}"
                else:
                    answers[rank] = payload
        deaths = {r: why for r, why in failures.items() if why.startswith("the process")}
        failures = dict(sorted(deaths.items())) | dict(sorted(failures.items()))
        for rank, worker in sorted(pending.items()):
            done = sorted(answers)
            where, _ = stuck_at(worker.where(), is_user_file)
            failures[rank] = (f"no answer within {timeout:g} s"
                              + (f", stuck at {where}" if where else "")
                              + " (hung: a collective waiting for a peer that never joins it?"
                              + (f" ranks {done} had finished)" if done else ")"))
        if failures:
            self.close()  # a collective may be half done: start afresh
            raise RankFailure(failures)
        return [answers[r] for r in range(self.world_size)]
