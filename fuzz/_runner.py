"""Run one atheris (libFuzzer) harness for a bounded time from its seed corpus in fuzz/corpus/.

Each harness calls :func:`main` with its name and ``TestOneInput``; the command line is
``python fuzz/fuzz_NAME.py [--seconds N] [--runs N] [--timeout S]``. New inputs that reach new
coverage go to a temporary folder (the committed corpus is read, never written); a crash or a
hang is written to fuzz/findings/NAME/ (not committed) and libFuzzer exits non-zero with the
input that reproduces it: ``python fuzz/fuzz_NAME.py fuzz/findings/NAME/crash-...`` replays it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

FUZZ = Path(__file__).resolve().parent


def main(name: str, test_one_input: Callable[[bytes], None], *, timeout: int = 60) -> None:
    """Fuzz ``test_one_input`` for ``--seconds`` (or ``--runs``); libFuzzer's own flags and
    files to replay may follow."""
    import atheris

    parser = argparse.ArgumentParser(description=f"Fuzz {name} (atheris/libFuzzer).")
    parser.add_argument("--seconds", type=int, default=60, help="total time (default 60)")
    parser.add_argument("--runs", type=int, default=-1, help="stop after N inputs")
    parser.add_argument("--timeout", type=int, default=timeout,
                        help=f"seconds one input may take before it counts as a hang "
                             f"(default {timeout})")
    known, rest = parser.parse_known_args()
    replay = [str(Path(a).resolve()) for a in rest if not a.startswith("-")]
    findings = FUZZ / "findings" / name
    findings.mkdir(parents=True, exist_ok=True)
    flags = [f"-timeout={known.timeout}", f"-artifact_prefix={findings}{os.sep}",
             "-rss_limit_mb=6144", "-print_final_stats=1", "-max_len=4096",
             *[a for a in rest if a.startswith("-")]]
    if replay:
        args = [sys.argv[0], *flags, *replay]
    else:
        work = tempfile.mkdtemp(prefix=f"bncheck-fuzz-{name}-")
        args = [sys.argv[0], *flags, f"-max_total_time={known.seconds}", f"-runs={known.runs}",
                work, str(FUZZ / "corpus" / name)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
