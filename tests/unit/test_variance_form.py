"""running_stats_update judges the running variance's form on offset data apart from the drawn
case, so a one-pass E[x^2] - E[x]^2 update is named even when a biased-variance failure fires
first (tests/data/third_party/one_pass_var_bn.py has both defects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bncheck.engine import oracle
from bncheck.engine.properties._tolerance import roundoff
from bncheck.engine.properties.stats import PROBE_STD, offset_batch
from bncheck.engine.runner import verify
from bncheck.engine.target import load_target

DATA = Path(__file__).parents[1] / "data" / "third_party"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offset_batch_makes_one_pass_variance_lose_every_digit(dtype):
    x, offset = offset_batch((4, 3, 2, 2), dtype)
    mean, var = oracle.batch_stats(x)
    assert torch.allclose(var.sqrt(), torch.full((3,), PROBE_STD, dtype=torch.float64), rtol=0.5)
    assert roundoff(dtype) * offset**2 / PROBE_STD**2 >= 1e3  # the rounding of E[x^2] ...
    dims = oracle.reduce_dims(4)
    one_pass = (x * x).mean(list(dims)) - x.mean(list(dims)) ** 2
    assert ((one_pass.double() - var).abs() > var).any()  # ... swamps the variance


def test_one_pass_update_is_named_beside_the_biased_variance():
    report = verify(load_target(f"{DATA}/one_pass_var_bn.py:OnePassVarBN"), dims=(4,),
                    properties=["running_stats_update"], examples=20, seed=0, shrink=False)
    (failed,) = report.failed
    first, _, rest = failed.message.partition("Also failed")
    assert "running_var after training step" in first  # the biased variance, on drawn data
    assert "computed in one pass, E[x^2] - E[x]^2" in rest


@pytest.mark.parametrize("cls", [torch.nn.BatchNorm1d, torch.nn.BatchNorm2d])
def test_two_pass_torch_batchnorm_passes_the_offset_probe(cls):
    dims = (2,) if cls is torch.nn.BatchNorm1d else (4,)
    report = verify(cls, dims=dims, properties=["running_stats_update"], examples=20, seed=1,
                    shrink=False)
    assert report.ok, report.render()
