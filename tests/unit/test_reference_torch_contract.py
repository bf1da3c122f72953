"""The reference keeps torch 2.13's contract: state_dict semantics, where torch validates, the
error types and wording it raises, and the inputs it accepts. Each case runs on torch and on the
reference (torch's code: ``torch/nn/modules/batchnorm.py``, ``torch/nn/functional.py``).

Deliberate differences (docs/reference.md): bncheck raises ``TypeError``/``ValueError`` with
an expected-vs-received message where torch fails inside its internals (a non-tensor or integer
input, a non-empty input of under 2 dims); its messages extend torch's (torch's words first);
in training it accepts one running statistic without the other (torch: ``ValueError``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bncheck

TORCH = {"F": F.batch_norm, "1d": nn.BatchNorm1d, "2d": nn.BatchNorm2d, "3d": nn.BatchNorm3d}
OURS = {"F": bncheck.batch_norm, "1d": bncheck.BatchNorm1d, "2d": bncheck.BatchNorm2d,
        "3d": bncheck.BatchNorm3d}


def _both(call):
    """``call(api)`` on torch's API and on bncheck's: (result or exception) each."""
    out = []
    for api in (TORCH, OURS):
        torch.manual_seed(0)
        try:
            out.append(call(api))
        except Exception as e:  # noqa: BLE001 - the exception is the result compared
            out.append(e)
    return out


x4 = torch.randn(4, 3)
rm, rv = torch.zeros(3), torch.ones(3)

# (id, the call on an API, whether bncheck's message must contain torch's first line)
ERRORS = [
    ("F eval running_mean size", lambda a: a["F"](x4, torch.zeros(2), rv), True),
    ("F train running_var size", lambda a: a["F"](x4, rm, torch.ones(5), training=True), True),
    ("F weight size", lambda a: a["F"](x4, None, None, torch.ones(2), training=True), True),
    ("F bias size", lambda a: a["F"](x4, None, None, None, torch.ones(4), training=True), True),
    ("F stats before weight", lambda a: a["F"](x4, torch.zeros(2), rv, torch.ones(2)), True),
    ("F eval no running_mean", lambda a: a["F"](x4, None, None), True),
    ("F eval no running_var", lambda a: a["F"](x4, rm, None, torch.ones(7)), True),
    ("F train one statistic, bad size", lambda a: a["F"](x4, None, torch.ones(2), training=True),
     True),
    ("F one value per channel", lambda a: a["F"](torch.randn(1, 3, 1), None, None,
                                                  training=True, eps=0.0), True),
    ("F eps 0 in training", lambda a: a["F"](x4, None, None, training=True, eps=0.0), True),
    ("F eps < 0 in eval", lambda a: a["F"](x4, rm, rv, eps=-1.0), True),
    ("F momentum None", lambda a: a["F"](x4, rm, rv, training=True, momentum=None), False),
    ("F momentum str", lambda a: a["F"](x4, rm, rv, training=True, momentum="0.1"), False),
    ("F eps str", lambda a: a["F"](x4, rm, rv, training=True, eps="0.1"), False),
    ("1d 4-dim input", lambda a: a["1d"](3)(torch.randn(2, 3, 2, 2)), True),
    ("2d 3-dim input", lambda a: a["2d"](3)(torch.randn(2, 3, 2)), True),
    ("3d 4-dim input", lambda a: a["3d"](3)(torch.randn(2, 3, 2, 2)), True),
    ("2d channels", lambda a: a["2d"](3)(torch.randn(2, 4, 2, 2)), True),
    ("2d channels, no stats", lambda a: a["2d"](3, track_running_stats=False)(
        torch.randn(2, 4, 2, 2)), True),
    ("2d eps 0 at the forward", lambda a: a["2d"](3, eps=0.0)(torch.randn(2, 3, 2, 2)), True),
    ("2d eps < 0 at the eval forward", lambda a: a["2d"](3, eps=-1.0).eval()(
        torch.randn(2, 3, 2, 2)), True),
    ("2d negative num_features", lambda a: a["2d"](-1), False),
    ("2d float num_features", lambda a: a["2d"](1.5), False),
    ("2d momentum str at the forward", lambda a: a["2d"](3, momentum="x")(
        torch.randn(2, 3, 2, 2)), False),
]


@pytest.mark.parametrize("call,same_words", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_as_torch_raises_them(call, same_words: bool) -> None:
    theirs, ours = _both(call)
    assert isinstance(theirs, Exception), f"torch accepted it: {theirs}"
    assert isinstance(ours, type(theirs)), f"torch raised {theirs!r}, bncheck {ours!r}"
    assert isinstance(ours, bncheck.BNCheckError), repr(ours)
    if same_words:
        assert str(theirs).splitlines()[0] in str(ours)


# inputs and arguments torch accepts: the same result from both
ACCEPTED = [
    ("F empty 1-dim, training", lambda a: a["F"](torch.randn(0), None, None, training=True)),
    ("F empty 1-dim, eval", lambda a: a["F"](torch.randn(0), torch.zeros(0), torch.ones(0))),
    ("F 6-dim, training", lambda a: a["F"](torch.randn(2, 3, 2, 1, 2, 2), None, None,
                                           training=True)),
    ("F 6-dim, eval", lambda a: a["F"](torch.randn(2, 3, 2, 1, 2, 2), rm, rv)),
    ("F (2, 0), training", lambda a: a["F"](torch.randn(2, 0), None, None, training=True)),
    ("F momentum 2 in eval", lambda a: a["F"](x4, rm, rv, momentum=2.0)),
    ("F momentum -1 in training", lambda a: (a["F"](x4, s := rm.clone(), t := rv.clone(),
                                                    training=True, momentum=-1.0), s, t)),
    ("F momentum nan in training", lambda a: (a["F"](x4, s := rm.clone(), t := rv.clone(),
                                                     training=True, momentum=float("nan")),
                                              s, t)),
    ("F eps nan in eval", lambda a: a["F"](x4, rm, rv, eps=float("nan"))),
    ("F int momentum and eps", lambda a: a["F"](x4, None, None, training=True, momentum=1,
                                                eps=1)),
    ("F 0-dim weight, one channel", lambda a: a["F"](torch.randn(4, 1), None, None,
                                                     torch.tensor(2.0), training=True)),
    ("2d num_features 0", lambda a: a["2d"](0).extra_repr()),
    ("2d momentum 2 and eps -1 constructed", lambda a: a["2d"](3, momentum=2.0,
                                                               eps=-1.0).extra_repr()),
    ("2d momentum 2 in eval", lambda a: a["2d"](3, momentum=2.0).eval()(
        torch.randn(2, 3, 2, 2))),
    ("1d eps 0 in eval", lambda a: a["1d"](3, eps=0.0).eval()(x4)),
    ("2d any channels without stats or affine", lambda a: a["2d"](
        3, affine=False, track_running_stats=False)(torch.randn(2, 5, 2, 2))),
]


@pytest.mark.parametrize("call", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepts_what_torch_accepts(call) -> None:
    theirs, ours = _both(call)
    assert not isinstance(theirs, Exception), f"torch raised {theirs!r}"
    assert not isinstance(ours, Exception), f"torch accepted it, bncheck raised {ours!r}"
    if isinstance(theirs, str):
        assert ours == theirs
    else:
        torch.testing.assert_close(ours, theirs, equal_nan=True)


# -- state_dict ---------------------------------------------------------------------------------

def _trained(cls: type[nn.Module], **kwargs) -> nn.Module:
    torch.manual_seed(0)
    bn = cls(3, **kwargs)
    for _ in range(10):
        bn(torch.randn(4, 3))
    return bn


@pytest.mark.parametrize("momentum", [0.1, None])
def test_loading_an_empty_state_dict_keeps_the_batch_count(momentum) -> None:
    after = []
    for cls in (nn.BatchNorm1d, bncheck.BatchNorm1d):
        bn = _trained(cls, momentum=momentum)
        result = bn.load_state_dict({}, strict=False)
        assert int(bn.num_batches_tracked) == 10
        assert "num_batches_tracked" not in result.missing_keys
        bn(torch.randn(4, 3))  # momentum=None: the 11th batch weighs 1/11
        after.append(bn.state_dict())
    torch.testing.assert_close(after[1], after[0])


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_version_1_checkpoint_without_the_count(device: str) -> None:
    """torch keeps the module's own count (0 on the meta device, where it has no value)."""
    sd = nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    counts = []
    for cls in (nn.BatchNorm1d, bncheck.BatchNorm1d):
        bn = _trained(cls) if device == "cpu" else cls(3, device="meta")
        bn.load_state_dict(copy.copy(sd), assign=device == "meta")
        counts.append((int(bn.num_batches_tracked), bn.num_batches_tracked.device.type))
    assert counts[1] == counts[0]


def test_a_version_2_checkpoint_without_the_count_is_missing_a_key() -> None:
    sd = nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    for cls in (nn.BatchNorm1d, bncheck.BatchNorm1d):
        with pytest.raises(RuntimeError, match='Missing key.*"num_batches_tracked"'):
            cls(3).load_state_dict(sd)


def test_state_dicts_are_interchangeable() -> None:
    theirs, ours = _trained(nn.BatchNorm1d).state_dict(), _trained(bncheck.BatchNorm1d)
    assert list(ours.state_dict()) == list(theirs)
    assert ours.state_dict()._metadata[""]["version"] == theirs._metadata[""]["version"] == 2
    fresh = nn.BatchNorm1d(3)
    fresh.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fresh.state_dict(), theirs)


def test_one_running_statistic_in_training_is_a_documented_difference() -> None:
    """torch refuses it (ValueError); bncheck updates the one given (its ONNX-convention tests
    update the mean and the variance in separate calls)."""
    with pytest.raises(ValueError, match="must either both be None or neither be None"):
        F.batch_norm(x4, rm.clone(), None, training=True)
    mean = rm.clone()
    bncheck.batch_norm(x4, mean, None, training=True, momentum=1.0)
    torch.testing.assert_close(mean, x4.mean(0))
