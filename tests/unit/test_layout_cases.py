"""train_forward reaches every memory layout every run: after its drawn cases pass it runs one
fixed case per layout (strategies.layout_cases), so a layer that raises on one layout fails its
owning property at any seed, not only when a draw happens to reach that layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bncheck.engine.runner import verify
from bncheck.engine.strategies import LAYOUTS, layout_cases
from bncheck.engine.target import load_target
from bncheck.errors import InvalidArgument

DATA = Path(__file__).parents[1] / "data" / "third_party"


def test_one_case_per_layout_with_the_same_values_and_other_strides():
    cases = layout_cases(4)
    assert [c.layout for c in cases] == [v for v in LAYOUTS if v != "contiguous"]
    ref = cases[0].x.contiguous()
    for c in cases:
        if c.layout != "expanded":  # expanded repeats one slice by design
            assert torch.equal(c.x, ref), c.layout
        assert c.x.stride() != ref.stride() or c.x.storage_offset() != 0, c.layout
    transposed = next(c for c in cases if c.layout == "spatial_transposed")
    assert transposed.x.stride(2) < transposed.x.stride(3)  # as x.transpose(2, 3) leaves it


def test_a_bad_rank_is_refused_with_its_name():
    with pytest.raises(InvalidArgument, match="ndim=6"):
        layout_cases(6)


class ViewAfterExpandFixBN(torch.nn.Module):
    """A 4-D BatchNorm that copes with stride-0 (expanded) inputs but flattens the spatial dims
    with .view: raises only on transposed spatial strides."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if 0 in x.stride():
            x = x.contiguous()
        flat = x.view(x.shape[0], x.shape[1], -1)
        y = torch.nn.functional.batch_norm(flat, self.running_mean, self.running_var,
                                           self.weight, self.bias, self.training,
                                           self.momentum, self.eps)
        return y.view(x.shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_layer_raising_on_transposed_spatial_strides_fails_train_forward(seed):
    report = verify(ViewAfterExpandFixBN, dims=(4,), properties=["train_forward"], examples=3,
                    seed=seed, shrink=False)
    [result] = report.failed
    assert "layout=spatial_transposed" in result.counterexample, report.render()
    assert "view size is not compatible" in result.message


def test_view_flatten_bn_fails_its_owning_property_at_seed_0():
    report = verify(load_target(f"{DATA}/view_flatten_bn.py:ViewFlattenBN"), dims=(4,),
                    properties=["train_forward"], examples=10, seed=0, shrink=False)
    [result] = report.failed
    assert "view size is not compatible" in result.message, report.render()


def test_torch_batchnorm_passes_every_layout():
    for cls, dims in ((torch.nn.BatchNorm2d, (4,)), (torch.nn.BatchNorm3d, (5,)),
                      (torch.nn.BatchNorm1d, (2, 3))):
        report = verify(cls, dims=dims, properties=["train_forward"], examples=2, seed=0)
        assert report.ok, report.render()
