"""Options and the ratio gate of the benchmarks (``nox -s bench``; not part of ``nox -s tests``).

    nox -s bench                          # measure; print every ratio
    nox -s bench -- --gate                # ... fail if a ratio is > 25 % worse than the baseline
    nox -s bench -- --update-baseline     # measure and rewrite benchmarks/baseline.json
    BNCHECK_BENCH_PLANT=extra-pass nox -s bench -- --gate   # a planted slowdown: must fail

Ratios are measured in one run (implementations interleaved, medians of ``--bench-rounds``);
absolute times are never compared. The defaults (1 thread, CPU-time timer) keep ratios steady on a
shared machine; the baseline records them and the gate refuses a run with other settings. Under
``--gate`` a group whose ratio looks regressed is measured up to twice more and keeps its best run
(noise from other processes rarely repeats; a real slowdown does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from bncheck.reference import bench

BASELINE = Path(__file__).parent / "baseline.json"
KEY = pytest.StashKey[dict[str, float]]()
INFO = pytest.StashKey[dict[str, float]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bncheck bench")
    group.addoption("--gate", action="store_true",
                    help="Fail when a ratio is more than 25%% worse than in --baseline.")
    group.addoption("--update-baseline", action="store_true",
                    help="Write the measured ratios to --baseline.")
    group.addoption("--baseline", default=str(BASELINE), help="Baseline file (%(default)s).")
    group.addoption("--bench-rounds", type=int, default=11, help="Interleaved rounds (11).")
    group.addoption("--bench-threads", type=int, default=1, help="torch threads (1).")
    group.addoption("--bench-timer", choices=sorted(bench.TIMERS), default="cpu",
                    help="cpu (default): process CPU time; wall: elapsed time.")
    group.addoption("--no-bench-compiled", dest="bench_compiled", action="store_false",
                    default=True, help="Skip the compiled path (it compiles for ~20 s first).")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[KEY] = {}
    config.stash[INFO] = {}
    torch.set_num_threads(config.getoption("--bench-threads"))


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> dict[str, Any]:
    """What the ratios depend on, recorded in the baseline."""
    return {"threads": torch.get_num_threads(), "timer": pytestconfig.getoption("--bench-timer"),
            "rounds": pytestconfig.getoption("--bench-rounds")}


@pytest.fixture(scope="session")
def baseline(pytestconfig: pytest.Config) -> dict[str, float] | None:
    """The baseline's ratios under --gate (the benchmarks re-measure what looks regressed)."""
    if not pytestconfig.getoption("--gate"):
        return None
    return bench.load_baseline(pytestconfig.getoption("--baseline"))[0]


@pytest.fixture(scope="session")
def reference() -> Any:
    """The reference the kernel cases time: bncheck.batch_norm, or a planted slow copy."""
    plant = os.environ.get("BNCHECK_BENCH_PLANT")
    if not plant:
        return None
    from _planted import PLANTS, slowed_batch_norm

    if plant not in PLANTS:
        raise pytest.UsageError(f"BNCHECK_BENCH_PLANT={plant!r}: expected one of {PLANTS}")
    return slowed_batch_norm


@pytest.fixture(scope="session")
def ratios(pytestconfig: pytest.Config) -> dict[str, float]:
    """Where each benchmark puts the gate's ratios it measured."""
    return pytestconfig.stash[KEY]


@pytest.fixture(scope="session")
def info(pytestconfig: pytest.Config) -> dict[str, float]:
    """Figures reported but not gated (absolute rates, runtimes that are not bncheck's)."""
    return pytestconfig.stash[INFO]


REPORT = pytest.StashKey[list[tuple[str, dict[str, bool]]]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the baseline and run the gate (the terminal summary prints what was found)."""
    config = session.config
    measured = config.stash.get(KEY, {})
    lines: list[tuple[str, dict[str, bool]]] = []
    config.stash[REPORT] = lines
    if not measured:
        return
    path = Path(config.getoption("--baseline"))
    settings = {"threads": torch.get_num_threads(), "timer": config.getoption("--bench-timer"),
                "rounds": config.getoption("--bench-rounds")}
    if config.getoption("--update-baseline"):
        from bncheck.infra.io import write_json_atomic

        write_json_atomic(path, bench.baseline_document(measured, settings))
        lines.append((f"baseline written: {path}", {}))
    if config.getoption("--gate") and not _gate(lines, measured, path, settings):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _gate(lines: list[tuple[str, dict[str, bool]]], measured: dict[str, float], path: Path,
          settings: dict[str, Any]) -> bool:
    base, base_settings = bench.load_baseline(path)
    differs = {k: (base_settings.get(k), v) for k, v in settings.items()
               if k != "rounds" and base_settings.get(k) != v}
    if differs:
        lines.append((f"gate FAILED: the baseline was measured with other settings "
                      f"{differs} (baseline, now): ratios are not comparable", {"red": True}))
        return False
    regressions, missing = bench.compare(measured, base)
    if missing:
        lines.append((f"not measured in this run ({len(missing)}): {', '.join(missing)}", {}))
    for r in regressions:
        lines.append((f"REGRESSION {r}", {"red": True}))
    if regressions:
        lines.append((f"gate FAILED: {len(regressions)} ratio(s) more than "
                      f"{bench.TOLERANCE:.0%} worse than in {path}", {"red": True}))
        return False
    lines.append((f"gate passed: {len(measured) - len(missing)} ratios within "
                  f"{bench.TOLERANCE:.0%} of {path}", {"green": True}))
    return True


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    measured = config.stash.get(KEY, {})
    if not measured:
        return
    tr = terminalreporter
    env = bench.environment()
    tr.section("bncheck bench: ratios (lower is better)")
    tr.write_line(f"torch {env['torch']}, {env['threads']} thread(s), allocator: "
                  f"{env['allocator']}, timer: {config.getoption('--bench-timer')}, "
                  f"{config.getoption('--bench-rounds')} interleaved rounds, medians")
    for key, value in sorted(measured.items()):
        tr.write_line(f"  {key:72s} {value:7.3f}")
    tr.write_line("not gated:")
    for key, value in sorted(config.stash.get(INFO, {}).items()):
        tr.write_line(f"  {key:72s} {value:9.3f}")
    for text, markup in config.stash.get(REPORT, []):
        tr.write_line(text, **markup)
