"""The benchmarks behind ``nox -s bench`` and ``bncheck bench`` (same cases: ``bncheck.bench``).

Each kernel test times one group (a mode at a shape) in interleaved rounds: a same-size copy (the
bandwidth limit), ``F.batch_norm``, the reference (eager; compiled with ``--bench-compiled``) and
the seed notebook's formula, and hands the gate each reference ratio to native. pytest-benchmark
times the reference alone as well (its table; ``--benchmark-json`` to keep it).
"""

from __future__ import annotations

from typing import Any

import pytest

from bncheck import bench

GROUPS = [(mode, shape) for shape in bench.SHAPES for mode in bench.MODES]


@pytest.mark.parametrize("mode,shape", GROUPS,
                         ids=[f"{m}-{'x'.join(map(str, s))}" for m, s in GROUPS])
def test_kernels(benchmark: Any, mode: str, shape: tuple[int, ...], settings: dict[str, Any],
                 reference: Any, ratios: dict[str, float], pytestconfig: pytest.Config) -> None:
    compiled = pytestconfig.getoption("--bench-compiled")
    impls = [i for i in bench.IMPLS if compiled or i != "compiled"]
    cases = bench.kernel_cases(shapes=[shape], modes=[mode], impls=impls, reference=reference)
    results = bench.measure(cases, rounds=settings["rounds"], timer=settings["timer"])
    ratios.update(bench.gate_ratios(results))
    benchmark.group = results[0].group
    benchmark.extra_info.update({r.impl: {"seconds": r.seconds, "x_native": r.x_native,
                                          "x_copy": r.x_copy} for r in results})
    timed = next(c for c in cases if c.impl == "reference").setup()
    benchmark.pedantic(timed, rounds=settings["rounds"], warmup_rounds=1)


def test_memory_kept_for_backward(ratios: dict[str, float], pytestconfig: pytest.Config,
                                  info: dict[str, float]) -> None:
    impls = ["native", "reference", "seed"]
    if pytestconfig.getoption("--bench-compiled"):
        impls.append("compiled")
    memory = bench.memory_ratios(impls=impls)
    ratios.update(bench.gate_ratios([], memory=memory))
    for shape, row in memory.items():
        for impl, value in row.items():
            info[f"memory kept for backward {shape} {impl} x input"] = value


def test_lenet_training_images_per_second(ratios: dict[str, float], settings: dict[str, Any],
                                          info: dict[str, float]) -> None:
    steps = bench.lenet_step_times(rounds=settings["rounds"], timer=settings["timer"])
    ratios.update(bench.gate_ratios([], lenet=steps))
    for bn, seconds in steps.items():
        info[f"lenet_train_step batch 256 {bn} images/s"] = 256 / seconds


def test_exported_lenet_latency(settings: dict[str, Any], info: dict[str, float]) -> None:
    pytest.importorskip("onnxruntime")
    for batch, row in bench.onnx_latencies(rounds=settings["rounds"],
                                           timer=settings["timer"]).items():
        info[f"lenet inference batch {batch} onnxruntime x eager"] = (row["onnxruntime"]
                                                                       / row["eager"])
        info[f"lenet inference batch {batch} eager ms"] = row["eager"] * 1e3


def test_property_examples_per_second(info: dict[str, float]) -> None:
    for name, rate in bench.property_rates().items():
        info[f"property {name} examples/s"] = rate
