"""Wrap any BatchNorm module so that properties can read and set what they need.

>>> import torch
>>> from bncheck.adapter import Target
>>> t = Target.from_object(torch.nn.BatchNorm2d)
>>> bn = t.build(3, ndim=4)
>>> bn.weight_name, bn.mean_name
('weight', 'running_mean')
>>> bn.stats()[1]
tensor([1., 1., 1.], dtype=torch.float64)

Parameters are found as ``weight``/``bias`` or ``gamma``/``beta``; statistics as
``running_mean``/``running_var`` or ``moving_mean``/``moving_var`` (or ``mean``/``var``); each
in ``(C,)`` or any broadcast shape holding ``C`` values. Every call into the target goes through
:meth:`Adapted.call`, which turns an exception raised by the target into a :class:`TargetRaised`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.conventions import TORCH, Convention
from bncheck.errors import TargetError
from bncheck.target import bn_factory

__all__ = ["Target", "Adapted", "TargetRaised", "PropertyFailure", "CONFIG_KWARGS"]

WEIGHT_NAMES = (("weight", "bias"), ("gamma", "beta"))
STAT_NAMES = (("running_mean", "running_var"), ("moving_mean", "moving_var"), ("mean", "var"))
COUNT_NAMES = ("num_batches_tracked",)
#: Constructor keywords bncheck varies when the target's signature accepts them.
CONFIG_KWARGS = ("eps", "momentum", "affine", "track_running_stats")
ALL_DIMS = (2, 3, 4, 5)


class PropertyFailure(AssertionError):
    """A property does not hold; the message is the report (not an error of bncheck)."""


class TargetRaised(PropertyFailure):
    """The target raised while a property exercised it."""


def _accepted_kwargs(obj: Any) -> frozenset[str]:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(k for k in CONFIG_KWARGS if k in params)


def _takes_none_momentum(obj: Any) -> bool:
    """Whether ``obj`` declares that ``momentum=None`` (PyTorch's cumulative average) is valid:
    a torch BatchNorm class, a ``momentum`` defaulting to None, or one annotated Optional.
    Most hand-written layers take a float momentum only; drawing None for them is a false alarm."""
    if isinstance(obj, type) and issubclass(obj, nn.modules.batchnorm._NormBase):
        return True
    try:
        param = inspect.signature(obj).parameters.get("momentum")
    except (TypeError, ValueError):
        return False
    if param is None:
        return False
    if param.default is None:
        return True
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return False
    text = ann if isinstance(ann, str) else repr(ann)
    return "None" in text or "Optional" in text


def _supported_dims(obj: Any) -> tuple[int, ...] | None:
    """Input ranks a known class accepts (torch.nn.BatchNormNd, bncheck's reference)."""
    allowed = getattr(obj, "_allowed_dims", None)
    if isinstance(allowed, tuple):
        return allowed
    if isinstance(obj, type):
        for cls, dims in ((nn.BatchNorm1d, (2, 3)), (nn.BatchNorm2d, (4,)),
                          (nn.BatchNorm3d, (5,))):
            if issubclass(obj, cls):
                return dims
    return None


@dataclass(frozen=True)
class Target:
    """A BatchNorm under verification: how to build it and what it declares.

    Args:
        obj: a Module class or a factory, built as ``obj(num_features)`` or, when its
            signature has ``num_dims``, ``obj(num_features, num_dims=ndim)``.
        label: how reports name it.
        convention: the running-statistics rule it declares.
        momentum, eps: the values it uses when bncheck cannot pass them to the constructor.
        dims: the input ranks it supports.
    """

    obj: Callable[..., Any]
    label: str
    convention: Convention = TORCH
    momentum: float | None = 0.1
    eps: float = 1e-5
    dims: tuple[int, ...] = (2, 4)
    configurable: frozenset[str] = field(default_factory=frozenset)
    #: whether the constructor accepts ``momentum=None`` (drawn only then)
    cumulative: bool = False

    @classmethod
    def from_object(cls, obj: Callable[..., Any], *, label: str | None = None,
                    convention: Convention = TORCH, momentum: float | None = None,
                    eps: float = 1e-5, dims: tuple[int, ...] | None = None) -> Target:
        """Describe ``obj``; ``momentum=None`` here means the convention's default and ``dims=None``
        means ``(2, 4)`` restricted to the ranks a known class supports."""
        if dims is None:
            known = _supported_dims(obj)
            dims = (2, 4) if known is None else (tuple(d for d in (2, 4) if d in known)
                                                 or known)
        name: str = label or getattr(obj, "__qualname__", None) or repr(obj)
        return cls(obj, name, convention,
                   convention.momentum if momentum is None else momentum, eps, tuple(dims),
                   _accepted_kwargs(obj), _takes_none_momentum(obj))

    def build(self, num_features: int, *, ndim: int, eps: float | None = None,
              momentum: float | None | str = "default", affine: bool = True,
              track_running_stats: bool = True, dtype: torch.dtype | None = None) -> Adapted:
        """Build the target for ``ndim``-dim inputs; config values it cannot take are dropped
        (``configurable`` says which it takes)."""
        wanted: dict[str, Any] = {
            "eps": self.eps if eps is None else eps,
            "momentum": self.momentum if momentum == "default" else momentum,
            "affine": affine, "track_running_stats": track_running_stats}
        kwargs = {k: v for k, v in wanted.items() if k in self.configurable}
        try:
            module = bn_factory(self.obj, **kwargs)(num_features, ndim)
        except TargetError as e:
            raise TargetRaised(str(e)) from None
        if dtype is not None:
            try:
                module = module.to(dtype)
            except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
                raise TargetRaised(f"module.to({dtype}) raised {type(e).__name__}: {e}") from None
        return Adapted(module, num_features)


def _find_pair(module: nn.Module, pairs: tuple[tuple[str, str], ...],
               channels: int) -> tuple[str, str] | None:
    for a, b in pairs:
        ta, tb = getattr(module, a, None), getattr(module, b, None)
        if (isinstance(ta, Tensor) and isinstance(tb, Tensor) and ta.numel() == channels
                and tb.numel() == channels):
            return a, b
    return None


class Adapted:
    """A built target with uniform access to its parameters and statistics (``(C,)`` float64)."""

    def __init__(self, module: nn.Module, num_features: int) -> None:
        self.module = module
        self.num_features = num_features
        self.weight_name: str | None = None
        self.bias_name: str | None = None
        self.mean_name: str | None = None
        self.var_name: str | None = None
        names = _find_pair(module, WEIGHT_NAMES, num_features)
        if names:
            self.weight_name, self.bias_name = names
        names = _find_pair(module, STAT_NAMES, num_features)
        if names:
            self.mean_name, self.var_name = names
        self.count_name = next((n for n in COUNT_NAMES if isinstance(
            getattr(module, n, None), Tensor)), None)

    # -- calling -----------------------------------------------------------------------------
    def call(self, x: Tensor, *, what: str = "forward") -> Tensor:
        """``module(x)``; an exception raised inside becomes :class:`TargetRaised`."""
        try:
            y = self.module(x)
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            raise TargetRaised(f"the target raised {type(e).__name__} in {what}: {e}") from None
        if not isinstance(y, Tensor):
            raise TargetRaised(f"the target's {what} returned {type(y).__name__}, "
                               f"expected a Tensor")
        return y

    def train(self, training: bool = True) -> Adapted:
        try:
            self.module.train(training)
        except Exception as e:  # noqa: BLE001 - user code
            raise TargetRaised(f"module.train({training}) raised {type(e).__name__}: {e}") from None
        return self

    # -- parameters --------------------------------------------------------------------------
    @property
    def affine(self) -> bool:
        return self.weight_name is not None

    def params(self) -> tuple[Tensor, Tensor] | None:
        """The current weight and bias as ``(C,)`` float64 copies, or None when not affine."""
        if self.weight_name is None or self.bias_name is None:
            return None
        return (self._read(self.weight_name), self._read(self.bias_name))

    def set_params(self, weight: Tensor, bias: Tensor) -> None:
        """Copy ``(C,)`` values into the weight and bias (no-op when the target is not affine)."""
        if self.weight_name is not None and self.bias_name is not None:
            self._write(self.weight_name, weight)
            self._write(self.bias_name, bias)

    # -- statistics --------------------------------------------------------------------------
    @property
    def has_stats(self) -> bool:
        return self.mean_name is not None

    def stats(self) -> tuple[Tensor, Tensor] | None:
        """The running mean and variance as ``(C,)`` float64 copies, or None when none found."""
        if self.mean_name is None or self.var_name is None:
            return None
        return (self._read(self.mean_name), self._read(self.var_name))

    def require_stats(self) -> tuple[Tensor, Tensor]:
        stats = self.stats()
        if stats is None:
            raise PropertyFailure(
                "no running statistics found: looked for "
                + ", ".join(f"{a}/{b}" for a, b in STAT_NAMES)
                + f" holding {self.num_features} values each; the module has "
                + (", ".join(n for n, v in vars(self.module).items() if isinstance(v, Tensor))
                   or "no tensor attributes")
                + f" (buffers: {', '.join(n for n, _ in self.module.named_buffers()) or 'none'})")
        return stats

    def stat_dtype(self) -> torch.dtype | None:
        t = getattr(self.module, self.mean_name, None) if self.mean_name else None
        return t.dtype if isinstance(t, Tensor) else None

    def set_stats(self, mean: Tensor, var: Tensor) -> None:
        """Copy ``(C,)`` values into the running statistics."""
        self.require_stats()
        assert self.mean_name is not None and self.var_name is not None
        self._write(self.mean_name, mean)
        self._write(self.var_name, var)

    def num_batches_tracked(self) -> int | None:
        t = getattr(self.module, self.count_name, None) if self.count_name else None
        return int(t) if isinstance(t, Tensor) and t.numel() == 1 else None

    # -- helpers -----------------------------------------------------------------------------
    def _read(self, name: str) -> Tensor:
        t = getattr(self.module, name)
        if not isinstance(t, Tensor) or t.numel() != self.num_features:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise PropertyFailure(f"{name} no longer holds {self.num_features} values "
                                  f"(found {got})")
        return t.detach().reshape(-1).to(torch.float64).clone()

    def _write(self, name: str, values: Tensor) -> None:
        t = getattr(self.module, name)
        new = values.detach().reshape(t.shape).to(dtype=t.dtype, device=t.device)
        try:
            with torch.no_grad():
                t.copy_(new)
        except RuntimeError:  # e.g. an inference tensor left by the target: replace it
            setattr(self.module, name, nn.Parameter(new) if isinstance(t, nn.Parameter) else new)
