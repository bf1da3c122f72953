"""Flax BatchNorms (``flax.nnx`` and ``flax.linen``) behind the properties' interface.

>>> from bncheck.engine.runner import build_target
>>> from flax import nnx
>>> t = build_target(nnx.BatchNorm, framework="flax-nnx")
>>> bn = t.build(3, ndim=4)
>>> bn.weight_name, bn.mean_name, bn.stat_collection
('scale', 'mean', 'batch_stats')

A Flax module is functional underneath: its variables are collections of arrays (``params``
and ``batch_stats`` in Linen; ``nnx.Param`` and ``nnx.BatchStat`` variables in NNX, split by
``nnx.split``). :class:`FlaxAdapted` keeps those collections as flat dicts (``"bn.scale"``) and
runs the module as ``apply(variables, x, mode) -> (y, variables)``: eagerly by default (the
user's traceback stays readable), through ``jax.jit`` where a property compares the two.
Training and eval map to ``use_running_average`` (a call keyword when ``__call__`` takes it,
else the module's attribute, as ``nnx.view`` sets it), or to a declared mode keyword
(``mode_argument="train"``: the keyword *is* the training flag).

Arrays cross the boundary as NumPy: torch tensors in torch's layout come in, channels are moved
last (``axis=-1``, Flax's default) and converted; outputs go back the same way. Every call runs
under ``jax.enable_x64(True)``, a scoped setting: bncheck's float64 cases are float64 in JAX too,
and the user's process keeps its own ``jax_enable_x64``. A declared ``axis_name`` (a BatchNorm
that averages its statistics across devices) is bound by running every call under ``jax.vmap``
over a batch of one member with that axis name.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bncheck.engine.adapter import Adapted, Target
from bncheck.engine.target import Constructor
from bncheck.errors import PropertyFailure, TargetRaised

__all__ = ["FlaxAdapted", "build", "inspect_constructor", "SKIPPED", "MEANINGS", "x64"]

WEIGHT_NAMES = ("scale", "weight", "gamma")
BIAS_NAMES = ("bias", "beta")
STAT_NAMES = (("mean", "var"), ("running_mean", "running_var"), ("moving_mean", "moving_var"),
              ("ra_mean", "ra_var"))
#: The collection Flax keeps running statistics in (Linen's name; NNX's ``nnx.BatchStat``).
STATS = "batch_stats"
#: Constructor keywords bncheck draws, in Flax's spelling where it differs from torch's.
_SPELLINGS = {"eps": ("epsilon", "eps"), "momentum": ("momentum",),
              "affine": ("use_scale",), "bias": ("use_bias",)}


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """float64 enabled for bncheck's own calls into JAX, and only for them."""
    import jax

    with jax.enable_x64(True):
        yield


def _kind(t: Target) -> str:
    return "linen" if t.framework == "flax-linen" else "nnx"


def _init_params(obj: Any) -> Mapping[str, inspect.Parameter]:
    """The constructor's parameters (an ``nnx.Module`` class hides them behind its metaclass)."""
    for fn in ((obj.__init__,) if isinstance(obj, type) else ()) + (obj,):  # type: ignore[misc]
        try:
            params = dict(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            continue
        params.pop("self", None)
        if set(params) - {"args", "kwargs"}:
            return params
    return {}


def inspect_constructor(obj: Any) -> Constructor:
    """What a Flax class's signature takes of what bncheck draws (``epsilon``, ``momentum``,
    ``use_scale`` and ``use_bias`` as torch's ``eps``, ``momentum``, ``affine``, ``bias``)."""
    params = _init_params(obj)
    accepts = {k for k, spellings in _SPELLINGS.items() if any(s in params for s in spellings)}
    if "affine" in accepts and "use_bias" not in params:
        accepts.discard("affine")
    skip = {"rngs", "parent", "name", "num_features", "features"}
    positional = [p for n, p in params.items() if n not in skip and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = tuple(p.name for p in positional if p.default is p.empty)
    return Constructor(False, frozenset(accepts), False, False, required)


def _kwargs(obj: Any, wanted: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """torch-named config values in the Flax constructor's spelling (what it takes)."""
    params = _init_params(obj)
    out: dict[str, Any] = {}
    for key, spellings in _SPELLINGS.items():
        name = next((s for s in spellings if s in params), None)
        if name is None or key not in wanted:
            continue
        value = wanted[key]
        if key == "affine":
            out["use_scale"] = bool(value)
            if not value and "use_bias" in params:
                out["use_bias"] = False
        elif key == "bias":
            if not value or "use_bias" not in out:
                out.setdefault("use_bias", bool(value))
        else:
            out[name] = value
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out.update({k: v for k, v in fixed.items() if k in params or takes_any})
    return out


# -- arrays across the boundary -----------------------------------------------------------------
def to_jax(t: Tensor) -> Any:
    import jax.numpy as jnp

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: through float32, exactly
        return jnp.asarray(t.to(torch.float32).numpy()).astype(jnp.bfloat16)
    return jnp.asarray(t.contiguous().numpy())


def to_torch(a: Any) -> Tensor:
    import jax.numpy as jnp

    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(np.array(a.astype(jnp.float32))).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def _jax_dtype(dtype: torch.dtype) -> Any:
    import jax.numpy as jnp

    return {torch.float32: jnp.float32, torch.float64: jnp.float64,
            torch.float16: jnp.float16, torch.bfloat16: jnp.bfloat16}[dtype]


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _nested(flat: Mapping[str, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node: dict[Any, Any] = out
        for part in path:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[int(last) if last.isdigit() else last] = value
    return out


# -- the module as a function of its variables ---------------------------------------------------
class _Linen:
    """``module.apply`` over its collections, every collection but ``params`` mutable."""

    def __init__(self, obj: Any, kwargs: dict[str, Any], num_features: int, ndim: int,
                 channel_axis: int, mode_argument: str | None) -> None:
        import jax
        import jax.numpy as jnp

        params = _init_params(obj)
        for name in ("num_features", "features"):
            if name in params:
                kwargs[name] = num_features
        self.module = obj(**kwargs)
        shape = [2] + [1] * (ndim - 2)
        shape.insert(len(shape) if channel_axis == -1 else 1, num_features)
        self.mode_kwargs = _mode_keywords(type(self.module).__call__, mode_argument)
        self.key: Any = ("linen", self.module, mode_argument)
        init_kw = self.mode_kwargs(True)
        variables = self.module.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), **init_kw)
        self.variables = {c: _flat(dict(v)) for c, v in variables.items()}

    def apply(self, variables: dict[str, dict[str, Any]], x: Any, training: bool
              ) -> tuple[Any, dict[str, dict[str, Any]]]:
        nested = {c: _nested(v) for c, v in variables.items()}
        mutable = [c for c in nested if c != "params"] or False
        out = self.module.apply(nested, x, mutable=mutable, **self.mode_kwargs(training))
        y, updated = out if mutable else (out, {})
        new = dict(variables)
        for c, v in dict(updated).items():
            new[c] = _flat(dict(v))
        return y, new


class _NNX:
    """``nnx.merge`` of the variables, a call, ``nnx.split`` of the result."""

    def __init__(self, obj: Any, kwargs: dict[str, Any], num_features: int,
                 mode_argument: str | None) -> None:
        from flax import nnx

        params = _init_params(obj)
        if "rngs" in params:
            kwargs["rngs"] = nnx.Rngs(0)
        self.module = obj(num_features, **kwargs)
        if not isinstance(self.module, nnx.Module):
            raise TypeError(f"returned {type(self.module).__name__}, expected a flax.nnx.Module")
        self.mode_kwargs = _mode_keywords(type(self.module).__call__, mode_argument)
        self.graphdef, *states = nnx.split(self.module, nnx.Param, nnx.BatchStat, ...)
        self.key = ("nnx", self.graphdef, mode_argument)
        self.templates = states
        self.variables = {c: _flat(nnx.to_pure_dict(s))
                          for c, s in zip(("params", STATS, "other"), states, strict=True)}

    def apply(self, variables: dict[str, dict[str, Any]], x: Any, training: bool
              ) -> tuple[Any, dict[str, dict[str, Any]]]:
        import jax
        from flax import nnx

        states = []
        for c, template in zip(("params", STATS, "other"), self.templates, strict=True):
            state = jax.tree_util.tree_map(lambda a: a, template)
            nnx.replace_by_pure_dict(state, _nested(variables[c]))
            states.append(state)
        module = nnx.merge(self.graphdef, *states)
        kwargs = self.mode_kwargs(training)
        if not kwargs:  # the mode is an attribute, as nnx.view sets it
            module = nnx.view(module, use_running_average=not training)
        y = module(x, **kwargs)
        _, *after = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        return y, {c: _flat(nnx.to_pure_dict(s))
                   for c, s in zip(("params", STATS, "other"), after, strict=True)}


def _mode_keywords(call: Callable[..., Any], declared: str | None = None
                   ) -> Callable[[bool], dict[str, Any]]:
    """The call keywords that select train/eval: a declared keyword is the training flag;
    else ``use_running_average=not training`` when ``__call__`` takes it, else none (the
    module's attribute is set)."""
    if declared is not None:
        return lambda training: {declared: training}
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "use_running_average" in params:
        return lambda training: {"use_running_average": not training}
    return lambda training: {}


def build(t: Target, num_features: int, *, ndim: int, wanted: Mapping[str, Any],
          dtype: torch.dtype | None = None) -> FlaxAdapted:
    """Build ``t`` (a Flax class or factory) for ``ndim``-dim inputs with the torch-named config
    values ``wanted`` (``fixed`` flags are passed as they are spelled)."""
    fixed = dict(t.fixed)
    kwargs = _kwargs(t.obj, {k: v for k, v in wanted.items() if k not in fixed}, fixed)
    call = f"{t.label}({num_features}{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    try:
        with x64():
            model: _Linen | _NNX = (
                _Linen(t.obj, kwargs, num_features, ndim, t.channel_axis, t.mode_argument)
                if _kind(t) == "linen" else _NNX(t.obj, kwargs, num_features, t.mode_argument))
    except PropertyFailure:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
        from bncheck.engine.adapter import describe_exception

        raise TargetRaised(f"building the target as {call} raised "
                           f"{describe_exception(e, debug=t.debug)}") from None
    bn = FlaxAdapted(model, num_features, t, axis_name=fixed.get("axis_name"))
    if dtype is not None:
        bn.to(dtype)
    return bn


class FlaxAdapted:
    """A built Flax target with the interface properties use (:class:`bncheck.frameworks.
    BuiltTarget`): torch tensors in torch's layout in and out, statistics as ``(C,)`` float64
    copies.

    Attributes:
        variables: the module's collections as flat dicts (``{"params": {"scale": ...}}``).
        stat_collection: where the running statistics were found (``batch_stats`` in a
            correct layer).
        jit: calls go through ``jax.jit`` (compiled once per model, shape and dtype).
    """


    def __init__(self, model: _Linen | _NNX, num_features: int, target: Target, *,
                 axis_name: str | None = None) -> None:
        self.model = model
        self.module = model.module
        self.num_features = num_features
        self.target = target
        self.training = True
        self.axis_name = axis_name
        self.jit = False
        self.variables = model.variables
        names = target.names
        self.weight_name = self._find("params", names.weight, WEIGHT_NAMES)
        self.bias_name = self._find("params", names.bias, BIAS_NAMES)
        self.stat_collection: str | None = None
        self.mean_name = self.var_name = None
        for coll in (STATS, *[c for c in self.variables if c != STATS]):
            pair = self._stat_pair(coll, names.running_mean, names.running_var)
            if pair:
                self.stat_collection = coll
                self.mean_name, self.var_name = pair
                break
        count = names.num_batches_tracked or "num_batches_tracked"
        self.count_name = count if count in self.variables.get(STATS, {}) else None

    def invoke(self, what: str, fn: Callable[..., Any], *args: Any,
               passthrough: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Any:
        """:meth:`bncheck.engine.adapter.Adapted.invoke`: the one path into the target's code."""
        return Adapted.invoke(self, what, fn, *args,  # type: ignore[arg-type]
                              passthrough=passthrough, **kwargs)

    def to_target_layout(self, x: Tensor) -> Tensor:
        return x.movedim(1, -1) if self.target.channel_axis == -1 and x.dim() > 2 else x

    def from_target_layout(self, y: Tensor) -> Tensor:
        return y.movedim(-1, 1) if self.target.channel_axis == -1 and y.dim() > 2 else y

    # -- finding what properties read and set ------------------------------------------------
    def _holds(self, coll: str, key: str) -> bool:
        a = self.variables.get(coll, {}).get(key)
        return a is not None and getattr(a, "size", 0) == self.num_features

    def _find(self, coll: str, declared: str | None, usual: tuple[str, ...]) -> str | None:
        if declared is not None:
            return declared if self._holds(coll, declared) else None
        keys = [k for k in self.variables.get(coll, {}) if k.rsplit(".", 1)[-1] in usual
                and self._holds(coll, k)]
        keys.sort(key=lambda k: (k.count("."), usual.index(k.rsplit(".", 1)[-1])))
        return keys[0] if keys else None

    def _stat_pair(self, coll: str, mean: str | None, var: str | None
                   ) -> tuple[str, str] | None:
        if mean is not None or var is not None:
            ok = mean and var and self._holds(coll, mean) and self._holds(coll, var)
            return (mean, var) if ok else None  # type: ignore[return-value]
        for a, b in STAT_NAMES:
            keys = [k for k in self.variables.get(coll, {}) if k.rsplit(".", 1)[-1] == a
                    and self._holds(coll, k)]
            for k in keys:
                other = k[: len(k) - len(a)] + b
                if self._holds(coll, other):
                    return k, other
        return None

    # -- calls -------------------------------------------------------------------------------
    def _apply(self, variables: dict[str, dict[str, Any]], x: Any, training: bool
               ) -> tuple[Any, dict[str, dict[str, Any]]]:
        fn = _compiled(self.model, training, self.axis_name) if self.jit else \
            _bound(self.model, training, self.axis_name)
        return fn(variables, x)

    def call(self, x: Tensor, *, what: str = "forward") -> Tensor:
        """The module on ``x`` in the current mode; its collections are updated as a training
        step (or a wrong eval step) updates them."""
        import jax

        xt = self.to_target_layout(x)
        with x64():
            xj = to_jax(xt)
            y, new = self.invoke(what, self._apply, self.variables, xj, self.training)
            if not isinstance(y, jax.Array):
                raise TargetRaised(f"the target's {what} returned {type(y).__name__}, "
                                   f"expected a jax.Array")
            self.variables = _kept_dtypes(new, self.variables)
            out = to_torch(y)
        return self.from_target_layout(out)

    def train(self, training: bool = True) -> FlaxAdapted:
        self.training = training
        return self

    def to(self, dtype: torch.dtype) -> FlaxAdapted:
        """Every floating-point variable cast to ``dtype`` (what torch's ``module.to`` does)."""
        import jax.numpy as jnp

        target = _jax_dtype(dtype)
        with x64():
            self.variables = {c: {k: (a.astype(target) if jnp.issubdtype(a.dtype, jnp.floating)
                                      else a) for k, a in v.items()}
                              for c, v in self.variables.items()}
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Every variable, keyed ``collection.path`` (``params.scale``, ``batch_stats.mean``)."""
        with x64():
            return {f"{c}.{k}": to_torch(a) for c, v in self.variables.items()
                    for k, a in v.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        mine = {f"{c}.{k}" for c, v in self.variables.items() for k in v}
        missing, unexpected = sorted(mine - set(state)), sorted(set(state) - mine)
        if missing or unexpected:
            raise TargetRaised(f"loading its own variables into a fresh instance: missing "
                               f"{missing}, unexpected {unexpected}")
        with x64():
            self.variables = {c: {k: to_jax(state[f"{c}.{k}"]) for k in v}
                              for c, v in self.variables.items()}

    def save(self) -> dict[str, Tensor]:
        """The state as Flax keeps it (every collection's variables; see :meth:`state_dict`),
        for ``train_eval_switch``'s save into a fresh instance."""
        return self.state_dict()

    def load(self, saved: Mapping[str, Tensor]) -> None:
        """Load what another instance's :meth:`save` returned."""
        self.load_state_dict(saved)

    # -- parameters --------------------------------------------------------------------------
    @property
    def affine(self) -> bool:
        return self.weight_name is not None

    def params(self) -> tuple[Tensor | None, Tensor | None]:
        return (self._read("params", self.weight_name) if self.weight_name else None,
                self._read("params", self.bias_name) if self.bias_name else None)

    def param_names(self) -> list[str]:
        return [n for n in (self.weight_name, self.bias_name) if n is not None]

    def set_params(self, weight: Tensor, bias: Tensor) -> None:
        if self.weight_name is not None:
            self._write("params", self.weight_name, weight)
        if self.bias_name is not None:
            self._write("params", self.bias_name, bias)

    # -- statistics --------------------------------------------------------------------------
    @property
    def has_stats(self) -> bool:
        return self.mean_name is not None

    @property
    def stores_std(self) -> bool:
        return self.target.convention.running_stat == "std"

    def stats(self) -> tuple[Tensor, Tensor] | None:
        if self.stat_collection is None or self.mean_name is None or self.var_name is None:
            return None
        var = self._read(self.stat_collection, self.var_name)
        return (self._read(self.stat_collection, self.mean_name),
                var.square() if self.stores_std else var)

    def stored_stats(self) -> tuple[Tensor, Tensor]:
        self.require_stats()
        assert self.stat_collection and self.mean_name and self.var_name
        return (self._read(self.stat_collection, self.mean_name),
                self._read(self.stat_collection, self.var_name))

    def require_stats(self) -> tuple[Tensor, Tensor]:
        stats = self.stats()
        if stats is None:
            held = {c: sorted(v) for c, v in self.variables.items() if v}
            raise PropertyFailure(
                "no running statistics found: looked for "
                + ", ".join(f"{a}/{b}" for a, b in STAT_NAMES)
                + f" holding {self.num_features} values each in the module's collections "
                f"{held}; declare its names with --names running_mean=...,running_var=... "
                f"(Flax keeps them in the {STATS!r} collection, nnx.BatchStat in NNX)")
        return stats

    def stat_tensors(self) -> dict[str, Tensor]:
        if self.stat_collection is None:
            return {}
        with x64():
            return {n: to_torch(self.variables[self.stat_collection][n])
                    for n in (self.mean_name, self.var_name) if n}

    def stat_dtype(self) -> torch.dtype | None:
        tensors = self.stat_tensors()
        return next(iter(tensors.values())).dtype if tensors else None

    def set_stats(self, mean: Tensor, var: Tensor) -> None:
        self.require_stats()
        assert self.stat_collection and self.mean_name and self.var_name
        self._write(self.stat_collection, self.mean_name, mean)
        self._write(self.stat_collection, self.var_name,
                    var.clamp_min(0).sqrt() if self.stores_std else var)

    def num_batches_tracked(self) -> int | None:
        if self.count_name is None:
            return None
        return int(np.asarray(self.variables[STATS][self.count_name]).reshape(-1)[0])

    # -- helpers -----------------------------------------------------------------------------
    def _read(self, coll: str, name: str) -> Tensor:
        a = self.variables.get(coll, {}).get(name)
        if a is None or getattr(a, "size", 0) != self.num_features:
            raise PropertyFailure(f"{coll}.{name} no longer holds {self.num_features} values "
                                  f"(found {getattr(a, 'shape', type(a).__name__)})")
        with x64():
            return to_torch(a).reshape(-1).to(torch.float64)

    def _write(self, coll: str, name: str, values: Tensor) -> None:
        import jax.numpy as jnp

        old = self.variables[coll][name]
        with x64():
            new = jnp.asarray(values.detach().to(torch.float64).numpy()).astype(
                old.dtype).reshape(old.shape)
        self.variables = {**self.variables, coll: {**self.variables[coll], name: new}}


def _kept_dtypes(new: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
    """``new`` with every variable in the dtype it had before the call: an update is stored in
    the variable (as NNX's ``var[...] = value`` and torch's in-place buffer updates store it);
    Linen replaces ``ra_var.value`` by the blend, promoted to float32 when the statistics were
    cast to 16 bits."""
    return {c: {k: (a.astype(old[c][k].dtype) if k in old.get(c, {})
                    and hasattr(a, "astype") and a.dtype != old[c][k].dtype else a)
                for k, a in v.items()} for c, v in new.items()}


# -- compiled and bound calls --------------------------------------------------------------------
def _bound(model: _Linen | _NNX, training: bool, axis_name: str | None
           ) -> Callable[[Any, Any], Any]:
    """``model.apply`` in one mode; with an ``axis_name`` under ``jax.vmap`` over a leading
    batch of one member (the named axis must be bound for ``lax.pmean``)."""
    def fn(variables: Any, x: Any) -> Any:
        return model.apply(variables, x, training)

    if axis_name is None:
        return fn
    import jax

    def one(variables: Any, x: Any) -> Any:
        y, new = jax.vmap(fn, in_axes=(None, 0), axis_name=axis_name)(variables, x[None])
        return y[0], jax.tree_util.tree_map(lambda a: a[0], new)
    return one


_COMPILED: dict[Any, Callable[..., Any]] = {}


def _compiled(model: _Linen | _NNX, training: bool, axis_name: str | None
              ) -> Callable[[Any, Any], Any]:
    """``jax.jit`` of :func:`_bound`, shared by every model built alike (the same Linen module,
    the same NNX graph): jax then reuses its compilations across examples of one shape."""
    import jax

    key = (model.key, training, axis_name)
    try:
        hash(key)
    except TypeError:  # an unhashable module: compiled for this call only
        return jax.jit(_bound(model, training, axis_name))  # type: ignore[no-any-return]
    if key not in _COMPILED:
        if len(_COMPILED) > 64:
            _COMPILED.clear()
        _COMPILED[key] = jax.jit(_bound(model, training, axis_name))
    return _COMPILED[key]


from bncheck.frameworks._flax_properties import MEANINGS, SKIPPED  # noqa: E402
