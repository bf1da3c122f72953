"""The framework boundary: what properties use of a built target, and one adapter per framework.

>>> from bncheck.frameworks import FRAMEWORKS, framework
>>> FRAMEWORKS
('torch', 'flax-nnx', 'flax-linen')
>>> framework("torch").flag_types["affine"]
<class 'bool'>

Properties and the oracle are framework-free: they call a built target only through the
:class:`BuiltTarget` protocol, with torch tensors in torch's layout (channels in dim 1), and judge
it in float64 torch. Torch modules (and Keras 3 layers on its torch backend, which are torch
modules) sit behind :class:`bncheck.engine.adapter.Adapted`; JAX modules (Flax NNX and Linen) behind
:class:`bncheck.frameworks.flax.FlaxAdapted`, which converts arrays at the boundary through NumPy.
A framework module is imported only when a target names it: ``import bncheck`` and torch-only
runs never import jax.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bncheck.errors import InvalidArgument, TargetError

__all__ = ["FRAMEWORKS", "Framework", "BuiltTarget", "framework", "check_framework",
           "all_flag_types"]

#: Every framework ``--framework`` names, torch first (the default).
FRAMEWORKS = ("torch", "flax-nnx", "flax-linen")


class BuiltTarget(Protocol):
    """What the properties use of a built target (:class:`bncheck.engine.adapter.Adapted` for torch;
    tensors are torch tensors in torch's layout, statistics ``(C,)`` float64 copies)."""

    num_features: int
    training: bool
    weight_name: str | None
    bias_name: str | None
    mean_name: str | None
    var_name: str | None

    def call(self, x: Any, *, what: str = "forward") -> Any: ...

    def train(self, training: bool = True) -> BuiltTarget: ...

    def to(self, dtype: Any) -> BuiltTarget: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def save(self) -> Any: ...

    def load(self, saved: Any) -> None: ...

    def params(self) -> tuple[Any, Any]: ...

    def set_params(self, weight: Any, bias: Any) -> None: ...

    @property
    def has_stats(self) -> bool: ...

    def stats(self) -> tuple[Any, Any] | None: ...

    def require_stats(self) -> tuple[Any, Any]: ...

    def stored_stats(self) -> tuple[Any, Any]: ...

    def set_stats(self, mean: Any, var: Any) -> None: ...

    def stat_dtype(self) -> Any: ...

    def num_batches_tracked(self) -> int | None: ...


@dataclass(frozen=True)
class Framework:
    """A framework bncheck verifies: the flags a target may fix, and what a torch-only property
    means there.

    Attributes:
        name: as ``--framework`` names it.
        module: the adapter module (imported on first use).
        flag_types: constructor flags a target may fix (``fixed=``), with their types.
        convention: the preset a target of this framework follows unless told otherwise.
    """

    name: str
    module: str = ""
    flag_types: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    convention: str = "torch"

    def adapter(self) -> Any:
        """The adapter module (``bncheck.frameworks.flax``); imports the framework.

        Raises:
            TargetError: the framework is not installed (the message names the extra).
        """
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] not in ("jax", "jaxlib", "flax"):
                raise
            raise TargetError(f"framework={self.name!r} needs jax and flax, and {e.name!r} is "
                              f"not installed: pip install 'bncheck[jax]'") from None

    def skip_reason(self, prop: str) -> str | None:
        """Why property ``prop`` does not apply to this framework's targets, else None."""
        if not self.module:
            return None
        return self.adapter().SKIPPED.get(prop)  # type: ignore[no-any-return]

    def run_for(self, prop: str) -> Callable[..., None] | None:
        """This framework's meaning of a torch-only property ``prop`` (its own ``run``)."""
        if not self.module:
            return None
        return self.adapter().MEANINGS.get(prop)  # type: ignore[no-any-return]


_FLAX_FLAGS: dict[str, type | tuple[type, ...]] = {
    "use_fast_variance": bool, "use_bias": bool, "use_scale": bool, "axis": int,
    "axis_name": str}
_REGISTRY = {
    "torch": Framework("torch", flag_types={"affine": bool, "track_running_stats": bool,
                                            "bias": bool}),
    "flax-nnx": Framework("flax-nnx", "bncheck.frameworks.flax", _FLAX_FLAGS, "flax"),
    "flax-linen": Framework("flax-linen", "bncheck.frameworks.flax", _FLAX_FLAGS, "flax"),
}


def check_framework(name: Any) -> str:
    """``name`` if it is one of :data:`FRAMEWORKS`, else :class:`InvalidArgument`."""
    if name not in _REGISTRY:
        raise InvalidArgument(f"Expected framework to be one of {', '.join(FRAMEWORKS)}, "
                              f"received framework={name!r}")
    return str(name)


def framework(name: str) -> Framework:
    """The :class:`Framework` called ``name``."""
    return _REGISTRY[check_framework(name)]


def all_flag_types() -> dict[str, type | tuple[type, ...]]:
    """The flags a target of any framework may fix, with their types."""
    out: dict[str, type | tuple[type, ...]] = {}
    for fw in _REGISTRY.values():
        out.update(fw.flag_types)
    return out
