"""``bncheck train`` end to end: three real subprocesses (a fresh machine, Ctrl-C, a hanging
layer), the rest in-process with click's runner (same code path, no start-up cost)."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.infra.io import file_mode
from bncheck.onnx.build import build_model
from bncheck.training import STAND_IN_LABEL, load_checkpoint
from bncheck.training.data import IDX_FILES, synthetic_dataset, write_fashion_mnist

FILES = ["checkpoint.pt", "command.txt", "curves.png", "metrics.json"]


def fresh_env(home: Path) -> dict[str, str]:
    """This process's environment as a fresh machine has it: no data anywhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("BNCHECK_DATA", "XDG_CACHE_HOME")}
    return {**env, "HOME": str(home)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic Fashion-MNIST look-alike: 64 train (gzipped) and 32 test samples."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), synthetic_dataset(64),
                               synthetic_dataset(32, seed=1), gz=True)


@pytest.mark.slow
def test_fresh_machine_trains_on_the_labelled_stand_in(tmp_path: Path) -> None:
    """`bncheck train --epochs 1` with no data anywhere: checkpoint, metrics, plot; every line
    and every file says stand-in; `export --checkpoint` takes the checkpoint."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "bncheck", "train", "--epochs", "1",
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env=fresh_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith("[stand-in] ") for line in lines)  # piped: no progress bar
    assert STAND_IN_LABEL in lines[0] and "To train on Fashion-MNIST" in lines[1]
    assert sum(line.split()[1:2] == ["1"] and len(line.split()) == 7 for line in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert all(stat.S_IMODE((out / f).stat().st_mode) == file_mode() for f in FILES)
    record = json.loads((out / "metrics.json").read_text())
    assert (record["status"], record["stand_in"], record["data"]["label"]) == (
        "completed", True, STAND_IN_LABEL)
    assert [e["epoch"] for e in record["epochs"]] == [1] and len(record["population_gaps"]) == 4
    assert record["versions"]["torch"].startswith("2.")
    assert (out / "command.txt").read_text().splitlines()[:2] == [
        f"# {STAND_IN_LABEL}",
        "bncheck train --bn scratch --epochs 1 --lr 1.0 --batch-size 256 --seed 0 --out "
        f"{out}"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stand-in" in (load_checkpoint(build_model("scratch"), out / "checkpoint.pt") or "")
    build_model("torch", checkpoint=out / "checkpoint.pt")  # as `bncheck export --checkpoint`


@pytest.mark.slow
def test_ctrl_c_writes_the_finished_epochs_and_exits_130(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", "train", "--data", str(data_dir),
                             "--bn", "torch", "--epochs", "100000", "--batch-size", "16",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.startswith("Error: interrupted (Ctrl-C) after ") and "Traceback" not in stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "interrupted" and len(record["epochs"]) >= 1
    assert f"of 100000 epochs. Wrote {out / 'checkpoint.pt'}" in stderr
    assert f"holds epoch {record['epochs'][-1]['epoch']}" in stderr
    assert sorted(p.name for p in out.iterdir()) == FILES


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result.exit_code, result.output


def test_table_remainder_statistics_and_relocated_files(data_dir: Path, tmp_path: Path) -> None:
    ckpt, metrics = tmp_path / "lenet.pt", tmp_path / "m.json"
    code, output = invoke("--data", data_dir, "--bn", "torch", "--epochs", "2", "--batch-size",
                          "16", "--limit", "33", "--out", tmp_path / "run", "--checkpoint", ckpt,
                          "--json", metrics)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith(f"LeNet-BN (bn=torch) on Fashion-MNIST ({data_dir}): 33 of 64 "
                               f"training, 32 test samples")
    assert "33 training samples = 2 x 16 + 1: the one sample left over each epoch" in lines[1]
    assert lines[2].split() == ["epoch", "train", "loss", "train", "acc", "test", "acc",
                                "seconds", "examples/s"]
    assert [line.split()[0] for line in lines[3:5]] == ["1", "2"]
    assert sum("mean off by" in line for line in lines) == 4
    record = json.loads(metrics.read_text())
    assert (record["status"], record["num_train"], record["dropped_per_epoch"]) == (
        "completed", 33, 1)
    assert f"{record['epochs'][-1]['test_acc']:.4f}" in lines[4]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["command.txt", "curves.png"]
    assert lines[-1] == f"Next: bncheck export lenet.onnx --checkpoint {ckpt}"
    load_checkpoint(build_model("scratch"), ckpt)


def test_a_diverging_run_exits_2_and_keeps_its_metrics(data_dir: Path, tmp_path: Path) -> None:
    code, output = invoke("--data", data_dir, "--lr", "1e30", "--batch-size", "16", "--out",
                          tmp_path)
    assert code == 2
    error = output.splitlines()[-1]
    assert error.startswith("Error: training diverged at epoch 1, step 2: the batch loss")
    assert error.endswith("no epoch finished, no checkpoint (status: diverged)")
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["epochs"] == []


MY_BN = '''
import time

import torch

from bncheck import BatchNorm


class MyBN(BatchNorm):
    """A user's layer: bncheck's reference under another name."""


class Biased(BatchNorm):
    """Forgets the n / (n - 1) of the running variance."""

    def forward(self, x):
        n = x.numel() // x.shape[1]
        old = self.running_var.clone()
        y = super().forward(x)
        if self.training:
            self.running_var.copy_(old + (self.running_var - old) * (n - 1) / n)
        return y


class LazyBuffer(BatchNorm):
    """Trains as the reference, but registers a buffer in its first training forward: a fresh
    layer cannot load the checkpoint, so the export step fails."""

    def forward(self, x):
        if self.training and not hasattr(self, "seen"):
            self.register_buffer("seen", torch.ones(()))
        return super().forward(x)


_HUNG = []


class HangsInTraining(BatchNorm):
    """Hangs in its first training forward: 60 s (once per process, so that a train command
    without the verify step would end, late, rather than hang the test run)."""

    def forward(self, x):
        if self.training and not _HUNG:
            _HUNG.append(True)
            time.sleep(60)
        return super().forward(x)
'''


@pytest.fixture(scope="module")
def my_bn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("user") / "my_bn.py"
    target.write_text(MY_BN)
    return target


def test_your_own_batchnorm_is_verified_trained_and_exported(data_dir: Path, my_bn: Path,
                                                              tmp_path: Path) -> None:
    """The loop: verify (13 properties), train, export DIR/lenet.onnx through `bncheck
    export`'s code, checked on every runtime; `bncheck check` accepts the file."""
    out = tmp_path / "run"
    code, output = invoke("--data", data_dir, "--bn", f"{my_bn}:MyBN", "--epochs", "1",
                          "--batch-size", "16", "--out", out)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == f"verify: bncheck verify {my_bn}:MyBN (profile ci, before any training)"
    assert lines[1].startswith("verify: 13 passed in ")
    assert lines[2].startswith("LeNet-BN (bn=") and lines[4].split()[0] == "1"  # then training
    assert f"export: bncheck export {out / 'lenet.onnx'} --checkpoint {out / 'checkpoint.pt'} " \
           f"--bn {my_bn}:MyBN" in lines
    assert "verified: lenet.onnx matches the eager model on every runtime" in lines
    assert lines[-2] == (f"Wrote {out / 'lenet.onnx'}, {out / 'lenet.json'}, "
                         f"{out / 'lenet.npz'}")
    assert lines[-1] == f"Next: bncheck check {out / 'lenet.onnx'}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*FILES, "lenet.json", "lenet.npz", "lenet.onnx"])
    record = json.loads((out / "metrics.json").read_text())
    assert (record["verify"]["status"], record["verify"]["summary"]) == (
        "passed", "13 passed, 0 failed, 0 skipped")
    assert (record["export"]["status"], record["export"]["files"][0]) == (
        "verified", str(out / "lenet.onnx"))
    check = CliRunner().invoke(main, ["check", str(out / "lenet.onnx")])
    assert check.exit_code == 0 and "sha256 matches the manifest's" in check.output, \
        check.output


def test_a_buggy_layer_stops_before_training_naming_the_property(data_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A bundled mutant as TARGET (module:Name): its running variance starts at zeros, so a
    fresh model in eval divides by sqrt(eps). verify names initial_state, exit 1, and nothing
    is trained or written. (The cheapest mutant to verify: the other properties pass.)"""
    out = tmp_path / "run"
    bn = "bncheck.engine.mutants:ZeroInitRunningVar"
    code, output = invoke("--data", data_dir, "--bn", bn, "--epochs", "1", "--batch-size",
                          "16", "--out", out)
    assert code == 1, output
    lines = output.splitlines()
    assert lines[1] == "verify: 1 failed: initial_state (11 passed, 1 failed, 1 skipped)"
    assert lines[2].startswith("  initial_state: ")
    assert lines[-1] == (f"Error: {bn} failed verification (initial_state), so it was not "
                         f"trained and nothing was written. The full report: bncheck verify "
                         f"{bn} (--no-verify trains it anyway)")
    assert "epoch" not in output and not out.exists()


def test_no_verify_trains_it_anyway_and_a_failed_export_keeps_the_training(
        data_dir: Path, my_bn: Path, tmp_path: Path) -> None:
    """--no-verify trains an unchecked layer; its export fails (its checkpoint does not load
    into a fresh layer): exit 1, one paragraph naming the step, the training's files kept."""
    out = tmp_path / "run"
    code, output = invoke("--data", data_dir, "--bn", f"{my_bn}:LazyBuffer", "--no-verify",
                          "--epochs", "1", "--batch-size", "16", "--out", out)
    assert code == 1, output
    lines = output.splitlines()
    assert lines[0] == (f"verify: skipped (--no-verify): {my_bn}:LazyBuffer is trained without "
                        f"being checked")
    assert "unexpected keys [1.seen, 10.seen, 13.seen, 5.seen]" in output
    assert lines[-1] == (
        f"Error: the export step failed (above), so {out / 'lenet.onnx'} was not written; "
        f"training finished and its files are kept: {out / 'checkpoint.pt'}, "
        f"{out / 'metrics.json'}, {out / 'curves.png'}, {out / 'command.txt'}. Repeat the step:"
        f" bncheck export {out / 'lenet.onnx'} --checkpoint {out / 'checkpoint.pt'} --bn "
        f"{my_bn}:LazyBuffer")
    assert sorted(p.name for p in out.iterdir()) == FILES
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "completed" and len(record["epochs"]) == 1
    assert record["verify"] == {"status": "skipped", "reason": "--no-verify"}
    assert (record["export"]["status"], record["export"]["exit_code"]) == ("failed", 2)
    assert (out / "command.txt").read_text().splitlines()[0].endswith(" --no-verify")


def test_a_hanging_layer_is_stopped_by_the_verify_step_within_the_timeout(
        data_dir: Path, my_bn: Path, tmp_path: Path) -> None:
    # A real process: were the layer not stopped, subprocess's timeout (a hang guard, not a
    # measurement: the run takes seconds) fails the test instead of hanging the suite.
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bncheck", "train", "--data", str(data_dir),
                        "--bn", f"{my_bn}:HangsInTraining", "--timeout", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    code, output = r.returncode, r.stdout + r.stderr
    assert code == 1, output
    assert re.search(r"\n  preflight: the target did not return within 1 s \(at \S*my_bn\.py:"
                     r"\d+ in forward\)\n", output), output
    assert output.splitlines()[-1].startswith(f"Error: {my_bn}:HangsInTraining failed "
                                              f"verification (preflight), so it was not trained")
    assert f"bncheck verify {my_bn}:HangsInTraining --timeout 1 (--no-verify" in output
    assert not out.exists()


def test_compare_with_your_own_batchnorm(data_dir: Path, my_bn: Path) -> None:
    """--compare is itself a check against torch's layer: no verify step, no export."""
    code, output = invoke("--data", data_dir, "--bn", f"{my_bn}:MyBN", "--compare", "--steps",
                          "3", "--batch-size", "16")
    assert code == 0 and "agree at every one of 3 steps" in output, output
    assert "verify:" not in output
    code, output = invoke("--data", data_dir, "--bn", f"{my_bn}:Biased", "--compare",
                          "--batch-size", "16")
    assert code == 1
    assert "step 1: layer 5 (5: Biased(16) vs BatchNorm2d): running_var" in output
    assert f"bn={my_bn}:Biased and bn=torch diverge at step 1 of 1." in output


@pytest.mark.parametrize(("args", "fragment"), [
    (["--epochs", "0"], "--epochs=0"),
    (["--batch-size", "1"], "Expected --batch-size >= 2 (BatchNorm needs at least 2 samples"),
    (["--limit", "0"], "--limit=0"),
    (["--steps", "0"], "--steps=0"),
    (["--lr", "inf"], "--lr=inf"),
    (["--lr", "-1"], "--lr=-1"),
    (["--checkpoint", "{missing}/c.pt"], "--checkpoint='{missing}/c.pt'"),
    (["--json", "{missing}/h.json"], "--json='{missing}/h.json'"),
    (["--out", "{missing}/run"], "--out='{missing}/run.probe'"),
    (["--out", "/proc/bncheck-run"], "is not writable"),
    (["--json", "/proc/bncheck.json"], "is not writable"),
    (["--out", "{file}"], "Expected --out to be a directory"),
    (["--data", "{missing}"], "does not exist"),
    (["--data", "{truncated}"], "truncated data"),
    (["--bn", "{missing}/bn.py:BN"], "does not exist"),
])
def test_bad_options_exit_2_in_one_paragraph_before_any_work(data_dir: Path, tmp_path: Path,
                                                             args: list[str],
                                                             fragment: str) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in (*IDX_FILES["train"], *IDX_FILES["test"]):
        content = gzip.decompress((data_dir / f"{name}.gz").read_bytes())
        (truncated / name).write_bytes(content[:-1] if name == IDX_FILES["test"][1] else content)
    (tmp_path / "file").write_text("x")
    paths = {"missing": str(tmp_path / "missing"), "truncated": str(truncated),
             "file": str(tmp_path / "file")}
    out = tmp_path / "out"
    argv = ["--data", str(data_dir), "--out", str(out),
            *(a.format(**paths) for a in args)]
    code, output = invoke(*argv)
    assert code == 2, output
    assert output.count("\n") == 1 and output.startswith("Error: ")
    assert fragment.format(**paths) in output
    assert not out.exists()  # nothing was written


def test_help_is_the_docstring() -> None:
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "Train LeNet-BN on Fashion-MNIST as the seed notebook does, and watch it." in \
        result.output
    assert "--compare" in result.output and "--out DIR" in result.output
    assert torch.__version__  # torch imported: the command's module loads
