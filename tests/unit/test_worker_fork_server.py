"""A forked worker starts ``forkserver`` workers of its own though its parent runs a fork server.

``multiprocessing`` keeps the fork server's pid in a module-level object that ``fork`` copies;
a watched command (``bncheck verify`` under ``runs_watched``) is such a forked worker and starts
its property workers with ``forkserver`` when it is not the only thread. Without
``bncheck.infra.workers._forget_parents_fork_server`` that start fails with
``ChildProcessError`` (ECHILD).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection

import pytest

from bncheck.infra.workers import Worker

pytestmark = pytest.mark.skipif(
    not {"fork", "forkserver"} <= set(multiprocessing.get_all_start_methods()),
    reason="needs fork and forkserver")


def _pid(conn: Connection) -> None:
    conn.send_bytes(__import__("pickle").dumps(os.getpid()))


def _starts_a_forkserver_worker(conn: Connection) -> None:
    """In the forked worker: start a forkserver worker and report what happened."""
    import pickle

    multiprocessing.current_process().daemon = False  # as the watched command does
    inner = Worker(_pid, start_method="forkserver", preload=("bncheck.infra.workers",))
    try:
        inner.start()
        got = ("ok", inner.receive(60.0))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        got = ("error", f"{type(e).__name__}: {e}")
    finally:
        inner.stop()
    conn.send_bytes(pickle.dumps(got))


def test_a_forked_worker_starts_forkserver_workers_after_the_parent_did() -> None:
    first = Worker(_pid, start_method="forkserver", preload=("bncheck.infra.workers",))
    first.start()  # the fork server now runs, a child of this process
    try:
        assert isinstance(first.receive(60.0), int)
        outer = Worker(_starts_a_forkserver_worker, start_method="fork")
        outer.start()
        try:
            kind, value = outer.receive(120.0)
        finally:
            outer.stop()
    finally:
        first.stop()
    assert kind == "ok", value
    assert isinstance(value, int) and value != os.getpid()
