"""Distributed verification on real gloo ranks on 127.0.0.1: one pool of 3 ranks for the module.

Every test here talks to the same running processes (start-up is paid once, on one xdist
worker); the two CLI runs start their own 2 ranks as a user's run does (one as a real
subprocess, one through click's runner).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import bncheck
from bncheck.distributed._worker import RankTask, Step
from bncheck.distributed.launcher import RankFailure, WorkerPool
from bncheck.distributed.mutants import MUTANTS
from bncheck.distributed.verify import target_spec, verify_distributed
from bncheck.engine.declaration import Declaration

DATA = Path(__file__).parents[1] / "data"
BAD = DATA / "distributed_bad.py"
SYNC = "bncheck:SyncBatchNorm"
CLI = Callable[..., Any]  # conftest's cli / cli_subprocess
#: The tests that share the module's pool run on one xdist worker, which starts it once.
POOL = pytest.mark.xdist_group("distributed_pool")


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(3, timeout=4.0) as p:
        yield p


def _task(x, grad, weight, bias, *, group=None, steps=1, momentum=0.1):
    second = (x.to(torch.float64) * 1.5 + 1).to(x.dtype)
    return RankTask(SYNC, Declaration(), x.shape[1], x.dim(), x.dtype, 1e-5, momentum, True,
                    True, group, weight, bias, None,
                    (Step(True, x, grad), Step(True, second, None))[:steps])


@POOL
@pytest.mark.parametrize("sizes,dtype", [
    ((2, 0, 5), torch.float64),   # uneven, one rank empty
    ((1, 1, 1), torch.float64),   # one row each: only the global count is > 1
    ((0, 6, 1), torch.float32),
])
def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(pool, sizes, dtype):
    gen = torch.Generator().manual_seed(sum(sizes))
    x = (torch.randn(sum(sizes), 3, 2, 2, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    w, b = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 0.0, -0.3])
    xs, gs = x.split(list(sizes)), g.split(list(sizes))
    results = pool.run([_task(xr, gr, w, b, steps=2, momentum=None)
                        for xr, gr in zip(xs, gs, strict=True)])

    ref = bncheck.BatchNorm(3, momentum=None).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    xg = x.clone().requires_grad_(True)
    y = ref(xg)
    y.backward(g)
    stats1 = (ref.running_mean.clone(), ref.running_var.clone())
    ref((x.to(torch.float64) * 1.5 + 1).to(dtype))  # the second step (cumulative average)

    # float64: the combination of per-rank statistics and the single pass differ by rounding
    # only; float32: assert_close's defaults (reduction order differs).
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    first = [r.steps[0] for r in results]
    torch.testing.assert_close(torch.cat([s.y for s in first]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([s.dx for s in first]), xg.grad, **tol)
    torch.testing.assert_close(sum(s.dweight for s in first), ref.weight.grad, **tol)
    torch.testing.assert_close(sum(s.dbias for s in first), ref.bias.grad, **tol)
    for r, res in enumerate(results):
        assert res.steps[0].count == 1 and res.steps[1].count == 2, r
        # The ranks report statistics as float64 copies of their buffers (exact).
        for step, (mean, var) in ((0, stats1), (1, (ref.running_mean, ref.running_var))):
            got_mean, got_var = res.steps[step].stats
            torch.testing.assert_close(got_mean.to(dtype), mean, **tol)
            torch.testing.assert_close(got_var.to(dtype), var, **tol)


@POOL
def test_process_group_subset_and_world_size_one(pool):
    x = torch.randn(5, 2, dtype=torch.float64)
    w, b = torch.ones(2), torch.zeros(2)
    res = pool.run([_task(x[:2], None, w, b, group=(0, 1)), _task(x[2:], None, w, b,
                                                                   group=(0, 1)), None])
    assert res[2] is None
    expected = bncheck.BatchNorm(2).double()(x)
    torch.testing.assert_close(torch.cat([res[0].steps[0].y, res[1].steps[0].y]), expected)
    # Each rank alone in its group: a plain BatchNorm of its own rows.
    res = pool.run([_task(x[:2], None, w, b, group=(0, 2)), _task(x[2:], None, w, b,
                                                                   group=(1,)),
                    _task(x[:3], None, w, b, group=(0, 2))])
    torch.testing.assert_close(res[1].steps[0].y, bncheck.BatchNorm(2).double()(x[2:]))


@POOL
def test_verify_passes_on_sync_batchnorm(pool):
    report = verify_distributed(SYNC, world_size=3, pool=pool, examples=4)
    assert report.ok, report.render()
    assert [r.status for r in report.results] == ["passed"] * 8
    assert all(r.examples == 4 for r in report.results)


@POOL
@pytest.mark.parametrize("name", list(MUTANTS))
def test_each_mutant_is_killed_by_its_property(pool, name):
    m = MUTANTS[name]
    report = verify_distributed(target_spec(m.factory), world_size=3, pool=pool,
                                properties=[m.killer], shrink=False)
    (result,) = report.results
    assert result.status == "failed", f"{name} survived {m.killer}"
    assert "rank" in result.message and "split per rank=" in result.counterexample


@POOL
def test_a_rank_that_dies_is_reported_with_its_exit_code_and_the_pool_restarts(pool):
    x, w, b = torch.randn(6, 2), torch.ones(2), torch.zeros(2)
    tasks = [dataclasses.replace(_task(xr, None, w, b), target=f"{BAD}:DiesOnRank1")
             for xr in x.split([2, 2, 2])]
    with pytest.raises(RankFailure) as info:
        pool.run(tasks)
    assert info.value.failures[1] == "the process exited with code 7 during the case"
    # The others wait for rank 1 in vain, or gloo notices the closed connection and raises.
    assert info.value.failures[0].startswith(("no answer within 4 s", "the target raised"))
    assert list(info.value.failures) == [1, 0, 2]  # the cause first
    assert pool.run([None, None, None]) == [None, None, None]  # restarted for the next case


@POOL
def test_a_rank_that_raises_names_the_rank_and_the_waiting_ranks_hang(pool):
    report = verify_distributed(f"{BAD}:RaisesOnRank0", world_size=3, pool=pool,
                                properties=["sync_forward"])
    (r,) = report.results
    assert "rank 0: the target raised RuntimeError in training step 1 forward: rank 0 ran out " \
           "of patience" in r.message
    assert "rank 1: no answer within 4 s, stuck at " in r.message
    assert "distributed_bad.py:" in r.message.split("stuck at ")[1]  # the rank's user frame


@POOL
def test_a_rank_with_the_wrong_output_shape_is_named(pool):
    report = verify_distributed(f"{BAD}:WrongShapeOnRank1", world_size=3, pool=pool,
                                properties=["sync_forward"], shrink=False)
    (r,) = report.results
    assert r.status == "failed"
    assert r.message.startswith("rank 1 training output: output shape")


@POOL
def test_close_leaves_no_process(pool):
    pool.start()
    pids = pool.pids
    pool.close()
    assert not pool.running
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_cli_verify_world_size_passes_on_the_reference(cli_subprocess: CLI) -> None:
    r = cli_subprocess("verify", "--world-size", "2", "--examples", "3", "--property",
                       "sync_forward", "--property", "sync_uneven")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bncheck verify bncheck:SyncBatchNorm" in r.stdout
    assert "2 passed, 0 failed, 0 skipped" in r.stdout


def test_cli_verify_world_size_fails_a_mutant_with_the_split_and_a_replay(cli: CLI) -> None:
    r = cli("verify", "bncheck.distributed.mutants:UnweightedMean", "--world-size", "2",
             "--property", "sync_forward")
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "property sync_forward failed" in out and "split per rank=[" in out
    assert ("Reproduce: bncheck verify bncheck.distributed.mutants:UnweightedMean --world-size 2 "
            "--property sync_forward --seed 0") in out
    assert "Traceback" not in r.stdout + r.stderr
