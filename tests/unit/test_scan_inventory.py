"""bncheck.scan.inventory and bncheck.scan.infer: which modules are normalization layers, what
they declare, how they are grouped and named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bncheck.engine.target import load_target
from bncheck.infra.validation import not_set
from bncheck.scan.infer import declarations, group_layers, observe, replay_command
from bncheck.scan.inventory import (
    Config,
    candidates_by_behaviour,
    class_spec,
    config_of,
    find_norm_layers,
)

DATA = Path(__file__).parents[1] / "data"
MODELS = f"{DATA / 'scan_models.py'}"


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(DATA.parents[1])  # specs name user files relative to the working dir


def _model(name: str) -> nn.Module:
    return load_target(f"{MODELS}:{name}")()


class MeanVarBN(nn.Module):
    """A BatchNorm whose statistics are called only mean/var (found by behaviour)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("var", torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()
        return (x - self.mean) / (self.var + 1e-5).sqrt()


class FrozenBN(nn.Module):
    """torchvision's FrozenBatchNorm2d in short: statistics, but the same output in any mode."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.rand(c))
        self.register_buffer("running_var", torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (x - self.running_mean.view(shape)) / self.running_var.view(shape).sqrt()


def test_torch_classes_and_subclasses_are_found_at_their_module_paths():
    layers = find_norm_layers(_model("mixed_custom"))
    assert [(lay.path, lay.spec, lay.found_by) for lay in layers] == [
        ("stem.1", "torch.nn:BatchNorm2d", "class"),
        ("layer1.0.bn", "tests/data/scan_models.py:MyBatchNorm2d", "class"),
        ("layer1.1.bn", "tests/data/scan_models.py:ScratchBN", "statistics"),
        ("layer2.0.bn", "tests/data/scan_models.py:BiasedVarBN", "statistics"),
        ("layer2.1.bn", "tests/data/scan_models.py:BiasedVarBN", "statistics"),
    ]


def test_sync_batchnorm_counts_and_instance_norm_does_not():
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.InstanceNorm2d(3, track_running_stats=True),
                          nn.LazyBatchNorm1d())
    assert [(lay.path, lay.found_by) for lay in find_norm_layers(model)] == [
        ("0", "class"), ("2", "class")]


def test_mean_var_pair_counts_only_when_it_behaves_like_a_batchnorm():
    model = nn.Sequential(_model("normalizer"), nn.Flatten(), nn.Linear(4 * 8 * 8, 5),
                          MeanVarBN(5))
    maybe = candidates_by_behaviour(model)
    assert maybe == ["0.0", "3"]
    seen = observe(model, (torch.rand(4, 3, 8, 8),), paths=maybe, probe=maybe)
    assert seen.mode_dependent == {"0.0": False, "3": True}  # Normalize is no BatchNorm
    confirmed = [p for p in maybe if seen.mode_dependent[p]]
    assert [(lay.path, lay.found_by) for lay in find_norm_layers(model, confirmed=confirmed)] \
        == [("0.2", "class"), ("3", "behaviour")]


def test_a_layer_with_the_same_output_in_both_modes_is_a_frozen_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), FrozenBN(4), nn.BatchNorm2d(4))
    layers = find_norm_layers(model)
    seen = observe(model, (torch.rand(2, 3, 5, 5),), paths=["1", "2"], probe=["1"])
    groups = group_layers(model, layers, seen)
    assert [(g.cls_name.rsplit(".", 1)[1], g.frozen, g.dims) for g in groups] == [
        ("FrozenBN", True, (4,)), ("BatchNorm2d", False, (4,))]


def test_ranks_come_from_the_dry_run_even_when_the_forward_raises_later():
    seed = load_target(f"{DATA / 'seed_bn.py'}:BatchNorm")
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), seed(3, 2))
    seen = observe(model, (torch.rand(2, 3, 2, 2),), paths=["2"], probe=["2"])
    assert isinstance(seen.error, Exception) and "beta" in str(seen.error)
    assert seen.ranks == {"2": (2,)} and seen.mode_dependent == {"2": None}


def test_an_unreached_layer_takes_its_rank_from_its_statistics_shape():
    seed = load_target(f"{DATA / 'seed_bn.py'}:BatchNorm")
    model = nn.Sequential(seed(3, 4), seed(3, 2))  # the first raises: neither reports a rank
    layers = find_norm_layers(model)
    seen = observe(model, (torch.rand(2, 3, 2, 2),), paths=["0", "1"])
    assert seen.ranks == {"0": (4,)}
    (group,) = group_layers(model, layers, seen)
    assert group.dims == (2, 4)


def test_config_is_read_from_the_instance():
    assert config_of(nn.BatchNorm1d(3, eps=1e-3, momentum=None, affine=False)) == Config(
        None, 1e-3, False, True)
    assert config_of(MeanVarBN(3)) == Config()
    assert Config().momentum is not_set


def test_layers_of_one_class_and_config_share_a_group_and_declarations():
    model = nn.Sequential(nn.BatchNorm2d(3, eps=1e-3, momentum=0.01), nn.BatchNorm2d(3),
                          nn.BatchNorm2d(5, eps=1e-3, momentum=0.01))
    layers = find_norm_layers(model)
    groups = group_layers(model, layers, observe(model, (torch.rand(2, 3, 4, 4),),
                                                 paths=["0", "1"]))
    assert [[lay.path for lay in g.layers] for g in groups] == [["0", "2"], ["1"]]
    assert declarations(groups[0]).declared() == {
        "momentum": 0.01, "eps": 1e-3, "dims": (4,),
        "fixed": {"affine": True, "track_running_stats": True}}
    assert replay_command(groups[0], "eval_forward", 3, profile="ci", examples=None) == (
        "bncheck verify torch.nn:BatchNorm2d --momentum 0.01 --eps 0.001 --dims 4 --fixed "
        "affine=true,track_running_stats=true --property eval_forward --seed 3")


def test_class_specs_load_the_same_class():
    cls = load_target(f"{MODELS}:BiasedVarBN")
    assert class_spec(cls) == "tests/data/scan_models.py:BiasedVarBN"
    assert load_target(class_spec(cls)).__qualname__ == "BiasedVarBN"
    assert class_spec(nn.SyncBatchNorm) == "torch.nn:SyncBatchNorm"

    class Local(nn.BatchNorm1d):
        pass

    assert class_spec(Local) is None


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_replay_names_momentum_as_the_cli_takes_it(momentum):
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=momentum))
    (group,) = group_layers(model, find_norm_layers(model),
                            observe(model, (torch.rand(2, 3),), paths=["0"]))
    expected = "none" if momentum is None else "0.5"
    assert f"--momentum {expected} " in replay_command(group, "p", 0, profile="dev", examples=4)
    assert "--profile dev --examples 4 --property p --seed 0" in replay_command(
        group, "p", 0, profile="dev", examples=4)
