"""Running statistics against the population statistics of real activations; the PNG."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from bncheck.errors import InvalidArgument
from bncheck.reference.lenet import lenet_bn
from bncheck.training import EpochStats, TrainingHistory, plot_curves, population_gaps
from bncheck.training._loop import CurvePoint
from bncheck.training.data import synthetic_dataset

DATA = synthetic_dataset(64)


def test_exact_statistics_give_no_gap_and_fresh_ones_a_large_one() -> None:
    # momentum=1: one training-mode pass over the whole set stores its exact statistics. The
    # first layer's inputs do not depend on the mode, so its gap must vanish (float32 inputs,
    # float64 accumulation: far below 1e-5).
    model = lenet_bn(lambda c, d: nn.BatchNorm2d(c, momentum=1.0) if d == 4
                     else nn.BatchNorm1d(c, momentum=1.0))
    model.train()
    with torch.no_grad():
        model(DATA.images)
    gaps = population_gaps(model, DATA, batch_size=16)  # merged over 4 batches
    assert [g.layer for g in gaps] == [1, 5, 10, 13]
    assert gaps[0].values_per_channel == 64 * 24 * 24
    assert gaps[0].mean_gap < 1e-5 and gaps[0].var_gap < 1e-5
    fresh = population_gaps(lenet_bn("torch"), DATA)  # running stats still 0 and 1
    assert fresh[0].mean_gap > 0.1 and fresh[0].var_gap > 0.1
    assert all(math.isfinite(g.mean_gap) and math.isfinite(g.var_gap) for g in fresh)


def test_a_model_without_batchnorm_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="BatchNorm children"):
        population_gaps(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), DATA)


def test_plot_is_a_png_with_a_red_banner_for_a_stand_in() -> None:
    from PIL import Image

    history = TrainingHistory(2, 1.0, 256, 0, 100, 10,
                              epochs=[EpochStats(1, 0.9, 0.7, 0.6, 1.0, 0.9),
                                      EpochStats(2, 0.5, 0.85, 0.8, 1.0, 0.9)],
                              curve=[CurvePoint(k / 5, 2.0 - k / 5, 0.1 * k) for k in range(1, 11)])
    plain = Image.open(io.BytesIO(plot_curves(history, title="t"))).convert("RGB")
    banner = Image.open(io.BytesIO(plot_curves(history, title="t", banner="stand-in data")))
    assert plain.size == banner.size == (640, 440)

    def red_pixels(image: Image.Image) -> int:
        top = np.asarray(image.convert("RGB"))[:30].astype(int)
        return int(((top[..., 0] > 150) & (top[..., 1] < 100) & (top[..., 2] < 100)).sum())

    assert red_pixels(plain) == 0 and red_pixels(banner) > 50
