"""Fuzz the ``bncheck`` command line with random argv, in-process (click's CliRunner).

Each input becomes up to 8 arguments: commands, options (and misspellings), values (numbers
incl. nan, inf, negative and huge; names of properties, mutants, runtimes; the bad files of
tests/unit/test_bad_input.py: missing, empty, truncated, random bytes, directories, /proc) and
random text. Paths outside the working folder are never formed. A command still running after
``ARGV_BUDGET`` seconds has accepted its arguments and is doing real work: it is stopped (and
its workers with it) and the input counts as handled.

A crash is: an exception escaping the command, a traceback in its output, an exit code other
than 0, 1, 2 and 130, or exit code 2 without an ``Error:`` line or click's usage message.

    python fuzz/fuzz_cli.py --seconds 300
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["bncheck"]):
    from click.testing import CliRunner

    import bncheck.cli._common  # noqa: F401 - instrumented for coverage
    import bncheck.cli._export
    import bncheck.cli._train
    import bncheck.cli._verify  # noqa: F401
    from bncheck.cli import main

#: Seconds an argv may run; longer means it was accepted and real work started (every module a
#: command imports is imported before fuzzing starts, so the budget never cuts an import).
ARGV_BUDGET = 0.5
# bench is left out: its real work compiles with torch.compile, whose lazy imports a stop at the
# budget would cut in half (its options are in the bad-input table).
COMMANDS = ["verify", "mutants", "export", "check", "gate", "train", "verfy", ""]
OPTIONS = ["--convention", "--momentum", "--eps", "--dims", "--dtypes", "--property",
           "--profile", "--examples", "--seed", "--json", "--timeout", "--world-size", "--device",
           "--names", "--fixed", "--channel-axis", "--mode-argument", "--mutant", "--bn",
           "--checkpoint", "--opset", "--exporter", "--manifest", "--model", "--model-arg",
           "--input-shape", "--calibrate", "--exports", "--variant", "--data", "--epochs",
           "--lr", "--batch-size", "--limit", "--out", "--steps", "--section", "--shape",
           "--rounds", "--threads", "--timer", "--seeds", "--debug", "--help", "--keep-bn",
           "--update", "--compare", "-h", "--", "--running-var", "--running-stat"]
VALUES = ["0", "1", "-1", "2", "1.5", "nan", "inf", "-inf", "1e400", "none", "", "x", "2,4",
          "7", "float8", "float32,float64", "train_forward", "train_forwrd", "eps_outside_sqrt",
          "scratch", "torch", "onnx", "keras", "weight=scale", "affine=true", "affine=yes",
          "1,3,8,8", "4x3", "kernels", "dynamo", "cpu", "cuda", "ci", "dev",
          "torch.nn:BatchNorm2d", "torch.nn:BatchNorm2D", "torch.nn:Linear", "math:pi",
          "nope.py:BN", "dir.py:BN", "empty.py:BN", "syntax.py:BN", "raising_bn.py:RaisingBN",
          "hanging_lenet_bn.py:BN", "nodir/r.json", "/proc/r.json", "a_dir", "a_file", "r.json",
          "m.onnx", "empty.onnx", "random.onnx", "truncated.onnx", "tiny.onnx",
          "lenet_like.onnx", "bad.json", "empty.pt", "random.pt", "model.pt", "idx_truncated",
          "idx_labels_as_images", "idx_empty", "idx_ok", "run"]
VOCABULARY = COMMANDS + OPTIONS + VALUES


class _Budget(BaseException):
    """The command ran past ARGV_BUDGET (a BaseException: no handler of bncheck's takes it)."""


def _stop(signum: int, frame: object) -> None:
    raise _Budget


def _token(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeIntInRange(0, 9) == 0:  # free text, kept inside the working folder
        text = fdp.ConsumeUnicodeNoSurrogates(12)
        return text.replace("/", "_").replace("\\", "_").lstrip("~").replace("..", "_")
    return VOCABULARY[fdp.ConsumeIntInRange(0, len(VOCABULARY) - 1)]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    argv = [COMMANDS[fdp.ConsumeIntInRange(0, len(COMMANDS) - 1)]]
    argv += [_token(fdp) for _ in range(fdp.ConsumeIntInRange(0, 7))]
    argv = [a for a in argv if a != ""] if argv[0] == "" else argv
    # SIGUSR2 from a timer thread (libFuzzer's own -timeout uses SIGALRM).
    timer = threading.Timer(ARGV_BUDGET, os.kill, (os.getpid(), signal.SIGUSR2))
    timer.start()
    try:
        result = CliRunner().invoke(main, argv)
        timer.cancel()
    except _Budget:
        return
    finally:
        timer.cancel()
    shown = f"bncheck {shlex.join(argv)}"
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (
        f"{shown}: {type(exc).__name__}: {exc}")
    assert "Traceback" not in result.output or "--debug" in argv, f"{shown}:\n{result.output}"
    assert result.exit_code in (0, 1, 2, 130), f"{shown}: exit {result.exit_code}"
    if result.exit_code == 2:
        assert "Error:" in result.output or "Usage:" in result.output, (
            f"{shown}:\n{result.output}")


def _prepare() -> None:
    """A working folder with the bad files of the bad-input table; the alarm handler."""
    table = Path(__file__).resolve().parents[1] / "tests" / "unit" / "test_bad_input.py"
    spec = importlib.util.spec_from_file_location("bad_input_table", table)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = Path(tempfile.mkdtemp(prefix="bncheck-fuzz-cli-"))
    module.make_bad_files(folder)
    os.chdir(folder)
    os.environ["HYPOTHESIS_PROFILE"] = "dev"
    for name in ("torch._dynamo", "hypothesis", "onnx", "onnxruntime", "onnxscript",
                 "bncheck.engine.runner", "bncheck.infra.watchdog", "bncheck.engine.mutants",
                 "bncheck.onnx.export", "bncheck.onnx.verify", "bncheck.onnx.standalone",
                 "bncheck.onnx.gate", "bncheck.training", "bncheck.reference.bench",
                 "bncheck.cli._check", "bncheck.cli._gate",
                 "bncheck.cli._bench", "bncheck.cli._mutants", "bncheck.distributed.verify"):
        importlib.import_module(name)
    signal.signal(signal.SIGUSR2, _stop)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _runner import main as run

    sys.argv = [sys.argv[0]] + [str(Path(a).resolve()) if Path(a).exists() else a
                                for a in sys.argv[1:]]  # files to replay: before _prepare's cd
    _prepare()
    run("cli", test_one_input, timeout=60)
