"""The float64 oracle against hand-computed values and against torch."""

from __future__ import annotations

import torch

from bncheck.engine import oracle
from bncheck.engine.properties._tolerance import forward_tolerance, roundoff


def test_hand_computed():
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    mean, var = oracle.batch_stats(x)
    assert mean.tolist() == [2.0, 10.0]
    assert var.tolist() == [1.0, 0.0]
    y = oracle.train_forward(x, eps=0.0 + 1e-300, weight=torch.tensor([2.0, 1.0]),
                             bias=torch.tensor([0.5, -1.0]))
    assert y[:, 0].tolist() == [-1.5, 2.5]
    assert y[:, 1].tolist() == [-1.0, -1.0]


def test_matches_torch_in_float64():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    expected = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-3)
    assert torch.allclose(oracle.train_forward(x, eps=1e-3), expected, atol=1e-12)


def test_counts_and_dims():
    assert oracle.reduce_dims(4) == (0, 2, 3)
    assert oracle.count_per_channel((3, 4, 5, 6)) == 90
    assert oracle.count_per_channel((7, 2)) == 7


def test_forward_tolerance_grows_with_offset_and_dtype():
    base = torch.randn(8, 2, dtype=torch.float64)
    m, v = oracle.batch_stats(base)
    t1 = forward_tolerance(base.float(), m, v, eps=1e-5)
    shifted = base + 1000.0
    m2, v2 = oracle.batch_stats(shifted)
    t2 = forward_tolerance(shifted.float(), m2, v2, eps=1e-5)
    assert bool((t2.atol > 100 * t1.atol).all())
    t16 = forward_tolerance(base.half(), m, v, eps=1e-5)
    assert t16.rtol > t1.rtol
    assert roundoff(torch.float32) == 2.0**-24
