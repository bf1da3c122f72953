"""Long horizons: num_batches_tracked installed at 10^3..10^6 before train_forward and
running_stats_update, so behaviour keyed on the count (a cumulative average's 1/k, a warm-up)
is reached (tests/data/third_party/renorm_warmup_bn.py never leaves its warm-up)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bncheck.engine.properties._base import HORIZONS
from bncheck.engine.runner import verify
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"
WARMUP = {"dims": (4,), "variant": "batch-renorm", "variant_args": {"warmup": 5000}}


def test_horizons_reach_past_a_warmup_of_thousands_and_a_cumulative_average_at_1e5():
    assert HORIZONS[0] is None and max(h for h in HORIZONS if h) >= 10**5


def test_a_warmup_that_never_ends_is_caught_past_the_warmup():
    report = verify(load_target(f"{DATA}/renorm_warmup_bn.py:RenormStuckWarmup"),
                    properties=["train_forward"], examples=10, seed=0,
                    dtypes=["float32", "float64"], **WARMUP)
    (failed,) = report.failed
    assert failed.name == "train_forward"
    assert "installed num_batches_tracked=" in report.render()


def test_a_correct_warmup_passes_at_every_horizon():
    report = verify(load_target(f"{DATA}/renorm_bn.py:BatchRenorm2d"), examples=10, seed=0,
                    properties=["train_forward", "running_stats_update"],
                    dtypes=["float32", "float64"], **WARMUP)
    assert report.ok, report.render()


@pytest.mark.parametrize("cls", [torch.nn.BatchNorm1d, torch.nn.BatchNorm2d])
def test_torch_cumulative_average_holds_at_long_horizons(cls):
    report = verify(cls, momentum=None, properties=["running_stats_update"], examples=15,
                    seed=0, dtypes=["float32"])
    assert report.ok, report.render()


class ShortCounterBN(torch.nn.BatchNorm1d):
    """num_batches_tracked re-registered as int16: the cumulative average wraps at 32767."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_batches_tracked = torch.tensor(0, dtype=torch.int16)


def test_a_counter_that_cannot_hold_the_horizon_is_named():
    report = verify(ShortCounterBN, dims=(2,), properties=["running_stats_update"],
                    examples=20, seed=0, shrink=False)
    (failed,) = report.failed
    assert "num_batches_tracked cannot hold" in failed.message, failed.message
