"""The verification report and the checks every reference shares: runtime rows, output
comparison, batch independence.

>>> from bncheck.onnx._report import Report
>>> Report().ok
True

Used by :mod:`bncheck.onnx.verify` (against the eager model or goldens) and
:mod:`bncheck.onnx.standalone` (runtimes against one another).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from bncheck.engine.compare import Tolerance, compare, max_errors
from bncheck.onnx.bn_nodes import BNNode, Fold, bn_nodes, folds
from bncheck.onnx.graph import io_specs
from bncheck.onnx.localize import Localization, batch_dependent_nodes
from bncheck.onnx.placement import LENET_BN_LAYERS, BNLayer, Placement, bn_placement
from bncheck.onnx.runtimes import TOLERANCES, Runtime, onnx_opset
from bncheck.onnx.runtimes._tolerances import concrete, for_dtype
from bncheck.onnx.source import InputSpec, generated_inputs

__all__ = ["Row", "Report", "Feeds", "node_text", "one_line", "structure_problems",
           "start_report", "skip_rows", "run_on", "batch_of", "feeds_of",
           "changed_rows", "batch_independence", "compare_outputs"]

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Row:
    """One line of the verification table."""

    check: str
    runtime: str
    level: str
    batch: int | None
    max_abs: float | None
    max_rel: float | None
    tolerance: Tolerance | None
    verdict: str  # "ok", "FAIL", "skipped", "n/a"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        tol = self.tolerance
        return {"check": self.check, "runtime": self.runtime, "level": self.level,
                "batch": self.batch, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "rtol": tol.rtol if tol else None, "atol": tol.atol if tol else None,
                "verdict": self.verdict, "note": self.note}


@dataclass
class Report:
    """Everything one verification found; ``ok`` when no row failed."""

    rows: list[Row] = field(default_factory=list)
    placement: list[Placement] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    localization: Localization | str | None = None
    opset: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    bn_nodes: list[BNNode] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    batch_nodes: list[tuple[str, str, str | None]] = field(default_factory=list)
    layers: list[BNLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was fed, printed under the table

    @property
    def ok(self) -> bool:
        """At least one check ran and passed, none failed
        (:func:`bncheck.engine.evidence.verdict`)."""
        return self.verdict().ok

    def verdict(self) -> Any:
        """The :class:`~bncheck.engine.evidence.Verdict` of the rows and failures."""
        from bncheck.engine.evidence import verdict

        failed = len(self.failures) + sum(r.verdict == "FAIL" for r in self.rows)
        return verdict(passed=sum(r.verdict == "ok" for r in self.rows), failed=failed,
                       skipped="; ".join(dict.fromkeys(
                           f"{r.check} {r.runtime}: {r.note}".strip() for r in self.rows
                           if r.verdict in ("skipped", "n/a"))))

    def failure_message(self) -> str:
        """The message a failed verification raises: localization first, then the reports."""
        lines = []
        if isinstance(self.localization, Localization):
            lines.append(f"first diverging layer: {self.localization}")
        elif self.localization is not None:
            lines.append(f"localization: {self.localization}")
        if self.batch_nodes:
            lines.append("batch dependence starts at: " + "; ".join(
                node_text(*n) for n in self.batch_nodes))
        # Graph-vs-reference reports first; the eager grad-mode ones after.
        ordered = sorted(self.failures, key=lambda f: f.startswith("eager eval output"))
        lines += ordered[:3]
        if len(ordered) > 3:
            lines.append(f"... and {len(ordered) - 3} more failed checks")
        return "\n".join(lines)


def node_text(name: str, op: str, module: str | None) -> str:
    return f"{op} node {name!r}" + (f" (module {module})" if module else "")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def structure_problems(model: Any) -> list[str]:
    """``onnx.checker`` (full check) and strict shape inference; the problems found."""
    import onnx

    if not model.graph.node and not model.graph.input:
        return ["empty graph (no nodes, no inputs): not an ONNX model"]
    problems = []
    # A corrupt file also makes onnx's C++ checker raise ValueError ("Invalid tensor data type
    # 39", found by fuzz/fuzz_onnx_check.py): a problem of the model, not of bncheck.
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        problems.append(f"onnx.checker: {one_line(e)}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as e:
        problems.append(f"shape inference: {one_line(e)}")
    return problems


def start_report(model: Any, layers: Sequence[BNLayer] | None, known: set[str] | None = None
           ) -> Report:
    report = Report(opset=onnx_opset(model),
                    inputs=io_specs(model.graph.input, model.graph.initializer),
                    outputs=io_specs(model.graph.output))
    problems = structure_problems(model)
    report.structure = problems or ["onnx.checker (full_check): ok", "shape inference: ok"]
    report.failures += problems
    report.placement = bn_placement(model, layers, known=known) if layers != [] else []
    report.layers = list(LENET_BN_LAYERS if layers is None else layers)
    report.bn_nodes = bn_nodes(model)
    report.folds = folds(model)
    return report


def skip_rows(report: Report, rts: list[Runtime], check: str) -> list[Runtime]:
    for rt in rts:
        if rt.error:
            report.rows.append(Row(check, rt.name, rt.level, None, None, None, rt.tolerance,
                                   "FAIL", rt.error))
            report.failures.append(f"{rt.label}: {rt.error}")
        elif rt.skipped or rt.not_applicable:
            report.rows.append(Row(check, rt.name, rt.level, None, None, None, rt.tolerance,
                                   "skipped" if rt.skipped else "n/a",
                                   rt.skipped or rt.not_applicable or ""))
    return [rt for rt in rts if rt.run is not None]


def run_on(report: Report, rt: Runtime, feeds: Feeds, check: str) -> list[np.ndarray] | None:
    """The runtime's outputs, or None after recording a FAIL row when it raised."""
    assert rt.run is not None
    batch = batch_of(feeds)
    try:
        return rt.run(feeds)
    except Exception as e:  # noqa: BLE001 - any runtime error on a valid input is a failure
        why = f"raised {type(e).__name__}: {one_line(e)}"
        report.rows.append(Row(check, rt.name, rt.level, batch, None, None, rt.tolerance,
                               "FAIL", why))
        report.failures.append(f"{rt.label} (batch {batch}) {why}")
        return None


def batch_of(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])


def feeds_of(names: Sequence[str], xs: Sequence[Tensor] | Sequence[np.ndarray]) -> Feeds:
    return {n: x.numpy() if isinstance(x, Tensor) else np.asarray(x)
            for n, x in zip(names, xs, strict=True)}


def changed_rows(feeds: Feeds, seed: int, batched: Collection[str] | None = None) -> Feeds:
    """The same feeds with rows 1 and up replaced by other values; inputs not in ``batched``
    (default: every input) have no batch axis and are left as they are."""
    other = {}
    specs = [InputSpec(n, tuple(x.shape)) for n, x in feeds.items()]
    fresh = generated_inputs(specs, batch_of(feeds), seed=seed + 7919)
    for (name, x), new in zip(feeds.items(), fresh, strict=True):
        y = x.copy()
        if batched is None or name in batched:
            y[1:] = (new.numpy() * 3.0 - 1.0).astype(x.dtype)[1:]
        other[name] = y
    return other


def batch_independence(report: Report, rts: list[Runtime], feeds: Feeds, seed: int,
                        data: bytes, batched: Collection[str] | None = None) -> None:
    """Row 0's outputs must not change when the other rows change (eval mode); when they do,
    name the nodes where the dependence starts.

    ``batched``: the inputs with a batch axis (default: all). An output without the batch axis
    (a reduction over the batch) is compared whole: it must not change either."""
    tol = TOLERANCES["batch-independence"]
    batch = batch_of(feeds)
    if batch < 2:
        report.rows.append(Row("batch independence", "all", "", batch, None, None, tol, "n/a",
                               "the graph's batch size is fixed at 1"))
        return
    other = changed_rows(feeds, seed, batched)
    failed = False
    for rt in rts:
        first = run_on(report, rt, feeds, "batch independence")
        second = None if first is None else run_on(report, rt, other, "batch independence")
        if first is None or second is None:
            continue
        worst, bad = (0.0, 0.0), None
        for y0, y1 in zip(first, second, strict=True):
            rows = 1 if y0.ndim and y0.shape[0] == batch else None
            worst = max(worst, max_errors(y1[:rows], y0[:rows]))
            what = "row 0 output" if rows else "output without a batch axis"
            bad = bad or compare(y1[:rows], y0[:rows], tolerance=concrete(
                for_dtype(tol, y0.dtype), y0), check_dtype=False,
                                 name=f"{what} ({rt.label}, batch {batch}, other rows "
                                      f"changed)")
        report.rows.append(Row("batch independence", rt.name, rt.level, batch, worst[0],
                               worst[1], tol, "ok" if bad is None else "FAIL",
                               "" if bad is None else "row 0 depends on the other rows"))
        if bad is not None:
            failed = True
            report.failures.append(str(bad))
    if failed and not report.batch_nodes:
        try:
            report.batch_nodes = batch_dependent_nodes(data, feeds, other)
        except Exception:  # noqa: BLE001 - onnxruntime cannot run the intermediates
            report.batch_nodes = []


def compare_outputs(report: Report, rt: Runtime, ys: list[np.ndarray],
                     refs: Mapping[str, list[np.ndarray]], out_names: Sequence[str], b: int,
                     check: str, tol: Tolerance, what: str) -> str:
    """Compare a runtime's outputs with each reference; add the row; the first failing
    reference's key (or '')."""
    worst: tuple[float, float] = (0.0, 0.0)
    failed = ""
    for key, ref in refs.items():
        if len(ref) != len(ys):
            report.failures.append(f"{rt.label} (batch {b}) gave {len(ys)} outputs, "
                                   f"{what} {key} has {len(ref)}")
            failed = failed or key
            continue
        for name, y, r in zip(out_names, ys, ref, strict=False):
            worst = max(worst, max_errors(y, r))
            against = " ".join(p for p in ("vs", what, key) if p)
            m = compare(y, r, tolerance=concrete(for_dtype(tol, r.dtype), r), check_dtype=False,
                        name=f"{name} ({rt.label}, batch {b}, {against})")
            if m is not None:
                failed = failed or key
                report.failures.append(str(m))
    note = " ".join(p for p in ("differs from", what, failed) if p) if failed else ""
    dtypes = {np.asarray(r).dtype for ref in refs.values() for r in ref}
    shown = for_dtype(tol, min(dtypes, key=lambda d: d.itemsize)) if dtypes else tol
    report.rows.append(Row(check, rt.name, rt.level, b, worst[0], worst[1], shown,
                           "FAIL" if failed else "ok", note))
    return failed
