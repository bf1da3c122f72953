"""Find every normalization layer in a model: by class, by its running statistics, by behaviour.

>>> from torch import nn
>>> from bncheck.scan.inventory import find_norm_layers
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
>>> [(layer.path, layer.spec, layer.found_by) for layer in find_norm_layers(model)]
[('1', 'torch.nn:BatchNorm2d', 'class')]

A layer is one of torch's BatchNorm classes or a subclass (``SyncBatchNorm``, the lazy ones),
or a module that holds running statistics itself (``running_mean``/``running_var`` or
``moving_mean``/``moving_var``, as buffers or plain tensors, one value per channel: the same
names the adapter reads). A module whose statistics are called only ``mean``/``var`` counts
when it behaves like one (:func:`bncheck.scan.infer.observe` decides). InstanceNorm is not a
BatchNorm and is left out. A layer inside another found layer (a wrapper's ``bn``) is listed
once, as the outer one.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bncheck.engine.adapter import STAT_NAMES, attribute
from bncheck.infra.validation import NotSet, not_set

__all__ = ["Config", "NormLayer", "find_norm_layers", "config_of", "own_statistics",
           "display_path", "class_spec"]

#: Statistic names that mark a layer on their own; ``("mean", "var")`` needs its behaviour too.
_SURE_NAMES = tuple(p for p in STAT_NAMES if p != ("mean", "var"))


@dataclass(frozen=True)
class Config:
    """What an instance says about how it was constructed (not given: it does not say)."""

    momentum: float | None | NotSet = not_set
    eps: float | NotSet = not_set
    affine: bool | None = None
    track_running_stats: bool | None = None

    def describe(self) -> str:
        parts = []
        if self.momentum is not not_set:
            parts.append(f"momentum={self.momentum!r}" if self.momentum is None
                         else f"momentum={self.momentum:g}")
        if self.eps is not not_set:
            parts.append(f"eps={self.eps:g}")
        for flag in ("affine", "track_running_stats"):
            value = getattr(self, flag)
            if value is not None:
                parts.append(f"{flag}={value}")
        return ", ".join(parts) or "no constructor attributes"

    def to_json(self) -> dict[str, Any]:
        return {k: (None if v is not_set else v) for k, v in (
            ("momentum", self.momentum), ("eps", self.eps), ("affine", self.affine),
            ("track_running_stats", self.track_running_stats))}


@dataclass(frozen=True)
class NormLayer:
    """One normalization layer: where it sits, its class, how it was found, its config."""

    path: str
    cls_name: str  # module.qualname
    spec: str | None  # FILE.py:Name or package.module:Name that loads the class (None: none)
    found_by: str  # "class" | "statistics" | "behaviour"
    config: Config

    @property
    def shown(self) -> str:
        return display_path(self.path)


def display_path(path: str) -> str:
    """A module path as the report shows it (the root module is ``(model)``)."""
    return path or "(model)"


def own_statistics(module: nn.Module, pairs: Iterable[tuple[str, str]] = STAT_NAMES
                   ) -> tuple[str, str] | None:
    """The names of the running-statistics pair ``module`` holds itself (not in a submodule):
    two tensors of the same non-zero size."""
    for a, b in pairs:
        ta, tb = _own_tensor(module, a), _own_tensor(module, b)
        if ta is not None and tb is not None and ta.numel() == tb.numel() > 0:
            return a, b
    return None


def _own_tensor(module: nn.Module, name: str) -> Tensor | None:
    if name in module._modules:
        return None
    t = attribute(module, name)
    if isinstance(t, Tensor):
        return t
    value = getattr(t, "value", None)  # a Keras variable
    return value if isinstance(value, Tensor) else None


def config_of(module: nn.Module) -> Config:
    """The constructor values ``module`` keeps as attributes, as torch's classes do."""
    momentum: Any = getattr(module, "momentum", not_set)
    if momentum is not None and (isinstance(momentum, bool)
                                 or not isinstance(momentum, int | float)):
        momentum = not_set
    eps: Any = getattr(module, "eps", not_set)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or eps <= 0:
        eps = not_set
    flags = {f: v if isinstance(v := getattr(module, f, None), bool) else None
             for f in ("affine", "track_running_stats")}
    return Config(momentum if momentum in (None, not_set) else float(momentum),
                  eps if eps is not_set else float(eps), **flags)


def find_norm_layers(model: nn.Module, *, confirmed: Iterable[str] = ()) -> list[NormLayer]:
    """Every BatchNorm-like layer of ``model``, in module order.

    Args:
        model: the model to walk.
        confirmed: paths of modules that hold ``mean``/``var`` and were seen to normalize with
            batch statistics in training and not in eval (the behavioural test): those count too.
    """
    sure = set(confirmed)
    found: list[NormLayer] = []
    for path, module in model.named_modules(remove_duplicate=True):
        if any(path.startswith(f"{outer.path}.") or not outer.path for outer in found):
            continue  # inside a layer already listed (a wrapper's BatchNorm)
        how = _found_by(path, module, sure)
        if how is not None:
            cls = type(module)
            found.append(NormLayer(path, f"{cls.__module__}.{cls.__qualname__}",
                                   class_spec(cls), how, config_of(module)))
    return found


def _found_by(path: str, module: nn.Module, confirmed: set[str]) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "class"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return None  # InstanceNorm: per-sample statistics, not a BatchNorm
    if own_statistics(module, _SURE_NAMES) is not None:
        return "statistics"
    if path in confirmed and own_statistics(module) is not None:
        return "behaviour"
    return None


def candidates_by_behaviour(model: nn.Module) -> list[str]:
    """Paths of modules whose only sign is a ``mean``/``var`` pair: kept when they behave like
    a BatchNorm (a data-normalizing layer with fixed ``mean``/``var`` does not)."""
    return [path for path, module in model.named_modules()
            if not isinstance(module, nn.modules.batchnorm._NormBase)
            and own_statistics(module, _SURE_NAMES) is None
            and own_statistics(module) is not None]


def class_spec(cls: type) -> str | None:
    """``FILE.py:Name`` (a class in the user's file, its path relative to the working
    directory) or ``package.module:Name`` (an installed one, by the shortest package that
    exposes it: ``torch.nn:BatchNorm2d``) that loads ``cls``; ``None`` for a class defined
    inside a function, which nothing can load by name."""
    from bncheck.engine.adapter import is_user_file

    if "<locals>" in cls.__qualname__:
        return None
    try:
        file = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        file = None
    if file is not None and is_user_file(file):
        return f"{_relative(Path(file))}:{cls.__qualname__}"
    return f"{_public_module(cls)}:{cls.__qualname__}"


def _public_module(cls: type) -> str:
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return ".".join(parts[:i])
    return cls.__module__


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)
