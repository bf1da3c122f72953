"""A run that cannot finish still reports what it did: a --json that cannot be written keeps
the results and exits 2; Ctrl-C exits 130 and writes the finished properties (one worker or
several)."""

from __future__ import annotations

import os

from click.testing import CliRunner

from bncheck.cli import main


def test_json_write_failure_keeps_the_results_and_exits_2(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = tmp_path / "vanishing.py"
    # The folder exists when --json is checked and is gone when the report is written.
    target.write_text(f"import shutil\nfrom torch.nn import BatchNorm1d as BN\n"
                      f"shutil.rmtree({str(out_dir)!r})\n")
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--property", "train_forward",
                                  "--examples", "2", "--json", str(out_dir / "r.json")])
    assert r.exit_code == 2, r.output
    assert "1 passed, 0 failed" in r.output and "(no such folder)" in r.output
    assert "Traceback" not in r.output


def test_ctrl_c_exits_130_and_writes_the_partial_report(tmp_path):
    # A real SIGINT to this process (bncheck's), sent while the target runs in its worker.
    target = tmp_path / "interrupting.py"
    target.write_text("import os, signal, time, torch\nfrom torch import nn\n"
                      "class BN(nn.BatchNorm1d):\n"
                      "    def forward(self, x):\n"
                      "        if x.dtype == torch.float16:\n"
                      f"            os.kill({os.getpid()}, signal.SIGINT)\n"
                      "            time.sleep(60)\n"
                      "        return super().forward(x)\n")
    out = tmp_path / "r.json"
    # One worker: train_forward has finished when reduced_precision interrupts (side by side,
    # which one finishes first depends on the machine).
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--examples", "2",
                                  "--property", "train_forward", "--property",
                                  "reduced_precision", "--json", str(out), "--jobs", "1"])
    assert r.exit_code == 130, r.output
    assert "interrupted (Ctrl-C) after 1 properties (finished: train_forward)" in r.output
    import json

    data = json.loads(out.read_text())
    assert data["interrupted"] is True and [p["name"] for p in data["properties"]] == [
        "train_forward"]


def test_ctrl_c_with_jobs_reports_every_finished_property(tmp_path):
    # Side by side: the slow property interrupts only once every other one has finished (a
    # marker file), out of catalogue order; the partial report still holds them all.
    target = tmp_path / "interrupting.py"
    target.write_text("import os, signal, time, torch\nfrom pathlib import Path\n"
                      "from torch import nn\n"
                      "class BN(nn.BatchNorm1d):\n"
                      "    def forward(self, x):\n"
                      "        if x.dtype == torch.float16:\n"
                      f"            time.sleep(3)\n"
                      f"            os.kill({os.getpid()}, signal.SIGINT)\n"
                      "            time.sleep(60)\n"
                      "        return super().forward(x)\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["verify", f"{target}:BN", "--examples", "2", "--property",
                                  "reduced_precision", "--property", "eval_forward",
                                  "--dtypes", "float32,float16", "--json", str(out),
                                  "--jobs", "2"])
    assert r.exit_code == 130, r.output
    import json

    data = json.loads(out.read_text())  # eval_forward (2nd in order) finished first
    assert [p["name"] for p in data["properties"]] == ["eval_forward"], r.output
