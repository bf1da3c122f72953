"""Sweep the bad-input tables of tests/unit/test_bad_input.py, each case in a forked process with a
time limit, and count how each was handled: clean, misleading (wrong exit code or error type, a
message that does not say what the table says, or bad input accepted), traceback (an exception
that is not bncheck's escaped), or hang.

Usage: python fuzz/sweep_bad_input.py [--limit SECONDS] [--show misleading,traceback,hang]
Exit status 1 when any case is not clean.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TABLE = Path(__file__).parents[1] / "tests" / "unit" / "test_bad_input.py"


def _load_table():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bad_input_table", TABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _classify_cli(table, command: str, code: int, seen: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    exit_code, output, exc = table.run_cli(command)
    if exc is not None and not isinstance(exc, SystemExit):
        return "traceback", f"{type(exc).__name__}: {exc}"
    if "Traceback" in output:
        return "traceback", output[-300:]
    if exit_code == code and seen in output:
        return "clean", output[:200]
    return "misleading", f"exit {exit_code}: {output[:400]}"


def _classify_api(table, call: str, error: str, seen: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    from bncheck import errors

    raised = table.run_api(call)
    if raised is None:
        return "misleading", "accepted"
    shown = f"{type(raised).__name__}: {str(raised)[:300]}"
    if isinstance(raised, getattr(errors, error)) and seen in str(raised):
        return "clean", shown
    if isinstance(raised, errors.BNCheckError):
        return "misleading", shown
    return "traceback", shown


def _run_one(fn, *args, limit: float) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the case, write the verdict, exit at once
        os.close(read)
        try:
            verdict = fn(*args)
        except BaseException as e:  # noqa: BLE001 - a case that ends the process is a finding
            verdict = ("traceback", f"{type(e).__name__}: {e}")
        os.write(write, json.dumps(verdict).encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        return "hang", f"no answer within {limit:g} s"
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    return tuple(json.loads(data)) if data else ("traceback", "the process died")  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--show", default="misleading,traceback,hang")
    args = parser.parse_args(argv)
    table = _load_table()
    import bncheck.cli  # noqa: F401 - imported once, before the forks

    counts: Counter[str] = Counter()
    by_area: dict[str, Counter[str]] = {}
    shown = set(args.show.split(","))
    with tempfile.TemporaryDirectory() as folder:
        table.make_bad_files(Path(folder))
        os.chdir(folder)
        cases = ([("cli", c[0].split()[0], _classify_cli, c) for c in table.CLI_CASES]
                 + [("api", c[0].split("(")[0], _classify_api, c) for c in table.API_CASES])
        for kind, area, fn, case in cases:
            verdict, detail = _run_one(fn, table, *case, limit=args.limit)
            counts[verdict] += 1
            by_area.setdefault(f"{kind} {area}", Counter())[verdict] += 1
            if verdict in shown:
                print(f"[{verdict}] {case[0]}\n    expected {case[1]}: {case[2]}\n    got: "
                      f"{detail}", flush=True)
    print(f"\n{sum(counts.values())} bad inputs: " + ", ".join(
        f"{counts[k]} {k}" for k in ("clean", "misleading", "traceback", "hang")))
    for area, c in sorted(by_area.items()):
        print(f"  {area}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))
    return 0 if counts["clean"] == sum(counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
