"""``bncheck bench``: the reference's speed on this machine, as ratios to native and to a copy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from bncheck.cli._common import console, debug_option, handles_errors, interrupted, status_line

SECTIONS = ("kernels", "memory", "lenet", "onnx", "properties")


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


@click.command()
@click.option("--section", "sections", multiple=True, type=click.Choice(SECTIONS),
              help="Run only this part (repeatable; default: all).")
@click.option("--shape", "shapes", multiple=True, metavar="NxCx...",
              help="Input shape for the kernel and memory cases (repeatable; default: "
              "256x6x24x24, 256x16x8x8, 256x120, 64x64x56x56).")
@click.option("--compiled/--no-compiled", default=True, show_default=True,
              help="Include the reference's compiled path (compiles for seconds on first use).")
@click.option("--rounds", type=click.IntRange(min=1), default=7, show_default=True,
              help="Interleaved rounds per group; each figure is the median.")
@click.option("--threads", type=click.IntRange(min=1),
              help="torch intra-op threads (default: torch's, i.e. the machine's cores).")
@click.option("--timer", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: elapsed time; cpu: process CPU time (steadier on a busy machine).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every figure as JSON here.")
@debug_option
@handles_errors
def bench(sections: tuple[str, ...], shapes: tuple[str, ...], compiled: bool, rounds: int,
          threads: int | None, timer: str, json_path: Path | None, debug: bool) -> None:
    """Time the reference BatchNorm against F.batch_norm and a tensor copy on this machine.

    Kernels: training forward, forward+backward and eval forward, each implementation timed in
    interleaved rounds; x native is its time over F.batch_norm's, x copy over a same-size
    tensor copy (the bandwidth limit). Also: memory kept for backward, LeNet-BN training
    images/s (scratch vs torch BatchNorm), the exported LeNet on onnxruntime vs eager, and
    property examples/s.
    """
    import torch

    from bncheck.infra import io as _io
    from bncheck.reference import bench as b

    if json_path is not None:
        json_path = _io.check_output_path(json_path, "--json")
    parsed = tuple(b.parse_shape(s) for s in shapes) or b.SHAPES
    chosen = sections or SECTIONS
    if threads is not None:
        torch.set_num_threads(threads)
    out = console()
    b.warm_allocator()  # before the header, which reports it
    env = b.environment()
    out.print(f"bncheck bench: torch {env['torch']}, {env['threads']} thread(s), "
              f"allocator: {env['allocator']}, timer: {timer}, {rounds} rounds, medians")
    record: dict[str, Any] = {"settings": {"threads": env["threads"], "timer": timer,
                                           "rounds": rounds}}
    results: list[b.Result] = []
    try:
        _sections(out, chosen, parsed, compiled, rounds, timer, results, record)
    except KeyboardInterrupt:
        done = [c for c in chosen if c in record or (c == "kernels" and results)]
        if json_path is not None:
            _io.write_json_atomic(json_path, {**b.results_document(results, **record),
                                              "interrupted": True})
        interrupted(f"after {len(done)} of {len(chosen)} sections"
                    + (f" (finished: {', '.join(done)})" if done else "")
                    + (f"; partial results written to {json_path}" if json_path else ""))
    _render(out, results, record)
    if json_path is not None:
        _io.write_json_atomic(json_path, b.results_document(results, **record))
        out.print(f"wrote {json_path}")


def _sections(out: Any, chosen: Any, parsed: Any, compiled: bool, rounds: int, timer: str,
              results: list[Any], record: dict[str, Any]) -> None:
    """Run the ``chosen`` sections, filling ``results`` and ``record`` as each finishes."""
    from bncheck.reference import bench as b

    with status_line(out) as step:
        if "kernels" in chosen:
            impls = [i for i in b.IMPLS if compiled or i != "compiled"]
            results += b.measure(b.kernel_cases(shapes=parsed, impls=impls), rounds=rounds,
                                 timer=timer, on_step=step)
        if "memory" in chosen:
            step("memory kept for backward")
            record["memory"] = b.memory_ratios(
                parsed, [i for i in ("native", "reference", "compiled", "seed")
                         if compiled or i != "compiled"])
        if "lenet" in chosen:
            step("LeNet-BN training steps")
            record["lenet"] = b.lenet_step_times(rounds=rounds, timer=timer)
        if "onnx" in chosen:
            step("exporting LeNet-BN, onnxruntime vs eager")
            record["onnx"] = b.onnx_latencies(rounds=rounds, timer=timer)
        if "properties" in chosen:
            step("property catalogue")
            record["properties"] = b.property_rates()


def _render(out: Any, results: list[Any], record: dict[str, Any]) -> None:
    if results:
        table = Table(title="BatchNorm kernels (median per call)")
        for col in ("mode", "shape", "implementation", "time", "x native", "x copy", "first call"):
            table.add_column(col, justify="left" if col in ("mode", "shape",
                                                             "implementation") else "right")
        for r in results:
            first = _time(r.first_call) if r.impl == "compiled" else ""
            table.add_row(r.mode, str(r.shape), r.impl, _time(r.seconds), _x(r.x_native),
                          _x(r.x_copy), first)
        out.print(table)
        out.print("x copy: time over x.clone() of the same tensor (the bandwidth limit); "
                  "first call of compiled: compilation")
    if "memory" in record:
        table = Table(title="memory kept for backward (one training forward), x input size")
        impls = sorted({i for row in record["memory"].values() for i in row})
        for col in ("shape", *impls):
            table.add_column(col)
        for shape, row in record["memory"].items():
            table.add_row(shape, *(_x(row.get(i, math.nan)) for i in impls))
        out.print(table)
    if "lenet" in record:
        lenet = record["lenet"]
        out.print(f"LeNet-BN training, batch 256: scratch {256 / lenet['scratch']:,.0f} img/s, "
                  f"torch {256 / lenet['torch']:,.0f} img/s "
                  f"(scratch at {lenet['torch'] / lenet['scratch']:.2f}x torch's images/s)")
    if "onnx" in record:
        for batch, row in record["onnx"].items():
            out.print(f"exported LeNet-BN, batch {batch}: onnxruntime {_time(row['onnxruntime'])},"
                      f" eager {_time(row['eager'])} "
                      f"({row['onnxruntime'] / row['eager']:.2f}x eager's latency)")
    if "properties" in record:
        rates = ", ".join(f"{name} {rate:.0f}" for name, rate in record["properties"].items())
        out.print(f"property examples/s (reference, ci profile): {rates}")
