"""Memory layouts are drawn (permuted, offset, expanded, channels last), so a kernel that
assumes contiguous NCHW storage fails train_forward with the layout in its counterexample."""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, settings

from bncheck.engine.strategies import inputs


@pytest.mark.parametrize("layout,check", [
    ("permuted", lambda x: x.stride(1) > x.stride(0)),
    ("storage_offset", lambda x: x.storage_offset() > 0),
    ("expanded", lambda x: 0 in x.stride()),
    ("channels_last", lambda x: x.is_contiguous(memory_format=torch.channels_last)),
])
def test_layouts_are_drawn(layout, check):
    x = find(inputs((3, 2, 2, 2), layouts=[layout]), lambda t: True,
             settings=settings(database=None))
    assert check(x)


def test_layout_assuming_kernel_fails_train_forward(third_party):
    report = third_party.run("layout_kernel_bn.py:ContiguousKernelBN", ["train_forward"],
                             examples=20, dims=(4,), shrink=False)
    assert report.failed, "a kernel that assumes contiguous NCHW storage passed"
    assert "layout=" in report.failed[0].counterexample
    assert "layout=contiguous" not in report.failed[0].counterexample
