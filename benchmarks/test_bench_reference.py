"""Reference BatchNorm vs torch.nn.BatchNorm2d, forward+backward, measured in one run.

Run: nox -s benchmarks   (or: pytest benchmarks --benchmark-enable)
The reference is written in plain torch ops for clarity, not speed; these benchmarks say how much
that costs relative to torch's fused kernel on the same machine in the same run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bncheck

SHAPES = {"lenet-conv1": (256, 6, 24, 24), "lenet-fc1": (256, 120)}


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_backward(benchmark, impl, shape, training):
    dims = SHAPES[shape]
    bn = bncheck.BatchNorm(dims[1]) if impl == "reference" else (
        nn.BatchNorm2d(dims[1]) if len(dims) == 4 else nn.BatchNorm1d(dims[1]))
    bn.train(training)
    x = torch.randn(dims, generator=torch.Generator().manual_seed(0), requires_grad=True)
    benchmark.group = f"{shape}-{'train' if training else 'eval'}"

    def step() -> None:
        bn(x).sum().backward()

    benchmark(step)
