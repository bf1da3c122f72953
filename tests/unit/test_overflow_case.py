"""reduced_precision's fixed float16 case (``overflow_examples``): statistics accumulated in 16
bits overflow on it whatever the seed; a layer accumulating in float32 passes it."""

from __future__ import annotations

import pytest
import torch

from bncheck.engine.mutants import MUTANTS
from bncheck.engine.runner import verify


def _reduced(target, seed, **kwargs):
    report = verify(target, properties=["reduced_precision"], examples=1, seed=seed,
                    shrink=False, timeout=None, dtypes=["float16"], **kwargs)
    (result,) = report.results
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_16_bit_accumulation_fails_at_any_seed_with_one_drawn_example(seed):
    m = MUTANTS["float16_accumulation"]
    result = _reduced(m.factory, seed, declaration=m.declaration)
    assert result.status == "failed"
    assert "inf or nan where the oracle is finite" in result.message or \
        "overflowed" in result.message, result.message


@pytest.mark.parametrize("target", [torch.nn.BatchNorm1d, torch.nn.BatchNorm2d])
def test_float32_accumulation_passes_it(target):
    assert _reduced(target, 0).status == "passed"


def test_the_case_overflows_16_bits_but_not_its_variance():
    from bncheck.engine.properties._base import overflow_examples

    class _Ctx:  # what overflow_examples reads of a Context
        reduced_dtypes = (torch.float16,)

        class target:  # noqa: N801
            configurable = frozenset({"affine", "track_running_stats"})
            fixed_flags: dict[str, bool] = {}
            eps, momentum, variant, dims = 1e-5, 0.1, None, (2,)

    (case,) = overflow_examples(_Ctx())  # type: ignore[arg-type]
    x = case.case.x.to(torch.float64)
    top = torch.finfo(torch.float16).max
    dev = x - x.mean(0)
    assert float(dev[:2, 0].square().sum()) > top  # channel 0: a 16-bit sum of two squares
    assert float(dev[:, 1].square().max()) > top  # channel 1: one square itself
    assert bool((x.var(0, unbiased=True) < top).all())  # the right statistics: finite
