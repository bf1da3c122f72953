"""One declaration, honoured on every path (issue 16): a declared value is never drawn, ranks
are found by trying the layer, the ranks build the target as declared, a path that cannot
honour a declaration refuses it, and the declaration is shown whole."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.adapter import supported_dims
from bncheck.engine.declaration import Declaration
from bncheck.engine.runner import build_target, check_batchnorm, verify
from bncheck.errors import InvalidArgument

DATA = Path(__file__).parent.parent / "data"
LAYERS = DATA / "declared_layers.py"
RENAMED = "weight=scale,bias=shift,running_mean=exp_mean,running_var=exp_var"


def _verify(*args: str):
    return CliRunner().invoke(main, ["verify", *args])


def test_a_declared_eps_is_passed_and_never_drawn(tmp_path):
    # The layer takes eps but computes with 1e-3: drawn eps values fail it, the declared passes.
    from bncheck.engine.target import load_target

    out = tmp_path / "r.json"
    ok = _verify(f"{LAYERS}:EpsIgnoringBN", "--eps", "1e-3", "--momentum", "0.1", "--property",
                 "train_forward", "--examples", "5", "--json", str(out))
    assert ok.exit_code == 0, ok.output
    assert "eps 0.001 (declared)" in ok.output
    assert "declared: momentum=0.1, eps=0.001" in ok.output
    assert json.loads(out.read_text())["declaration"]["eps"] == 0.001
    drawn = verify(load_target(f"{LAYERS}:EpsIgnoringBN"), momentum=0.1, examples=5,
                   properties=["train_forward"], shrink=False)
    assert not drawn.ok


def test_accepted_ranks_are_found_by_trying_the_layer():
    from bncheck.engine.target import load_target

    flat = load_target(f"{LAYERS}:FlatOrImageBN")  # nn.BatchNorm2d taking (N, C) too
    assert supported_dims(flat) == (2, 4)
    assert supported_dims(torch.nn.BatchNorm2d) == (4,)
    assert supported_dims(torch.nn.BatchNorm1d) == (2, 3)
    ok = _verify(f"{LAYERS}:FlatOrImageBN", "--dims", "2,4", "--property", "train_forward",
                 "--examples", "5")
    assert ok.exit_code == 0, ok.output
    refused = _verify(f"{LAYERS}:FlatOrImageBN", "--dims", "3,4")
    assert refused.exit_code == 2
    assert "accepts (2, 4), received dims=(3, 4)" in refused.stderr


def test_verify_honours_declarations_given_with_a_prepared_target():
    t = build_target(torch.nn.BatchNorm1d)
    report = verify(t, eps=1e-3, properties=["train_forward"], examples=2)
    assert report.declaration["eps"] == 0.001
    with pytest.raises(InvalidArgument, match="Unknown declaration epss=.*did you mean eps"):
        verify(t, epss=1e-3, properties=["train_forward"], examples=2)
    with pytest.raises(InvalidArgument, match="Unknown declaration"):
        check_batchnorm(torch.nn.BatchNorm1d, convnetion="onnx")


def test_check_batchnorm_takes_a_declaration_object():
    from bncheck.engine.target import load_target

    layer = load_target(f"{LAYERS}:EpsIgnoringBN")
    report = check_batchnorm(layer, declaration=Declaration(eps=1e-3, momentum=0.1),
                             properties=["train_forward"], examples=5)
    assert report.ok and report.declaration["momentum"] == 0.1
    assert check_batchnorm(layer, declaration=Declaration(momentum=0.1), eps=1e-3,
                           properties=["train_forward"], examples=2).declaration["eps"] == 1e-3


@pytest.mark.xdist_group("distributed_pool")
def test_the_ranks_build_the_target_as_declared():
    props = ["--property", "sync_param_grad", "--property", "sync_running_stats",
             "--examples", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.distributed.nn's all_reduce
        ok = _verify(f"{LAYERS}:RenamedSyncBN", "--names", RENAMED, "--world-size", "2", *props)
        assert ok.exit_code == 0, ok.output
        undeclared = _verify(f"{LAYERS}:RenamedSyncBN", "--world-size", "2", *props)
    assert undeclared.exit_code == 1, undeclared.output
    assert "declared: names=" in ok.output


def test_train_refuses_what_it_cannot_honour():
    r = CliRunner().invoke(main, ["train", "--bn", "torch", "--dims", "2,4"])
    assert r.exit_code == 2 and "cannot honour the declaration dims=2,4 (--dims)" in r.stderr
    r = CliRunner().invoke(main, ["train", "--bn", f"{LAYERS}:EpsIgnoringBN", "--eps", "1e-3"])
    assert r.exit_code == 2 and "--eps" in r.stderr
    r = CliRunner().invoke(main, ["train", "--bn", f"{LAYERS}:EpsIgnoringBN",
                                  "--convention", "keras"])
    assert r.exit_code == 2 and "convention=keras" in r.stderr
