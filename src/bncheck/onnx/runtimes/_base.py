"""The contract every runtime plugin keeps, and the record of one runtime for one graph.

A plugin says five things, nothing more: its name and setting (``level``), its tolerance (with
the reason), why it cannot run here (``unavailable``: a package or a provider is missing) or
cannot be trusted for this graph (``not_applicable``), which load errors mean it lacks a kernel
the graph needs (``missing_kernel``: an operator version it does not implement, *n/a* with that
line), and how to ``load`` a graph into a runner. :meth:`RuntimePlugin.runtime` turns those
answers into a :class:`Runtime`, so no runtime is ever silent: it runs, or it is *skipped* /
*n/a* with its reason, or it refused the graph (a failed check).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.engine.compare import Tolerance
from bncheck.onnx.graph import walk_nodes

__all__ = ["Runner", "Runtime", "RuntimePlugin", "first_line", "bn_nodes_in"]

#: Feeds (graph input name -> array) to the graph's outputs, in graph order.
Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` (runtimes raise pages of C++ context)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def bn_nodes_in(model: Any) -> list[Any]:
    """The graph's BatchNormalization nodes, those inside ``If``/``Loop``/``Scan`` subgraphs
    included (a runtime crashes or errs on them there as at the top level)."""
    return [n for _, n in walk_nodes(model.graph) if n.op_type == "BatchNormalization"]


@dataclass(frozen=True)
class Runtime:
    """One runtime at one setting for one graph: a runner, or why there is none."""

    name: str
    level: str
    tolerance: Tolerance
    run: Runner | None = None
    skipped: str | None = None
    not_applicable: str | None = None
    error: str | None = None  # the runtime refused the graph: a failed check, not a skip

    @property
    def label(self) -> str:
        return f"{self.name} {self.level}".strip()


class RuntimePlugin(abc.ABC):
    """One runtime at one setting.

    Subclasses set :attr:`name`, :attr:`level`, :attr:`key` (the entry of the tolerance table)
    and :attr:`tolerance`, and implement :meth:`load`; they override :meth:`unavailable` and
    :meth:`not_applicable` where the runtime can be missing or wrong for some graphs.
    """

    name: str = ""
    level: str = ""
    key: str = ""
    tolerance: Tolerance

    def unavailable(self) -> str | None:
        """Why this runtime cannot run on this machine (None: it can)."""
        return None

    def not_applicable(self, model: Any) -> str | None:
        """Why this runtime's answer cannot be trusted for ``model`` (None: it can)."""
        return None

    def missing_kernel(self, error: Exception) -> str | None:
        """Why ``load`` failed because the runtime lacks a kernel the graph needs (an operator
        version it does not implement): a line that says so, and the runtime is *n/a* for the
        graph rather than failed. None: ``error`` is a refusal of the graph (a failed check)."""
        return None

    @abc.abstractmethod
    def load(self, data: bytes, model: Any) -> Runner:
        """Load the ONNX bytes (``model`` is the parsed ModelProto) and return a runner.

        Raises:
            Exception: whatever the runtime raises when it refuses the graph.
        """

    def runtime(self, data: bytes, model: Any) -> Runtime:
        """This plugin's :class:`Runtime` for the graph: loaded, skipped, n/a or refused."""
        why = self.unavailable()
        if why is not None:
            return Runtime(self.name, self.level, self.tolerance, skipped=why)
        why = self.not_applicable(model)
        if why is not None:
            return Runtime(self.name, self.level, self.tolerance, not_applicable=why)
        try:
            runner = self.load(data, model)
        except Exception as e:  # noqa: BLE001 - each runtime has its own error types
            missing = self.missing_kernel(e)
            if missing is not None:
                return Runtime(self.name, self.level, self.tolerance, not_applicable=missing)
            return Runtime(self.name, self.level, self.tolerance,
                           error=f"cannot load the graph: {first_line(e)}")
        return Runtime(self.name, self.level, self.tolerance, runner)
