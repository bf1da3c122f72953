"""One root cause per design, on real gloo ranks on 127.0.0.1: a synchronised BatchNorm that never
communicates under torch.distributed gets one sync_forward finding with the rest its
consequences; NaN statistics on both ranks are named as NaN; a correct synchronised BatchNorm
gets no such finding. (The logic alone: tests/unit/test_distributed_root_cause.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bncheck.distributed._design import NO_EXCHANGE
from bncheck.distributed.launcher import WorkerPool
from bncheck.distributed.verify import verify_distributed

DATA = Path(__file__).parents[1] / "data" / "third_party"
POOL = pytest.mark.xdist_group("distributed_no_exchange_pool")


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(2, timeout=4.0) as p:
        yield p


def test_a_dataparallel_only_sync_bn_is_one_finding_with_consequences(
        cli: Callable[..., Any], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    r = cli("verify", f"{DATA}/dp_sync_bn.py:SynchronizedBatchNorm2d", "--world-size", "2",
            "--examples", "3", "--seed", "0", "--json", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no rank exchanged statistics" in " ".join(r.stdout.split())
    props = {p["name"]: p for p in json.loads(out.read_text())["properties"]}
    failed = [p for p in props.values() if p["status"] == "failed"]
    own = [p["name"] for p in failed if p["consequence_of"] is None]
    assert own == ["sync_forward"], r.stdout
    assert props["sync_forward"]["message"].startswith(
        "the ranks' outputs equal each one's local BatchNorm: no rank exchanged statistics (is "
        "it synchronised only under DataParallel?)")
    assert len(failed) > 1  # the numeric mismatches are still reported, as consequences
    for p in failed:
        if p["name"] != "sync_forward":
            assert p["consequence_of"] == NO_EXCHANGE
            assert p["message"].startswith(f"consequence of: {NO_EXCHANGE}\n"), p["message"]
    assert props["sync_eval"]["status"] == "passed"  # eval is judged as usual


@POOL
def test_nan_statistics_on_both_ranks_are_named_as_nan(pool) -> None:
    report = verify_distributed(f"{DATA}/avg_buffers_sync_bn.py:AveragedBuffersSyncBN",
                                world_size=2, pool=pool, properties=["sync_running_stats"],
                                examples=10, seed=0)
    [result] = report.failed
    assert result.message.startswith("running_var is NaN on rank 0 and rank 1 after training "
                                     "step 1: "), result.message
    assert "differs between rank" not in result.message
    assert result.consequence_of is None


@POOL
def test_a_correct_sync_batchnorm_gets_no_such_finding(pool) -> None:
    report = verify_distributed("bncheck:SyncBatchNorm", world_size=2, pool=pool,
                                properties=["sync_forward", "sync_running_stats"], examples=3,
                                seed=0)
    assert report.ok, report.render()
    assert all(r.consequence_of is None for r in report.results)
