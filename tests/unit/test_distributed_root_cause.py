"""One root cause per design, distributed: the logic in-process (no ranks). A layer whose ranks
never exchange statistics is recognised from its outputs (each rank's is BatchNorm of its own
rows, and not of the global batch); NaN statistics are named as NaN on which ranks, never as a
difference between ranks. The real gloo runs are in
tests/integration/test_distributed_no_exchange.py."""

from __future__ import annotations

import torch

from bncheck.distributed._base import nan_report, rank_difference
from bncheck.distributed._design import local_only
from bncheck.distributed.cases import SyncCase
from bncheck.engine.strategies import BNCase, BNConfig, Mode

NAN = float("nan")


def _case(sizes=(4, 4), blocks=None):
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 3, 2, 2, generator=gen, dtype=torch.float64) * (1 + r) + 3 * r
             for r, n in enumerate(sizes)]
    x = torch.cat(parts).to(torch.float32)
    w, b = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    case = BNCase(tuple(x.shape), torch.float32, Mode(True), BNConfig(), x, w, b,
                  ("standard",) * 3, "contiguous")
    return SyncCase(case, tuple(sizes), blocks or (tuple(range(len(sizes))),))


def _bn(x, sc):
    c = sc.case
    return torch.nn.functional.batch_norm(x, None, None, c.weight.float(), c.bias.float(),
                                          training=True, eps=c.config.eps)


def test_outputs_of_per_rank_batchnorm_are_recognised():
    sc = _case()
    evidence = local_only(sc, [_bn(x, sc) for x in sc.rank_inputs()])
    assert evidence is not None
    assert "every rank's training output is BatchNorm of its own rows" in evidence
    assert "split [4, 4] over ranks [0, 1]" in evidence


def test_outputs_of_the_global_batchnorm_are_not():
    sc = _case()
    y = _bn(sc.case.x, sc)
    assert local_only(sc, list(y.split(list(sc.sizes)))) is None


def test_a_rank_that_is_neither_local_nor_global_is_not_taken_for_the_design():
    sc = _case((3, 5))
    ys = [_bn(x, sc) for x in sc.rank_inputs()]
    ys[1] = ys[1] * 1.01
    assert local_only(sc, ys) is None


def test_one_group_per_rank_is_the_global_batchnorm_of_each_group():
    # ranks in groups of one: local statistics ARE the group's, so nothing differs
    sc = _case((4, 4), blocks=((0,), (1,)))
    assert local_only(sc, [_bn(x, sc) for x in sc.rank_inputs()]) is None


def test_nan_on_both_ranks_is_named_with_ranks_buffer_and_count():
    got = torch.tensor([NAN, 1.0, NAN, 2.0])
    want = torch.tensor([0.9, 1.0, 0.9, 2.0], dtype=torch.float64)
    text = nan_report("running_var", {0: got, 1: got.clone()}, {0: want, 1: want}, step=0)
    assert text is not None
    assert text.startswith("running_var is NaN on rank 0 and rank 1 after training step 1: "
                           "2 / 4 elements (channels 0, 2) on each"), text
    assert "differs" not in text


def test_nan_on_one_rank_says_which():
    want = torch.tensor([0.9, 1.0], dtype=torch.float64)
    text = nan_report("running_mean", {0: torch.tensor([0.9, 1.0]), 1: torch.tensor([NAN, 1.0])},
                      {0: want, 1: want}, step=1)
    assert text is not None
    assert text.startswith("running_mean is NaN on rank 1 after training step 2: 1 / 2 elements "
                           "(channel 0), where the global update is finite (not on rank 0)"), text


def test_nan_where_the_expected_update_is_nan_is_not_a_failure():
    want = torch.tensor([NAN, 1.0], dtype=torch.float64)
    got = torch.tensor([NAN, 1.0])
    assert nan_report("running_var", {0: got, 1: got}, {0: want, 1: want}, step=0) is None


def test_nan_at_the_same_places_is_not_a_difference_between_ranks():
    a = torch.tensor([NAN, 1.0, 2.0])
    assert rank_difference("running_var", 0, a, 1, a.clone()) is None


def test_nan_at_different_places_is_named_as_nan():
    text = rank_difference("running_var", 0, torch.tensor([NAN, 1.0]), 1,
                           torch.tensor([0.5, 1.0]))
    assert text is not None
    assert text.startswith("running_var is NaN on rank 0 at 1 / 2 elements (channel 0) and not "
                           "on rank 1"), text


def test_finite_values_that_differ_still_differ():
    text = rank_difference("running_mean", 0, torch.tensor([0.5, 1.0]), 2,
                           torch.tensor([0.5, 1.5]))
    assert text is not None and text.startswith("running_mean differs between rank 0 and rank 2")
