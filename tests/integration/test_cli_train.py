"""``bncheck train`` end to end: a real subprocess on small IDX files, and its error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.data import IDX_FILES, synthetic_dataset, write_idx
from bncheck.models import lenet_bn


def bncheck(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bncheck", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic Fashion-MNIST look-alike: 256 train (gzipped) and 64 test samples."""
    root = tmp_path_factory.mktemp("fashion")
    for split, n, seed, suffix in (("train", 256, 0, ".gz"), ("test", 64, 1, "")):
        data = synthetic_dataset(n, seed=seed)
        images, labels = IDX_FILES[split]
        write_idx(root / f"{images}{suffix}", (data.images[:, 0] * 255).round().to(torch.uint8))
        write_idx(root / f"{labels}{suffix}", data.labels.to(torch.uint8))
    return root


def test_train_writes_table_checkpoint_and_json(data_dir: Path, tmp_path: Path) -> None:
    ckpt, out = tmp_path / "lenet.pt", tmp_path / "history.json"
    result = bncheck("train", "--data", data_dir, "--bn", "torch", "--epochs", "2",
                     "--batch-size", "32", "--limit", "128", "--seed", "3",
                     "--checkpoint", ckpt, "--json", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "bn=torch" in lines[0] and "128 of 256 training samples, 64 test samples" in lines[0]
    assert lines[1].split() == ["epoch", "train", "loss", "train", "acc", "test", "acc", "seconds"]
    assert [line.split()[0] for line in lines[2:4]] == ["1", "2"]
    assert any(line.startswith("Final: ") for line in lines)

    state = torch.load(ckpt, weights_only=True)
    for bn in ("scratch", "torch"):  # what `bncheck export --checkpoint` loads
        lenet_bn(bn).load_state_dict(state)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    record = json.loads(out.read_text())
    assert (record["bn"], record["limit"], record["seed"], record["num_train"]) == ("torch", 128,
                                                                                   3, 128)
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert f"{record['epochs'][-1]['test_acc']:.4f}" in lines[3]


def test_bad_data_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not data")
    result = bncheck("train", "--data", tmp_path, "--epochs", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: ")
    assert "missing train-images-idx3-ubyte" in result.stderr and "notes.txt" in result.stderr


# In-process (click's runner) for the rest of the error table: same code path, no start-up cost.
@pytest.mark.parametrize(("args", "fragment"), [
    (["--data", "{missing}"], "does not exist"),
    (["--epochs", "0"], "--epochs=0"),
    (["--batch-size", "-2"], "--batch-size=-2"),
    (["--limit", "0"], "--limit=0"),
    (["--lr", "inf"], "--lr=inf"),
    (["--lr", "-1"], "--lr=-1"),
    (["--checkpoint", "{missing}/c.pt"], "--checkpoint's directory to exist"),
    (["--json", "{missing}/h.json"], "--json's directory to exist"),
    (["--data", "{truncated}"], "truncated data"),
])
def test_bad_options_exit_2_with_one_line(data_dir: Path, tmp_path: Path, args: list[str],
                                          fragment: str) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in (*IDX_FILES["train"], *IDX_FILES["test"]):
        src = data_dir / name if (data_dir / name).exists() else data_dir / f"{name}.gz"
        (truncated / src.name).write_bytes(src.read_bytes())
    labels = truncated / IDX_FILES["test"][1]
    labels.write_bytes(labels.read_bytes()[:-1])
    paths = {"missing": str(tmp_path / "missing"), "truncated": str(truncated)}
    argv = ["train", "--data", str(data_dir), *(a.format(**paths) for a in args)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert fragment in result.output
    assert isinstance(result.exception, SystemExit)  # exited, no exception escaped


def test_interrupt_exits_130_and_names_the_saved_epoch(data_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import bncheck.training

    def interrupted(*args: Any, on_epoch: Any, **kwargs: Any) -> None:
        on_epoch(bncheck.training.EpochStats(1, 0.5, 0.8, 0.7, 1.0))
        raise KeyboardInterrupt

    monkeypatch.setattr(bncheck.training, "train", interrupted)
    ckpt = tmp_path / "c.pt"
    result = CliRunner().invoke(main, ["train", "--data", str(data_dir), "--epochs", "3",
                                       "--checkpoint", str(ckpt)])
    assert result.exit_code == 130
    assert f"Error: interrupted after 1 of 3 epochs; {ckpt} holds epoch 1\n" in result.output


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "x"), "--debug"])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "DataError"


def test_help_is_the_docstring() -> None:
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "Train LeNet-BN on Fashion-MNIST as the seed notebook does." in result.output
    assert "--checkpoint OUT.pt" in result.output
