"""What runs inside each rank: the task protocol and the worker's main loop.

The parent sends one :class:`RankTask` per rank (or ``None``: this rank sits the case out);
the rank builds the target with the task's configuration and process group, installs the
weight, bias and running statistics, runs the task's steps (forward, then backward with the
given upstream gradient) and answers with a :class:`RankResult`. Messages are plain pickles of
these dataclasses (tensors keep their strides, so channels_last inputs stay channels_last).
"""

from __future__ import annotations

import datetime
import inspect
import os
import pickle
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor

__all__ = ["Step", "RankTask", "StepResult", "RankResult", "takes_process_group", "worker_main"]


@dataclass(frozen=True)
class Step:
    """One forward of a rank's batch; with ``grad``, a backward of ``(y * grad).sum()``."""

    training: bool
    x: Tensor
    grad: Tensor | None = None


@dataclass(frozen=True)
class RankTask:
    """Everything one rank needs for one drawn case: the target as its user declared it
    (``declaration``, whole: names, channel axis, mode argument, fixed flags...) and the case's
    drawn configuration."""

    target: str
    # a bncheck.engine.declaration.Declaration (not imported here: light to unpickle)
    declaration: Any
    num_features: int
    ndim: int
    dtype: torch.dtype
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    group: tuple[int, ...] | None
    weight: Tensor
    bias: Tensor
    stats: tuple[Tensor, Tensor] | None
    steps: tuple[Step, ...]


@dataclass
class StepResult:
    """A rank's output, gradients (``None`` without a backward) and statistics after a step."""

    y: Tensor
    dx: Tensor | None = None
    dweight: Tensor | None = None
    dbias: Tensor | None = None
    stats: tuple[Tensor, Tensor] | None = None
    count: int | None = None


@dataclass
class RankResult:
    """A rank's answer: its steps, or where the target raised (``error``)."""

    steps: list[StepResult] = field(default_factory=list)
    installed: tuple[Tensor, Tensor] | None = None
    error: str | None = None


def takes_process_group(obj: Any) -> bool:
    """Whether ``obj``'s constructor has a ``process_group`` parameter (torch's keyword)."""
    try:
        return "process_group" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


class _Rank:
    """State kept by one worker: its rank, device, process groups and loaded targets."""

    def __init__(self, rank: int, device: str, groups: dict[tuple[int, ...], Any]) -> None:
        self.rank, self.device, self.groups = rank, device, groups
        self.targets: dict[Any, Any] = {}
        self.where = ""

    def target(self, spec: str) -> Any:
        if spec not in self.targets:
            from bncheck.engine.target import load_target

            self.targets[spec] = load_target(spec)
        return self.targets[spec]

    def build(self, task: RankTask) -> Any:
        from bncheck.engine.adapter import Target

        key = (task.target, task.declaration)
        if key not in self.targets:
            self.targets[key] = Target.from_object(self.target(task.target), task.declaration)
        t = self.targets[key]
        extra = {} if task.group is None else {"process_group": self.groups[task.group]}
        bn = t.build(task.num_features, ndim=task.ndim, eps=task.eps, momentum=task.momentum,
                     affine=task.affine, track_running_stats=task.track_running_stats,
                     extra=extra)
        if task.dtype != torch.float32:
            bn.to(task.dtype)
        bn.module.to(self.device)
        bn.set_params(task.weight, task.bias)
        if task.stats is not None and bn.has_stats:
            bn.set_stats(*task.stats)
        return bn

    def run(self, task: RankTask) -> RankResult:
        """Run ``task``; an exception raised by the target is the result's ``error``."""
        self.where = "building the target"
        try:
            bn = self.build(task)
            result = RankResult(installed=bn.stats())
            for i, step in enumerate(task.steps, 1):
                mode = "training" if step.training else "eval"
                result.steps.append(self._step(bn, step, f"{mode} step {i}"))
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            text = str(e).strip().splitlines()
            return RankResult(error=f"{type(e).__name__} in {self.where}"
                                    + (f": {text[0]}" if text else ""))
        return result

    def _step(self, bn: Any, step: Step, label: str) -> StepResult:
        module = bn.module
        self.where = f"{label} (module.train)"
        module.train(step.training)
        for p in module.parameters():
            p.grad = None
        x = step.x.to(self.device)
        if step.grad is not None:
            x = x.detach().requires_grad_(True)
        self.where = f"{label} forward"
        mode = bn.target.mode_argument  # the declared mode argument and layout, torch's back
        y = module(bn.to_target_layout(x), **({mode: step.training} if mode else {}))
        if not isinstance(y, Tensor):
            raise TypeError(f"the forward returned {type(y).__name__}, expected a Tensor")
        y = bn.from_target_layout(y)
        out = StepResult(y.detach().cpu())
        if step.grad is not None:
            self.where = f"{label} backward"
            y.backward(step.grad.to(device=y.device, dtype=y.dtype))
            out.dx = None if x.grad is None else x.grad.detach().cpu()
            from bncheck.engine.adapter import attribute

            for name, attr in ((bn.weight_name, "dweight"), (bn.bias_name, "dbias")):
                g = getattr(attribute(module, name) if name else None, "grad", None)
                setattr(out, attr, None if g is None else g.detach().reshape(-1).cpu())
        self.where = f"{label} (reading the statistics)"
        out.stats = bn.stats()
        out.count = bn.num_batches_tracked()
        return out


def worker_main(conn: Connection, rank: int, world_size: int, port: int, device: str,
                groups: tuple[tuple[int, ...], ...], timeout: float) -> None:
    """A rank's life (in a :class:`~bncheck.infra.workers.Worker`): join the process group, create
    ``groups``, answer tasks until told to stop.

    Every message is ``pickle``d: a :class:`RankTask`, ``None`` (sit this case out) or
    ``"stop"``; an answer is ``("ok", result)`` or ``("crash", traceback)``
    (a bug in bncheck's worker, not in the target). The rank exits with ``os._exit`` so that a
    stuck collective cannot delay teardown.
    """
    import torch.distributed as dist

    try:
        delta = datetime.timedelta(seconds=timeout)
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=delta)
        backend = "nccl" if device.startswith("cuda") and torch.cuda.device_count() >= world_size \
            else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(rank % torch.cuda.device_count())
            device = f"cuda:{rank % torch.cuda.device_count()}"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=delta)
        made = {ranks: dist.new_group(list(ranks)) for ranks in groups}
        state = _Rank(rank, device, made)
        conn.send_bytes(pickle.dumps(("ok", backend)))
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
        conn.send_bytes(pickle.dumps(("crash", traceback.format_exc())))
        os._exit(1)
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)
        if message == "stop":
            os._exit(0)
        try:
            answer: tuple[str, Any] = ("ok", None if message is None else state.run(message))
        except Exception:  # noqa: BLE001 - a bug in bncheck: the parent reports it
            answer = ("crash", traceback.format_exc())
        conn.send_bytes(pickle.dumps(answer))
