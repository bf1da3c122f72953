"""bncheck.distributed pieces that run in one process: the reference without a process group,
conversion, case strategies, argument errors and the CLI's refusals (no ranks started)."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings

import bncheck
from bncheck.cli import main
from bncheck.distributed.cases import splits, splits_with_empty
from bncheck.distributed.launcher import WorkerPool, partitions
from bncheck.distributed.properties import CATALOGUE
from bncheck.distributed.verify import refuse_on_device, target_spec
from bncheck.errors import InvalidArgument, TargetError


def test_sync_batchnorm_is_batchnorm_without_a_process_group():
    x = torch.randn(5, 3, 4, 4)
    sync, ref = bncheck.SyncBatchNorm(3), bncheck.BatchNorm(3)
    torch.testing.assert_close(sync(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=0, atol=0)
    assert isinstance(sync, bncheck.BatchNorm)
    assert set(sync.state_dict()) == set(torch.nn.SyncBatchNorm(3).state_dict())


def test_sync_batchnorm_bias_false_and_process_group_keyword():
    bn = bncheck.SyncBatchNorm(2, process_group=None, bias=False)
    assert bn.bias is None and bn.weight is not None
    assert bn(torch.randn(4, 2)).shape == (4, 2)


def test_convert_sync_batchnorm_shares_parameters_and_buffers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2),
                              torch.nn.Sequential(bncheck.BatchNorm(2)), torch.nn.SyncBatchNorm(2))
    bn = net[1]
    out = bncheck.SyncBatchNorm.convert_sync_batchnorm(net, process_group=None)
    assert [type(m).__name__ for m in (out[1], out[2][0], out[3])] == ["SyncBatchNorm"] * 3
    assert all(isinstance(m, bncheck.SyncBatchNorm) for m in (out[1], out[2][0], out[3]))
    assert out[1].weight is bn.weight and out[1].running_var is bn.running_var
    assert isinstance(bncheck.SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm1d(3)),
                      bncheck.SyncBatchNorm)


@settings(max_examples=30)
@given(splits(7, 3, min_size=1))
def test_splits_cover_the_batch(sizes):
    assert len(sizes) == 3 and sum(sizes) == 7 and min(sizes) >= 1


@settings(max_examples=30)
@given(splits_with_empty(4, 3))
def test_splits_with_empty_have_an_empty_rank(sizes):
    assert len(sizes) == 3 and sum(sizes) == 4 and 0 in sizes


@pytest.mark.parametrize("call,match", [
    (lambda: splits(3, 2, min_size=2), "Cannot have total=3 < parts * min_size=4"),
    (lambda: splits_with_empty(3, 1), "parts=1"),
    (lambda: WorkerPool(1), "world_size >= 2"),
    (lambda: WorkerPool(2, timeout=0), "timeout > 0.0"),
    (lambda: WorkerPool(2, device="tpu"), "device='tpu'"),
    (lambda: WorkerPool(2, start_method="teleport"), "start_method='teleport'"),
    (lambda: target_spec(lambda n: n), "importable by the worker processes"),
])
def test_invalid_arguments(call, match):
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        call()


def test_partitions_and_target_spec():
    assert partitions(2) == (((0,), (1,)),)
    assert partitions(4) == (((0, 1), (2, 3)), ((0, 2), (1, 3)))
    assert target_spec(bncheck.SyncBatchNorm) == "bncheck.distributed.sync_batchnorm:SyncBatchNorm"


def test_torch_sync_batchnorm_on_cpu_is_refused_in_one_paragraph():
    with pytest.raises(TargetError) as info:
        refuse_on_device(torch.nn.SyncBatchNorm, "cpu")
    text = str(info.value)
    assert "does not run on CPU" in text and "expected input tensor to be on GPU" in text
    assert "\n" not in text
    refuse_on_device(torch.nn.SyncBatchNorm, "cuda")  # may run there
    refuse_on_device(bncheck.SyncBatchNorm, "cpu")


def test_catalogue_is_complete():
    assert len(CATALOGUE) == 8 and all(p.checks and p.catches and p.tolerance for p in CATALOGUE)


@pytest.mark.parametrize("args,match", [
    (["verify", "--world-size", "1"], "Invalid value for '--world-size'"),
    (["verify", "--world-size", "2", "--property", "train_forward"],
     "Unknown distributed property='train_forward'; available: sync_forward"),
    (["verify", "torch.nn:SyncBatchNorm", "--world-size", "2"], "does not run on CPU"),
    (["verify", "--world-size", "2", "--timeout", "0"], "Invalid value for '--timeout'"),
    (["mutants", "--world-size", "2", "--mutant", "nope"],
     "Unknown distributed mutant='nope'; available: unweighted_mean"),
])
def test_cli_usage_errors_exit_2_before_starting_ranks(args, match):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert match in " ".join(r.output.split())
    assert "Traceback" not in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cli_device_cuda_without_cuda_is_a_usage_error():
    r = CliRunner().invoke(main, ["verify", "--world-size", "2", "--device", "cuda"])
    assert r.exit_code == 2 and "torch.cuda.is_available() is False" in r.output
