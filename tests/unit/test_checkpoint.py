"""The checkpoint format: a plain state_dict, and a complete message for anything else."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest
import torch

from bncheck.errors import InvalidArgument, OutputError
from bncheck.infra.io import file_mode
from bncheck.onnx.build import build_model
from bncheck.reference.lenet import lenet_bn
from bncheck.training import load_checkpoint, read_state_dict, save_checkpoint


def test_round_trip_with_note_into_both_variants_and_export(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    model = lenet_bn("scratch", seed=3)
    assert save_checkpoint(model, path, note="trained on the stand-in") == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left
    assert stat.S_IMODE(path.stat().st_mode) == file_mode()  # the umask's mode, not 0600
    state = torch.load(path, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    for bn in ("scratch", "torch"):
        assert load_checkpoint(lenet_bn(bn), path) == "trained on the stand-in"
    exported = build_model("torch", checkpoint=path)  # what `bncheck export --checkpoint` loads
    assert torch.equal(exported[0].weight, model[0].weight)


def _write(path: Path, content: object) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)


GOOD = lenet_bn("torch").state_dict()

# (case, file content, fragments of the message); every message ends with the fix.
BAD = [
    ("whole model", lenet_bn("torch"),
     ["holds a pickled torch.nn.modules.container.Sequential object, not a state_dict",
      "torch.save(model)", "torch.save(model.state_dict(), path)"]),
    ("random bytes", random.Random(0).randbytes(64) + b"x",  # fixed: never 0x80 first
     ["is not a file written by torch.save", "65 bytes, starting 0x"]),
    ("empty file", b"", ["is not a file written by torch.save", "0 bytes, starting 0x(empty)"]),
    ("a list", [1, 2], ["holds a list, expected a state_dict"]),
    ("training checkpoint", {"epoch": 3, "model_state_dict": GOOD},
     ["entry 'epoch' is a int", "its entry 'model_state_dict' looks like one"]),
    ("wrong keys", {"0.weight": torch.zeros(6, 1, 5, 5), "extra": torch.zeros(1)},
     ["does not fit this LeNet-BN", "missing keys", "unexpected keys [extra]"]),
    ("wrong shape", {**GOOD, "0.weight": torch.zeros(3, 1, 5, 5)},
     ["does not fit this LeNet-BN", "size mismatch for 0.weight"]),
]


@pytest.mark.parametrize(("case", "content", "fragments"), BAD, ids=[c[0] for c in BAD])
def test_not_a_state_dict_gets_a_complete_message(tmp_path: Path, case: str, content: object,
                                                   fragments: list[str]) -> None:
    path = tmp_path / "c.pt"
    _write(path, content)
    with pytest.raises(InvalidArgument) as info:
        load_checkpoint(lenet_bn("torch"), path)
    message = str(info.value)
    assert message.startswith(f"checkpoint={str(path)!r}")
    for fragment in fragments:
        assert fragment in message
    assert "weights_only=False" not in message and "\x1b" not in message and "\n" not in message


def test_missing_file_and_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        read_state_dict(tmp_path / "none.pt")
    with pytest.raises(InvalidArgument, match="a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        save_checkpoint(lenet_bn("torch"), tmp_path / "no" / "c.pt")
