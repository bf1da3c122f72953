"""The watchdog: a target that never returns (a Python loop, or a C call holding the GIL), kills
its process or exits fails the property it was running, with the case and where it was, and the
run goes on in a fresh worker; no process is left behind. Timeouts are 1 s to keep this fast.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.properties import get
from bncheck.engine.runner import Status, build_target, verify
from bncheck.engine.target import load_target
from bncheck.infra.watchdog import runner_for
from bncheck.infra.workers import main_thread_frames, reimport_spec, start_method_for

HANGING = Path(__file__).parents[1] / "data" / "hanging_bn.py"
LINUX = sys.platform.startswith("linux")


def _line(text: str, nth: int = 1) -> int:
    """The line number of the ``nth`` line of hanging_bn.py that contains ``text``."""
    found = [i for i, line in enumerate(HANGING.read_text().splitlines(), 1) if text in line]
    return found[nth - 1]


def children() -> set[int]:
    """Live (not zombie) descendants of this process, without multiprocessing's own helpers
    (a fork server and its resource tracker live as long as this process; their workers count)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [os.getpid()]
    while todo:
        for pid in parents.get(todo.pop(), []):
            todo.append(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"forkserver" not in cmd and b"resource_tracker" not in cmd:
                found.add(pid)
    return found


@pytest.mark.skipif(not LINUX, reason="reads /proc; the C block uses glibc's pthread mutex")
@pytest.mark.parametrize("name,wheres", [  # the loop is stopped on either of its lines
    ("LoopsOnFloat16", [f"hanging_bn.py:{_line(t)} in forward" for t in ("while True", "pass")]),
    ("BlocksInCOnFloat16", [f"hanging_bn.py:{_line('pthread_mutex_lock', 2)} in _deadlock"]),
])
def test_a_target_that_never_returns_fails_its_property_and_the_run_goes_on(name, wheres):
    # How long this takes is measured in benchmarks/test_bench.py (test_seconds_to_stop_a_hung_
    # target), off the default suite.
    before = children()
    report = verify(load_target(f"{HANGING}:{name}"), examples=3, timeout=1.0,
                    properties=["reduced_precision", "train_forward"])
    hung, after = report.results
    assert (hung.name, hung.status) == ("reduced_precision", Status.FAILED)
    assert hung.message.startswith("the target did not return within 1 s (at ")
    assert any(where in hung.message.splitlines()[0] for where in wheres), hung.message
    assert "went on with the other properties in a fresh process" in hung.message
    assert "dtype=float16" in hung.counterexample and hung.examples >= 1
    assert after.status is Status.PASSED  # the next property ran, in a fresh worker
    assert children() <= before  # the hung worker was killed, the other one stopped


def test_a_forward_that_never_returns_ends_the_run_at_preflight():
    class Forever(torch.nn.BatchNorm1d):  # defined here: the forked worker needs no import
        def forward(self, x):
            while True:
                pass

    report = verify(Forever, timeout=1.0, properties=["train_forward", "eval_forward"])
    first, *rest = report.results
    assert (first.name, first.status) == ("preflight", Status.FAILED)
    assert first.message.startswith("the target did not return within 1 s (at ")
    assert "test_watchdog.py" in first.message and "in forward" in first.message
    assert [r.status for r in rest] == [Status.SKIPPED, Status.SKIPPED]
    assert "did not return (preflight)" in rest[0].message and not report.ok


def test_a_constructor_flag_that_hangs_is_reported_and_the_rest_verified():
    class HangsWithoutAffine(torch.nn.BatchNorm1d):
        def forward(self, x):
            while not self.affine:
                pass
            return super().forward(x)

    report = verify(HangsWithoutAffine, timeout=1.0, properties=["train_forward"], examples=3)
    constructor, prop = report.results
    assert constructor.name == "constructor" and constructor.status is Status.FAILED
    assert "HangsWithoutAffine(3, affine=False) and a training forward: the target did not " \
           "return within 1 s" in constructor.message
    assert "(--fixed affine=true)" in constructor.message
    assert prop.status is Status.PASSED  # verified with affine fixed to True


@pytest.mark.parametrize("body,expected", [
    ("os.kill(os.getpid(), signal.SIGKILL)",
     "the target crashed the process it ran in (the process was killed by SIGKILL)"),
    ("sys.exit(3)", "the target raised SystemExit: 3 (at "),
])
def test_a_target_that_ends_its_process_fails_its_property(body, expected):
    namespace = {"torch": torch, "os": os, "signal": signal, "sys": sys}
    exec("class Ends(torch.nn.BatchNorm1d):\n"
         "    def forward(self, x):\n"
         "        if x.dtype == torch.float16:\n"
         f"            {body}\n"
         "        return super().forward(x)\n", namespace)
    report = verify(namespace["Ends"], examples=3, timeout=30.0,
                    properties=["reduced_precision", "train_forward"])
    ended, after = report.results
    assert ended.status is Status.FAILED and ended.message.startswith(expected)
    assert after.status is Status.PASSED


def test_cli_timeout_fails_the_property_with_a_replay_that_keeps_the_timeout():
    r = CliRunner().invoke(main, ["verify", f"{HANGING}:LoopsOnFloat16", "--timeout", "1",
                                  "--examples", "2", "--property", "reduced_precision"])
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert "property reduced_precision failed" in out and "did not return within 1 s" in out
    assert "--timeout 1 --property reduced_precision --seed 0" in out
    assert "Traceback" not in r.output


def test_a_worker_from_a_fresh_interpreter_imports_the_target_by_name():
    # What runs when this process has other threads (fork would be unsafe): a fork server.
    t = build_target(load_target(f"{HANGING}:LoopsOnFloat16"))
    runner = runner_for(t, (torch.float16,), "ci", 2, False, 1.0, start_method="forkserver")
    try:
        runner.preflight()
        result = runner.run(get("reduced_precision"), 0)
    finally:
        runner.close()
    assert result.status is Status.FAILED
    assert result.message.startswith("the target did not return within 1 s (at ")


def test_the_start_method_follows_the_threads_and_what_can_be_imported():
    class Local(torch.nn.BatchNorm1d):
        pass

    assert reimport_spec(torch.nn.BatchNorm1d) == "torch.nn.modules.batchnorm:BatchNorm1d"
    assert reimport_spec(Local) is None
    assert reimport_spec(type("Made", (torch.nn.BatchNorm1d,), {})) is None  # not in its module
    assert reimport_spec(load_target(f"{HANGING}:LoopsOnFloat16")) == f"{HANGING}:LoopsOnFloat16"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:  # another thread: a fresh interpreter when it can import the target, else fork
        assert start_method_for(torch.nn.BatchNorm1d) == "forkserver"
        assert start_method_for(Local) == "fork"
    finally:
        stop.set()
        other.join()


def test_timeout_none_runs_in_process_and_bad_timeouts_are_rejected():
    assert verify(torch.nn.BatchNorm1d, timeout=None, properties=["eval_forward"],
                  examples=2).ok
    for bad in (0, -1.0, float("nan"), float("inf"), "10"):
        with pytest.raises((ValueError, TypeError), match="timeout"):
            verify(torch.nn.BatchNorm1d, timeout=bad, properties=["eval_forward"])


def test_the_main_thread_is_found_in_a_stack_dump():
    dump = ('Thread 0x00007f0000000001 (most recent call first):\n'
            '  File "/x/_workers.py", line 80 in _watch_parent\n\n'
            'Current thread 0x00007f0000000002 (most recent call first):\n'
            '  File "/u/bn.py", line 12 in forward\n'
            '  File "/x/_workers.py", line 120 in _child\n')
    assert main_thread_frames(dump) == [("/u/bn.py", 12, "forward"),
                                        ("/x/_workers.py", 120, "_child")]


# -- jobs: properties side by side, one worker each ------------------------------------------
SEED_FIXED = Path(__file__).parents[1] / "data" / "seed_bn_fixed.py"


def _outcome(report):
    return [(r.name, r.status, r.message, r.counterexample, r.examples) for r in report.results]


def test_jobs_give_the_same_report_as_one_worker():
    # The d2l seed with its typo fixed: several properties fail, each with a shrunk case.
    seed_bn = load_target(f"{SEED_FIXED}:BatchNorm")
    chosen = ["train_forward", "eval_forward", "running_stats_update", "grad_mode_independence",
              "stats_are_buffers", "initial_state"]
    one = verify(seed_bn, examples=5, jobs=1, properties=chosen, shrink=False)
    two = verify(seed_bn, examples=5, jobs=3, properties=chosen, shrink=False)
    assert [r.name for r in two.results] == [r.name for r in one.results]  # catalogue order
    assert _outcome(two) == _outcome(one)
    assert {Status.PASSED, Status.FAILED} <= {r.status for r in one.results}


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_hang_beside_other_properties_fails_only_its_own():
    before = children()
    seen: list[str] = []
    report = verify(load_target(f"{HANGING}:LoopsOnFloat16"), examples=3, timeout=1.0, jobs=2,
                    properties=["reduced_precision", "train_forward", "eval_forward",
                                "invariances"], on_result=lambda r: seen.append(r.name))
    hung, *rest = report.results
    assert seen == ["reduced_precision", "train_forward", "eval_forward", "invariances"]
    assert hung.status is Status.FAILED
    assert hung.message.startswith("the target did not return within 1 s (at ")
    assert [r.status for r in rest] == [Status.PASSED] * 3  # one in the replaced worker
    assert children() <= before


def test_bad_jobs_are_rejected_naming_the_argument():
    for bad, match in ((0, "jobs >= 1, received jobs=0"), ("2", "Expected jobs to be int"),
                       (True, "jobs=True must be a number")):
        with pytest.raises((ValueError, TypeError), match=match):
            verify(torch.nn.BatchNorm1d, jobs=bad, properties=["eval_forward"])
    with pytest.raises(ValueError, match="jobs=2 runs properties in worker processes, but "
                                         "timeout=None"):
        verify(torch.nn.BatchNorm1d, jobs=2, timeout=None)


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "Expected --jobs to be a whole number >= 1 or 'auto', received "
                      "--jobs='0'"),
    (["--jobs", "many"], "received --jobs='many'"),
    (["--jobs", "2", "--world-size", "2"], "with --world-size the ranks are the processes"),
])
def test_cli_bad_jobs_exit_2(args, message):
    r = CliRunner().invoke(main, ["verify", *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()) and "Traceback" not in r.output


def test_cli_jobs_from_the_environment_and_auto():
    args = ["verify", "--examples", "2", "--property", "eval_forward", "--property",
            "train_forward"]
    for env in ({"BNCHECK_JOBS": "2"}, {"BNCHECK_JOBS": "auto"}):
        r = CliRunner(env=env).invoke(main, args)
        assert r.exit_code == 0, r.output
        assert "2 passed, 0 failed" in r.output
