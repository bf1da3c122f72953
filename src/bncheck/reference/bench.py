"""Benchmark cases shared by ``benchmarks/`` (``nox -s bench``) and ``bncheck bench``.

>>> from bncheck.reference.bench import kernel_cases, measure
>>> cases = kernel_cases(shapes=[(8, 3, 4, 4)], modes=["eval_forward"], impls=["copy", "native",
...                                                                          "reference"])
>>> results = measure(cases, rounds=3, min_seconds=0.001)
>>> sorted(r.impl for r in results)
['copy', 'native', 'reference']

Every figure is a **ratio measured in one process**: the implementations of a group (one mode at
one shape) are timed in interleaved rounds (the order rotates each round) and each time is the
median over the rounds, so a slower or busier machine moves all of a group together. Ratios, not
absolute times, are what the regression gate (:func:`compare`) checks against the committed
baseline ``benchmarks/baseline.json``.

Implementations: ``copy`` (``x.clone()``, a same-size tensor copy including its allocation: the
bandwidth limit of an op that returns a new tensor), ``native`` (``F.batch_norm``),
``reference`` (:func:`bncheck.batch_norm`), ``compiled`` (the same with ``compiled=True``) and
``seed`` (the seed notebook's formula, copied below).
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import bncheck
from bncheck.errors import InvalidArgument

__all__ = ["SHAPES", "MODES", "IMPLS", "TIMERS", "Case", "Result", "environment",
           "warm_allocator", "kernel_cases",
           "measure", "saved_bytes", "memory_ratios", "lenet_step_times", "onnx_latencies",
           "property_rates", "gate_ratios", "compare", "Regression", "load_baseline",
           "baseline_document", "results_document", "parse_shape", "TOLERANCE"]

#: LeNet-BN's first conv BN, its second, its first fully connected BN, and a ResNet stage.
SHAPES: tuple[tuple[int, ...], ...] = ((256, 6, 24, 24), (256, 16, 8, 8), (256, 120),
                                       (64, 64, 56, 56))
MODES = ("train_forward", "train_forward_backward", "eval_forward")
IMPLS = ("copy", "native", "reference", "compiled", "seed")
#: A ratio that grows by more than this fraction over the baseline fails the gate.
TOLERANCE = 0.25

BatchNormFn = Callable[..., Tensor]


#: Just under glibc's 32 MiB cap on its dynamic mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX``).
_WARM_BYTES = (32 << 20) - (64 << 10)
_warmed = False


def warm_allocator() -> None:
    """Allocate and free one block just under 32 MiB, once per process (:func:`measure` does).

    glibc serves a block above its mmap threshold (128 KiB at start) with a fresh mmap whose
    pages fault in on first touch (about 1.7 us a 4 KiB page here, more than copying the data),
    and raises the threshold to the size of each such block freed, up to 32 MiB. Without this,
    a process's history decides whether a 1-4 MB tensor costs page faults on every call (2x
    swings of ``F.batch_norm`` at (256, 16, 8, 8) between runs); after it, blocks up to 32 MiB
    come from the heap in every run, as in a training process once it has freed a block larger
    than those it allocates later. Blocks above 32 MiB stay fresh mmaps either way.
    """
    global _warmed
    if not _warmed:
        block = torch.empty(_WARM_BYTES, dtype=torch.uint8)  # never touched: no page faults
        del block
        _warmed = True


def environment() -> dict[str, Any]:
    """What the figures depend on: threads, allocator setting, versions, CPU."""
    preload = os.environ.get("LD_PRELOAD", "")
    malloc = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE")
    if preload:
        allocator = f"LD_PRELOAD={Path(preload).name}"
    elif malloc:
        allocator = "glibc malloc, " + ", ".join(f"{k}={v}" for k, v in sorted(malloc.items()))
    else:
        allocator = "glibc malloc (defaults)"
    if thp:
        allocator += f", THP_MEM_ALLOC_ENABLE={thp}"
    if _warmed and not preload:
        allocator += ", mmap threshold warmed to 32 MiB"
    return {"threads": torch.get_num_threads(), "allocator": allocator,
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


@dataclass(frozen=True)
class Case:
    """One timed callable: ``group`` (mode and shape) and ``impl`` say what it is."""

    mode: str
    shape: tuple[int, ...]
    impl: str
    setup: Callable[[], Callable[[], object]] = field(repr=False, compare=False)

    @property
    def group(self) -> str:
        return f"{self.mode} {_shape_text(self.shape)}"


@dataclass
class Result:
    """Median seconds per call over the rounds; ratios to the group's native and copy."""

    mode: str
    shape: tuple[int, ...]
    impl: str
    seconds: float
    rounds: list[float]
    x_native: float = math.nan
    x_copy: float = math.nan
    first_call: float = 0.0  # the untimed first call: compile time for ``compiled``

    @property
    def group(self) -> str:
        return f"{self.mode} {_shape_text(self.shape)}"


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"256x6x24x24"`` as ``(256, 6, 24, 24)``: 2 to 5 positive sizes.

    Raises:
        InvalidArgument: anything else, named ``--shape``.
    """
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not 2 <= len(shape) <= 5 or min(shape) < 1:
        raise InvalidArgument(f"Expected --shape as 2 to 5 positive sizes like 256x6x24x24, "
                              f"received --shape={text!r}")
    return shape


def _seed_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # The seed notebook's function (cell In[2]) as it runs, with only its `bata` typo fixed:
    # its cost, defects included (the batch variance is computed and then not used).
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)  # noqa: F841
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # noqa: F841
        X_hat = (X - mean) / torch.sqrt(moving_var + eps)
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        moving_var = momentum * moving_var + (1 - momentum) * moving_var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


def _inputs(shape: tuple[int, ...], grad: bool) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    return {"x": (torch.randn(shape, generator=gen) * 2 + 0.5).requires_grad_(grad),
            "g": torch.randn(shape, generator=gen),
            "w": (torch.rand(c, generator=gen) + 0.5).requires_grad_(grad),
            "b": torch.randn(c, generator=gen).requires_grad_(grad),
            "rm": torch.zeros(c), "rv": torch.ones(c)}


def _bn_callable(impl: str, mode: str, t: dict[str, Tensor],
                 reference: BatchNormFn) -> Callable[[], object]:
    x, g, w, b, rm, rv = t["x"], t["g"], t["w"], t["b"], t["rm"], t["rv"]
    training = mode != "eval_forward"
    if impl == "copy":
        return lambda: x.detach().clone()
    if impl == "seed":
        view = [1, x.shape[1]] + [1] * (x.dim() - 2)
        sw, sb, sm, sv = (v.view(view) for v in (w, b, rm, rv))

        def forward() -> Tensor:
            return _seed_batch_norm(x, sw, sb, sm, sv, 1e-5, 0.9)[0]  # type: ignore[no-any-return]
    else:
        fn = {"native": F.batch_norm, "reference": reference,
              "compiled": lambda *a: reference(*a, compiled=True)}[impl]

        def forward() -> Tensor:
            return fn(x, rm, rv, w, b, training, 0.1, 1e-5)  # type: ignore[no-any-return]

    if mode == "train_forward_backward":
        return lambda: torch.autograd.grad(forward(), (x, w, b), g)
    if mode == "eval_forward":
        def no_grad_forward() -> Tensor:
            with torch.no_grad():
                return forward()
        return no_grad_forward
    return forward


def kernel_cases(*, shapes: Iterable[tuple[int, ...]] = SHAPES, modes: Iterable[str] = MODES,
                 impls: Iterable[str] = IMPLS,
                 reference: BatchNormFn | None = None) -> list[Case]:
    """The BatchNorm timing cases; ``reference`` replaces :func:`bncheck.batch_norm` (the
    benchmarks plant a slowdown this way to show that the gate catches one)."""
    ref = reference or bncheck.batch_norm
    impls = tuple(impls)
    for name in impls:
        if name not in IMPLS:
            raise InvalidArgument(f"Expected impls among {list(IMPLS)}, received {name!r}")
    cases = []
    for shape in shapes:
        for mode in modes:
            if mode not in MODES:
                raise InvalidArgument(f"Expected modes among {list(MODES)}, received {mode!r}")
            for impl in impls:
                if impl == "compiled" and mode == "eval_forward":
                    continue  # compiled=True changes training mode only
                if impl == "seed" and len(shape) not in (2, 4):
                    continue

                def setup(impl: str = impl, mode: str = mode,
                          shape: tuple[int, ...] = tuple(shape)) -> Callable[[], object]:
                    return _bn_callable(impl, mode, _inputs(shape, mode != "eval_forward"), ref)

                cases.append(Case(mode, tuple(shape), impl, setup))
    return cases


#: ``wall``: elapsed time (what a user waits). ``cpu``: this process's CPU time, which time
#: spent descheduled by other processes does not inflate: steadier ratios on a shared machine
#: (with one thread; with more, threads waiting for each other count too).
TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _time(fn: Callable[[], object], iterations: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    for _ in range(iterations):
        fn()
    return (clock() - start) / iterations


def measure(cases: Sequence[Case], *, rounds: int = 7, min_seconds: float = 0.05,
            timer: str = "wall", on_step: Callable[[str], None] | None = None) -> list[Result]:
    """Time ``cases`` group by group in ``rounds`` interleaved rounds; medians and ratios.

    Each case runs once untimed first (its time is ``first_call``: compilation for
    ``compiled``), then ``iterations`` calls per round, enough for ``min_seconds``.

    Raises:
        InvalidArgument: ``rounds < 1`` or an unknown ``timer`` (``wall``, ``cpu``).
    """
    if timer not in TIMERS:
        raise InvalidArgument(f"Expected timer to be one of {sorted(TIMERS)}, "
                              f"received timer={timer!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise InvalidArgument(f"Expected rounds >= 1, received rounds={rounds!r}")
    clock = TIMERS[timer]
    warm_allocator()
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    results: list[Result] = []
    for group in groups.values():
        fns, iters, firsts = [], [], []
        for case in group:
            if on_step:
                on_step(f"{case.group} {case.impl}: first call")
            fn = case.setup()
            first = _time(fn, 1)
            once = _time(fn, 1)
            fns.append(fn)
            firsts.append(first)
            iters.append(max(1, math.ceil(min_seconds / max(once, 1e-7))))
        times: list[list[float]] = [[] for _ in group]
        for r in range(rounds):
            if on_step:
                on_step(f"{group[0].group}: round {r + 1}/{rounds}")
            order = list(range(len(group)))
            order = order[r % len(order):] + order[:r % len(order)]
            enabled = gc.isenabled()
            gc.disable()  # as timeit does: no collection pause inside a timing
            try:
                for i in order:
                    times[i].append(_time(fns[i], iters[i], clock))
            finally:
                if enabled:
                    gc.enable()
        med = {c.impl: statistics.median(t) for c, t in zip(group, times, strict=True)}
        for case, t, first in zip(group, times, firsts, strict=True):
            results.append(Result(case.mode, case.shape, case.impl, med[case.impl], t,
                                  med[case.impl] / med["native"] if "native" in med else math.nan,
                                  med[case.impl] / med["copy"] if "copy" in med else math.nan,
                                  first))
        del fns
    return results


def saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``'s graph."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def memory_ratios(shapes: Iterable[tuple[int, ...]] = SHAPES,
                  impls: Iterable[str] = ("native", "reference", "compiled", "seed")
                  ) -> dict[str, dict[str, float]]:
    """Memory kept for backward of one training forward, as a multiple of the input's bytes."""
    out: dict[str, dict[str, float]] = {}
    for shape in shapes:
        row = {}
        for impl in impls:
            if impl == "seed" and len(shape) not in (2, 4):
                continue
            t = _inputs(shape, True)
            fn = _bn_callable(impl, "train_forward", t, bncheck.batch_norm)
            size = t["x"].numel() * t["x"].element_size()
            row[impl] = saved_bytes(fn) / size  # type: ignore[arg-type]
        out[_shape_text(shape)] = row
    return out


def _prepared(fn: Callable[[], object]) -> Callable[[], Callable[[], object]]:
    return lambda: fn


def lenet_step_times(*, batch: int = 256, rounds: int = 7, min_seconds: float = 0.05,
                     timer: str = "wall") -> dict[str, float]:
    """Seconds per LeNet-BN training step (forward, cross-entropy, backward, SGD) for the
    scratch and the torch variant, interleaved; ``images/s`` = ``batch / seconds``."""
    from bncheck.reference.lenet import lenet_bn

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    steps = {}
    for bn in ("scratch", "torch"):
        net = lenet_bn(bn, seed=0).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def step(net: torch.nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()

        steps[bn] = step
    cases = [Case("lenet_train_step", (batch, 1, 28, 28), name, _prepared(fn))
             for name, fn in steps.items()]
    return {r.impl: r.seconds
            for r in measure(cases, rounds=rounds, min_seconds=min_seconds, timer=timer)}


def onnx_latencies(*, batches: Iterable[int] = (1, 256), rounds: int = 7,
                   min_seconds: float = 0.05, timer: str = "wall") -> dict[int, dict[str, float]]:
    """Seconds per inference of the exported scratch LeNet-BN (dynamo exporter, onnxruntime CPU
    at ``ENABLE_ALL``) and of the eager model in eval mode under ``no_grad``."""
    from bncheck.onnx import build_model, export_onnx, make_inputs
    from bncheck.onnx.runtimes import ort_session

    model = build_model("scratch", seed=0)
    session: Any = ort_session(export_onnx(model), level="ENABLE_ALL")
    name = session.get_inputs()[0].name
    out: dict[int, dict[str, float]] = {}
    for batch in batches:
        x = make_inputs(batch, seed=1)
        xn = x.numpy()

        def eager(x: Tensor = x) -> object:
            with torch.no_grad():
                return model(x)

        def ort(xn: Any = xn) -> object:
            return session.run(None, {name: xn})

        cases = [Case("lenet_inference", (batch, 1, 28, 28), "eager", _prepared(eager)),
                 Case("lenet_inference", (batch, 1, 28, 28), "onnxruntime", _prepared(ort))]
        out[batch] = {r.impl: r.seconds for r in measure(cases, rounds=rounds,
                                                         min_seconds=min_seconds, timer=timer)}
    return out


def property_rates(*, examples: int = 10, seed: int = 0) -> dict[str, float]:
    """Examples per second of each catalogue property against the reference (``ci`` profile,
    ``examples`` examples, no shrinking needed: every property passes)."""
    from bncheck.engine.runner import verify

    report = verify(bncheck.BatchNorm, examples=examples, seed=seed, profile="ci")
    return {r.name: r.examples / r.seconds for r in report.results if r.seconds > 0}


# --- the gate ------------------------------------------------------------------------------------

def gate_ratios(results: Iterable[Result], memory: dict[str, dict[str, float]] | None = None,
                lenet: dict[str, float] | None = None) -> dict[str, float]:
    """The ratios the gate checks (all "lower is better"): each implementation's time over
    native's in its group, memory kept for backward over the input size, and the scratch
    LeNet-BN training step over the torch variant's."""
    ratios = {f"{r.group} {r.impl} x native": r.x_native
              for r in results if r.impl in ("reference", "compiled")}
    for shape, row in (memory or {}).items():
        for impl in ("reference", "compiled"):
            if impl in row:
                ratios[f"memory kept for backward {shape} {impl} x input"] = row[impl]
    if lenet:
        ratios["lenet_train_step scratch x torch"] = lenet["scratch"] / lenet["torch"]
    return ratios


@dataclass(frozen=True)
class Regression:
    """A ratio that grew by more than the tolerance over its baseline."""

    key: str
    baseline: float
    now: float

    @property
    def change(self) -> float:
        return self.now / self.baseline - 1.0

    def __str__(self) -> str:
        return (f"{self.key}: {self.now:.3g} now vs {self.baseline:.3g} in the baseline "
                f"({self.change:+.0%})")


def compare(now: dict[str, float], baseline: dict[str, float], *,
            tolerance: float = TOLERANCE) -> tuple[list[Regression], list[str]]:
    """The ratios in ``now`` that exceed their ``baseline`` by more than ``tolerance``
    (``0.25``: 25 % worse), and the baseline keys ``now`` did not measure.

    >>> compare({"a": 1.3, "b": 2.0}, {"a": 1.0, "b": 1.9, "c": 1.0})[0]
    [Regression(key='a', baseline=1.0, now=1.3)]
    """
    if not (isinstance(tolerance, int | float) and 0 <= tolerance < math.inf):
        raise InvalidArgument(f"Expected tolerance >= 0, received tolerance={tolerance!r}")
    regressions = []
    for key, base in baseline.items():
        value = now.get(key)
        if value is None or math.isnan(value):
            continue
        if value > base * (1.0 + tolerance):
            regressions.append(Regression(key, base, value))
    missing = sorted(k for k in baseline if k not in now or math.isnan(now[k]))
    return regressions, missing


def load_baseline(path: str | os.PathLike[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """The ``ratios`` of a baseline file written from :func:`baseline_document`, and the
    ``settings`` (threads, timer) they were measured with.

    Raises:
        InvalidArgument: the file is missing or not a baseline.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(f"Expected a bench baseline file, received baseline={str(p)!r} "
                              f"(no such file; write one with --update-baseline)") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"Cannot read baseline={str(p)!r}: {e}") from None
    ratios = doc.get("ratios") if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != "bncheck-bench-baseline/1"
            or not isinstance(ratios, dict)):
        raise InvalidArgument(f"Expected a bncheck bench baseline (format "
                              f"bncheck-bench-baseline/1), received baseline={str(p)!r}")
    return {str(k): float(v) for k, v in ratios.items()}, dict(doc.get("settings") or {})


def baseline_document(ratios: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a baseline: the ratios, the settings that change them (threads,
    timer) and the environment they were measured in."""
    return {"format": "bncheck-bench-baseline/1", "tolerance": TOLERANCE, "settings": settings,
            "environment": environment(), "ratios": dict(sorted(ratios.items()))}


def results_document(results: Iterable[Result], **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of a run (what ``--json`` writes)."""
    rows = [{**asdict(r), "group": r.group} for r in results]
    for row in rows:
        row["shape"] = list(row["shape"])
    return {"format": "bncheck-bench/1", "environment": environment(), "kernels": rows, **extra}
