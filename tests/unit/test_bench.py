"""bncheck.reference.bench: the gate's comparison, baseline files, the measurement loop on tiny
cases,
and ``bncheck bench`` in-process (the real benchmarks run in ``nox -s bench``)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.errors import InvalidArgument
from bncheck.reference import bench


@pytest.fixture
def one_thread():
    # Tiny kernels: on a loaded 2-core machine spinning intra-op threads make them 100x slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("now,regressed", [
    (1.25, False),    # exactly 25 % worse: allowed
    (1.2501, True),   # just past it
    (0.5, False),     # better
    (math.nan, False),  # not measured: reported as missing, not a regression
])
def test_compare_flags_ratios_more_than_25_percent_worse(now, regressed):
    regressions, missing = bench.compare({"k": now}, {"k": 1.0})
    assert [r.key for r in regressions] == (["k"] if regressed else [])
    assert missing == (["k"] if math.isnan(now) else [])


def test_compare_reports_each_regression_and_missing_keys():
    regressions, missing = bench.compare({"a": 3.0, "b": 1.0, "new": 9.0},
                                         {"a": 2.0, "b": 1.0, "gone": 1.0})
    assert [str(r) for r in regressions] == ["a: 3 now vs 2 in the baseline (+50%)"]
    assert missing == ["gone"]  # a new key in this run is not compared


def test_compare_tolerance_is_an_argument():
    assert bench.compare({"k": 1.1}, {"k": 1.0}, tolerance=0.05)[0]
    with pytest.raises(InvalidArgument, match="tolerance=-1"):
        bench.compare({}, {}, tolerance=-1)


def test_baseline_round_trip(tmp_path):
    path = tmp_path / "baseline.json"
    settings = {"threads": 1, "timer": "cpu", "rounds": 9}
    path.write_text(json.dumps(bench.baseline_document({"b": 2.0, "a": 1.5}, settings)))
    ratios, got = bench.load_baseline(path)
    assert ratios == {"a": 1.5, "b": 2.0} and got == settings


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("{", "Cannot read"),
    ('{"format": "other", "ratios": {}}', "bncheck-bench-baseline/1"),
    ("[]", "bncheck-bench-baseline/1"),
])
def test_bad_baseline_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidArgument, match=match):
        bench.load_baseline(path)


def test_committed_baseline_is_valid():
    from pathlib import Path

    ratios, settings = bench.load_baseline(Path(__file__).parents[2] / "benchmarks"
                                           / "baseline.json")
    assert settings["threads"] >= 1 and settings["timer"] in bench.TIMERS
    assert any(k.startswith("train_forward_backward") for k in ratios)


def test_gate_ratios_from_results():
    results = [bench.Result("eval_forward", (4, 3), impl, 1.0, [1.0], x, 2.0)
               for impl, x in (("native", 1.0), ("reference", 1.5), ("seed", 3.0))]
    ratios = bench.gate_ratios(results, memory={"(4, 3)": {"reference": 1.0, "native": 1.0}},
                               lenet={"scratch": 2.0, "torch": 4.0})
    assert ratios == {"eval_forward (4, 3) reference x native": 1.5,
                      "memory kept for backward (4, 3) reference x input": 1.0,
                      "lenet_train_step scratch x torch": 0.5}


def test_measure_interleaves_and_computes_ratios(one_thread):
    cases = bench.kernel_cases(shapes=[(6, 3, 2, 2)], modes=["train_forward_backward"],
                               impls=["copy", "native", "reference", "seed"])
    results = bench.measure(cases, rounds=2, min_seconds=0.0, timer="cpu")
    by = {r.impl: r for r in results}
    assert set(by) == {"copy", "native", "reference", "seed"}
    assert by["native"].x_native == 1.0 and by["copy"].x_copy == 1.0
    assert all(len(r.rounds) == 2 and r.seconds > 0 for r in results)


@pytest.mark.parametrize("kwargs,match", [
    ({"rounds": 0}, "rounds >= 1"), ({"timer": "sundial"}, "timer to be one of")])
def test_measure_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        bench.measure([], **kwargs)


def test_parse_shape():
    assert bench.parse_shape("256x6x24x24") == (256, 6, 24, 24)
    for bad in ("256", "0x3", "axb", "1x2x3x4x5x6"):
        with pytest.raises(InvalidArgument, match="--shape"):
            bench.parse_shape(bad)


def test_bench_cli_table_and_json(tmp_path, one_thread):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--section", "kernels", "--section", "memory",
                                       "--shape", "8x3x2x2", "--no-compiled", "--rounds", "2",
                                       "--timer", "cpu", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "thread(s), allocator:" in result.output and "x native" in result.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "bncheck-bench/1" and doc["settings"]["timer"] == "cpu"
    assert {r["impl"] for r in doc["kernels"]} == {"copy", "native", "reference", "seed"}


def test_bench_cli_checks_json_path_before_work(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--json", str(tmp_path / "no" / "b.json")])
    assert result.exit_code == 2
    assert "--json" in result.output and "does not exist" in result.output


def test_measure_warms_the_allocator_and_says_so(one_thread):
    """measure() warms glibc's mmap threshold once (so 1-4 MiB tensors come from the heap, not
    fresh mmaps that fault in every page) and environment() says so. That the warm-up spares the
    page faults is counted in benchmarks/test_bench.py (a process-wide count: not for the
    default suite)."""
    import os

    bench.measure(bench.kernel_cases(shapes=[(4, 3)], modes=["eval_forward"],
                                     impls=["native"]), rounds=1, min_seconds=0.0)
    assert bench._warmed
    if "LD_PRELOAD" not in os.environ:
        assert "mmap threshold warmed to 32 MiB" in bench.environment()["allocator"]
