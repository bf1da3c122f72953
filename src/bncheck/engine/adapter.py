"""Wrap any BatchNorm module so that properties can read and set what they need.

>>> import torch
>>> from bncheck.engine.adapter import Target
>>> t = Target.from_object(torch.nn.BatchNorm2d)
>>> bn = t.build(3, ndim=4)
>>> bn.weight_name, bn.mean_name
('weight', 'running_mean')
>>> bn.stats()[1]
tensor([1., 1., 1.], dtype=torch.float64)

Parameters are found as ``weight``/``bias`` or ``gamma``/``beta``; statistics as
``running_mean``/``running_var`` or ``moving_mean``/``moving_var`` (or ``mean``/``var``), unless
the target declares its own names (:class:`Names`); each in ``(C,)`` or any broadcast shape
holding ``C`` values, as a tensor or a Keras variable. A target may keep channels last
(``channel_axis=-1``), store the running standard deviation (a ``std`` convention), and take its
mode as a call argument (``mode_argument="training"``).

Every call into the target goes through :meth:`Adapted.invoke` (forward, ``train()``, ``.to()``,
``state_dict()``, ``load_state_dict()``, backward, gradcheck): an exception raised there becomes a
:class:`~bncheck.errors.TargetRaised` naming the user's file and line.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.engine.conventions import TORCH, Convention
from bncheck.engine.declaration import FLAG_TYPES, RANKS, Declaration
from bncheck.engine.target import (
    CONFIG_KWARGS,
    Constructor,
    bn_factory,
    inspect_constructor,
    variant_kwargs,
)
from bncheck.engine.variants import Variant
from bncheck.errors import PropertyFailure, TargetError, TargetRaised
from bncheck.infra.validation import NotSet, not_set

__all__ = ["Target", "Adapted", "attribute", "Names", "TargetRaised", "PropertyFailure",
           "CONFIG_KWARGS", "FLAG_TYPES", "user_location", "is_user_file", "supported_dims"]

WEIGHT_NAMES = (("weight", "bias"), ("gamma", "beta"))
STAT_NAMES = (("running_mean", "running_var"), ("moving_mean", "moving_var"), ("mean", "var"))
COUNT_NAMES = ("num_batches_tracked",)
ALL_DIMS = RANKS


@dataclass(frozen=True)
class Names:
    """Attribute names a target declares for what bncheck reads and sets (``None``: search the
    usual names)."""

    weight: str | None = None
    bias: str | None = None
    running_mean: str | None = None
    running_var: str | None = None
    num_batches_tracked: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str] | Names | None) -> Names:
        """``{"weight": "scale", ...}``; keys are torch's names (checked by the declaration's
        rule, :mod:`bncheck.engine.declaration`)."""
        if mapping is None:
            return cls()
        if isinstance(mapping, Names):
            return mapping
        return cls(**dict(Declaration(names=mapping).names or {}))

    def declared(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def supported_dims(obj: Any) -> tuple[int, ...] | None:
    """Input ranks ``obj`` accepts, found by trying it: a class stating them
    (``_allowed_dims``, bncheck's reference), or a torch BatchNorm class (or subclass) built
    with 2 channels whose ``_check_input_dim`` is tried on an input of each rank (a subclass
    that overrides it is taken at its word). ``None``: unknown (nothing to try)."""
    allowed = getattr(obj, "_allowed_dims", None)
    if isinstance(allowed, tuple):
        return allowed
    if not (isinstance(obj, type) and issubclass(obj, nn.modules.batchnorm._NormBase)):
        return None
    try:
        check = obj(2)._check_input_dim
    except Exception:  # noqa: BLE001 - user code: it cannot be tried this way
        return None
    accepted = []
    for rank in RANKS:
        try:
            check(torch.zeros((1, 2) + (1,) * (rank - 2)))
        except Exception:  # noqa: BLE001 - the layer's own refusal, whatever its type
            continue
        accepted.append(rank)
    return tuple(accepted) or None


# -- where in the user's code ------------------------------------------------------------------
_LIBRARY_DIRS = tuple(str(Path(p).resolve()) for p in {
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
    sysconfig.get_paths()["platlib"], str(Path(torch.__file__).parent.parent)})
_BNCHECK_DIR = str(Path(__file__).resolve().parent.parent)  # the package, not engine/
#: bncheck's bundled targets (the mutants, the reference), relative to the package.
_USER_INSIDE_BNCHECK = ("engine/mutants.py", "engine/mutants_variants.py",
                        "distributed/mutants.py", "reference/__init__.py")


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's code (not the standard library, site-packages, torch
    or bncheck itself, except bncheck's bundled targets)."""
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    if Path(path).is_relative_to(_BNCHECK_DIR):
        return Path(path).relative_to(_BNCHECK_DIR).as_posix() in _USER_INSIDE_BNCHECK
    return not path.startswith(_LIBRARY_DIRS) and "site-packages" not in path


def _shown(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename


def user_location(e: BaseException, *, full: bool = False) -> str:
    """Where ``e`` was raised in the user's code: ``file:line in function`` (innermost user
    frame), or the user-side traceback when ``full``; empty when no frame is the user's."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if is_user_file(f.filename)]
    if not frames:
        return ""
    if full:
        return "".join(f"  {_shown(f.filename)}:{f.lineno} in {f.name}\n    {f.line}\n"
                       for f in frames).rstrip()
    last = frames[-1]
    return f"{_shown(last.filename)}:{last.lineno} in {last.name}"


def describe_exception(e: BaseException, *, debug: bool = False) -> str:
    """``Type: message (at file:line in function)``; a bare assert as ``AssertionError at
    file:line``; with ``debug`` the user-side traceback follows."""
    where = user_location(e)
    message = str(e).strip()
    if not message:
        text = f"{type(e).__name__} at {where}" if where else type(e).__name__
    else:
        text = f"{type(e).__name__}: {message}" + (f" (at {where})" if where else "")
    if debug:
        tb = user_location(e, full=True)
        if tb:
            text += f"\nTraceback (the target's code, innermost last):\n{tb}"
    return text


@dataclass(frozen=True)
class Target:
    """A BatchNorm under verification: how to build it and what it declares.

    Args:
        obj: a Module class or a factory, built as ``obj(num_features)`` or, when its
            signature has ``num_dims``, ``obj(num_features, num_dims=ndim)``.
        label: how reports name it.
        convention: the running-statistics rule it declares.
        momentum, eps: the values it uses; passed to its constructor when it takes them.
        dims: the input ranks it supports.
        constructor: what its signature says (:func:`~bncheck.engine.target.inspect_constructor`).
        momentum_declared: the caller gave the momentum: never drawn, always passed.
        eps_declared: the caller gave the eps: never drawn, always passed.
        names: its own attribute names.
        channel_axis: 1, or -1 for layers that keep channels last.
        mode_argument: the call keyword that selects train/eval (Keras: ``training``); None when
            the mode comes from ``module.train()``/``eval()``.
        fixed: constructor flags never drawn (``{"affine": True}``).
        empty_batches: it declares that an empty batch is valid input (torch's classes do).
        debug: failures show the user-side traceback.
        declaration: what the user declared, whole (every path that builds the target again,
            a rank or a worker, builds it from this); :attr:`variant` comes from it.
    """

    obj: Callable[..., Any]
    label: str
    convention: Convention = TORCH
    momentum: float | None = TORCH.momentum
    eps: float = TORCH.eps
    dims: tuple[int, ...] = (2, 4)
    constructor: Constructor = field(
        default_factory=lambda: Constructor(False, frozenset(), False, False))
    momentum_declared: bool = False
    names: Names = field(default_factory=Names)
    channel_axis: int = 1
    mode_argument: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()
    empty_batches: bool = False
    debug: bool = False
    eps_declared: bool = False
    declaration: Declaration = field(default_factory=Declaration)

    @classmethod
    def from_object(cls, obj: Callable[..., Any], declaration: Declaration | None = None, *,
                    label: str | None = None, debug: bool = False) -> Target:
        """Describe ``obj`` as ``declaration`` says; what it leaves out is the convention's
        (momentum, eps, channel axis) or found by trying ``obj`` (``dims``: ``(2, 4)``
        restricted to the ranks :func:`supported_dims` finds; ``empty_batches``: torch's
        classes, or a class attribute ``accepts_empty_batches = True``)."""
        decl = declaration if declaration is not None else Declaration()
        conv = decl.rule
        dims = decl.dims
        if dims is None:
            known = supported_dims(obj)
            dims = (2, 4) if known is None else (tuple(d for d in (2, 4) if d in known)
                                                 or known)
        framework = decl.framework or "torch"
        info = (inspect_constructor(obj) if framework == "torch"
                else _framework_adapter(framework).inspect_constructor(obj))
        name: str = label or getattr(obj, "__qualname__", None) or repr(obj)
        empty = decl.empty_batches
        if empty is None:
            empty = info.torch_batchnorm or getattr(obj, "accepts_empty_batches", False) is True
        return cls(obj, name, conv,
                   conv.momentum if decl.momentum is not_set else decl.momentum,
                   conv.eps if decl.eps is None else decl.eps, tuple(dims), info,
                   decl.momentum is not not_set, Names.from_mapping(decl.names),
                   decl.channel_axis if decl.channel_axis is not None
                   else (decl.fixed or {}).get("axis", conv.channel_axis),
                   decl.mode_argument, tuple(sorted((decl.fixed or {}).items())), empty,
                   debug, decl.eps is not None, decl)

    @property
    def framework(self) -> str:
        """``torch`` (also Keras 3 on its torch backend), ``flax-nnx`` or ``flax-linen``
        (:mod:`bncheck.frameworks`), as declared."""
        return self.declaration.framework or "torch"

    @property
    def variant(self) -> Variant | None:
        """The declared BatchNorm variant (:mod:`bncheck.engine.variants`), judged by that variant's
        oracle; its arguments the constructor takes are passed to it (None: plain BatchNorm)."""
        return self.declaration.variant_spec

    @property
    def fixed_flags(self) -> dict[str, Any]:
        return dict(self.fixed)

    @property
    def configurable(self) -> frozenset[str]:
        """Constructor keywords bncheck draws: those the signature takes, less the declared
        ones (fixed flags, momentum, eps: a declared value is never drawn)."""
        out = set(self.constructor.accepts) - set(self.fixed_flags)
        if self.momentum_declared:
            out.discard("momentum")
        if self.eps_declared:
            out.discard("eps")
        return frozenset(out)

    @property
    def cumulative(self) -> bool:
        """Whether ``momentum=None`` (the cumulative average) is drawn or declared."""
        return self.momentum is None or (
            "momentum" in self.configurable and self.constructor.momentum_may_be_none)

    def build(self, num_features: int, *, ndim: int, eps: float | None = None,
              momentum: float | None | NotSet = not_set, affine: bool = True,
              track_running_stats: bool = True, bias: bool = True,
              dtype: torch.dtype | None = None, extra: Mapping[str, Any] | None = None
              ) -> Adapted:
        """Build the target for ``ndim``-dim inputs; config values it cannot take are dropped,
        fixed flags and a declared momentum or eps always win; ``extra`` keywords are passed
        as they are (a rank's ``process_group``)."""
        wanted: dict[str, Any] = {
            "eps": self.eps if eps is None or self.eps_declared else eps,
            "momentum": self.momentum if momentum is not_set or self.momentum_declared
            else momentum,
            "affine": affine, "track_running_stats": track_running_stats, "bias": bias,
            **self.fixed_flags}
        if self.framework != "torch":
            return _framework_adapter(self.framework).build(  # type: ignore[no-any-return]
                self, num_features, ndim=ndim, wanted=wanted, dtype=dtype)
        kwargs = {k: v for k, v in wanted.items() if k in self.constructor.accepts}
        if self.variant is not None:  # like momentum: passed where the constructor takes it
            kwargs.update(variant_kwargs(self.obj, self.variant.kwargs))
        if not kwargs.get("affine", True):
            kwargs.pop("bias", None)  # torch: bias= only where affine
        kwargs.update(extra or {})
        try:
            module = bn_factory(self.obj, **kwargs)(num_features, ndim)
        except TargetError as e:
            cause = e.__cause__
            detail = describe_exception(cause, debug=self.debug) if cause else str(e)
            raise TargetRaised(f"{e.args[0].split(' raised ')[0]} raised {detail}"
                               if cause else str(e)) from None
        try:
            _materialize(module, num_features, ndim, self.channel_axis)
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            raise TargetRaised(f"the target raised {describe_exception(e, debug=self.debug)} "
                               f"while its state was made before the first call") from None
        bn = Adapted(module, num_features, self, affine=kwargs.get("affine") is not False)
        if dtype is not None:
            bn.to(dtype)
        return bn


def _framework_adapter(name: str) -> Any:
    """The adapter module of framework ``name`` (imported here, on first use)."""
    from bncheck.frameworks import framework

    return framework(name).adapter()


def is_keras_layer(module: Any) -> bool:
    """Whether ``module`` is a Keras 3 layer (on the torch backend, also an ``nn.Module``)."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(module).__mro__)


def _materialize(module: nn.Module, num_features: int, ndim: int, channel_axis: int) -> None:
    """Make the state a framework makes at the first call, the way the framework makes it and
    changing no statistics: a Keras layer's ``build(input_shape)``; a torch lazy module's first
    call, in eval mode without autograd, on a batch of zeros (eval reads no batch statistics
    into the running ones)."""
    shape = [2, num_features] + [1] * (ndim - 2)
    if channel_axis == -1 and ndim > 2:
        shape = [2] + [1] * (ndim - 2) + [num_features]
    if is_keras_layer(module) and getattr(module, "built", True) is False:
        module.build(tuple(shape))  # type: ignore[operator]
    elif (isinstance(module, nn.modules.lazy.LazyModuleMixin)
          and module.has_uninitialized_params()):
        training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros(shape))
        module.train(training)


def _find_pair(module: nn.Module, pairs: tuple[tuple[str, str], ...],
               channels: int) -> tuple[str, str] | None:
    for a, b in pairs:
        ta, tb = _resolve(module, a), _resolve(module, b)
        if (ta is not None and tb is not None and ta.numel() == channels
                and tb.numel() == channels):
            return a, b
    return None


def _owner(module: nn.Module, name: str) -> tuple[Any, str]:
    """The object holding attribute ``name`` and its last part: ``"bn.running_mean"`` names
    ``running_mean`` of submodule ``bn`` (a wrapper's BatchNorm, as its state_dict keys it)."""
    *path, attr = name.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part, None)
    return owner, attr


def attribute(module: nn.Module, name: str) -> Any:
    """Attribute ``name`` of ``module``, dotted names reaching into submodules (None if absent)."""
    owner, attr = _owner(module, name)
    return getattr(owner, attr, None) if owner is not None else None


def _nested_prefix(module: nn.Module, channels: int) -> str:
    """``""`` when the module holds its statistics itself (or holds none anywhere); else the
    path, with a trailing dot, of the one submodule that holds them: a wrapper such as
    ``self.bn = nn.BatchNorm1d(C)`` around a transpose, ghost batches or an activation."""
    if _find_pair(module, STAT_NAMES, channels):
        return ""
    found = [f"{path}." for path, sub in module.named_modules()
             if path and _find_pair(sub, STAT_NAMES, channels)]
    return found[0] if len(found) == 1 else ""


def _resolve(module: nn.Module, name: str) -> Tensor | None:
    """The tensor behind attribute ``name`` (dotted names reach into submodules): a tensor, or
    a variable holding one (Keras)."""
    t = attribute(module, name)
    if isinstance(t, Tensor):
        return t
    value = getattr(t, "value", None)
    return value if isinstance(value, Tensor) else None


def _swapped_call(module: nn.Module, params: dict[str, Tensor], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """``functional_call`` for a ``torch.jit.ScriptModule`` subclass written in Python (which
    torch.func refuses): the parameters are swapped in for the call and put back after."""
    saved = {}
    for key, value in params.items():
        owner, attr = _owner(module, key)
        saved[key] = owner._parameters[attr]
        owner._parameters[attr] = value
    try:
        return module(*args, **kwargs)
    finally:
        for key, value in saved.items():
            owner, attr = _owner(module, key)
            owner._parameters[attr] = value


def _prefixed(at: str, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((at + a, at + b) for a, b in pairs)


class Adapted:
    """A built target with uniform access to its parameters and statistics (``(C,)`` float64
    copies, in torch's layout and meaning: the running *variance*, channels in dim 1)."""

    def __init__(self, module: nn.Module, num_features: int, target: Target | None = None,
                 *, affine: bool = True) -> None:
        self.module = module
        self.num_features = num_features
        self.target = target if target is not None else Target(type(module), "module")
        self.training = bool(getattr(module, "training", True))
        names = self.target.names
        # Nothing declared: a wrapper's one BatchNorm submodule holds what the usual names name.
        at = "" if names.declared() else _nested_prefix(module, num_features)
        self.weight_name, self.bias_name = self._slots(
            (names.weight, names.bias), _prefixed(at, WEIGHT_NAMES))
        if not affine:  # parameters kept but switched off by the flag: not the layer's affine
            self.weight_name = self.bias_name = None
        self.mean_name, self.var_name = self._slots(
            (names.running_mean, names.running_var), _prefixed(at, STAT_NAMES))
        counts = ((names.num_batches_tracked,) if names.num_batches_tracked
                  else tuple(at + n for n in COUNT_NAMES))
        self.count_name = next((n for n in counts if _resolve(module, n) is not None), None)
        self.before_call: tuple[tuple[Tensor, Tensor] | None, int | None] = (None, None)

    def _slots(self, declared: tuple[str | None, str | None],
               usual: tuple[tuple[str, str], ...]) -> tuple[str | None, str | None]:
        """A declared name wins; otherwise the usual pairs (both present), then each usual name
        on its own (torch's ``bias=False`` keeps a weight without a bias)."""
        if declared[0] is None and declared[1] is None:
            pair = _find_pair(self.module, usual, self.num_features)
            if pair:
                return pair
        out = []
        for i, name in enumerate(declared):
            if name is None:
                name = next((p[i] for p in usual if self._holds(p[i])), None)
            out.append(name if name is not None and self._holds(name) else None)
        return out[0], out[1]

    def _holds(self, name: str) -> bool:
        t = _resolve(self.module, name)
        return t is not None and t.numel() == self.num_features

    # -- the one path into the target's code -------------------------------------------------
    def invoke(self, what: str, fn: Callable[..., Any], *args: Any,
               passthrough: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, where ``fn`` runs the target's code; an exception raised
        there becomes :class:`TargetRaised` naming ``what`` and the user's file and line
        (``passthrough`` exceptions are bncheck's own findings and propagate)."""
        try:
            return fn(*args, **kwargs)
        except passthrough:
            raise
        except PropertyFailure:
            raise
        except Exception as e:  # noqa: BLE001 - user code: report whatever it raised
            raise TargetRaised(f"the target raised "
                               f"{describe_exception(e, debug=self.target.debug)} in {what}"
                               ) from None

    def call(self, x: Tensor, *, what: str = "forward") -> Tensor:
        """``module(x)`` in the target's layout and mode convention; the output comes back in
        torch's layout (channels in dim 1). A training call of a variant records the running
        statistics and count it started from (:attr:`before_call`: its oracle reads them)."""
        kwargs = ({self.target.mode_argument: self.training}
                  if self.target.mode_argument else {})
        if self.training and self.target.variant is not None:
            self.before_call = (self.stats(), self.num_batches_tracked())
        xt = self.to_target_layout(x)
        y = self.invoke(what, lambda: self.module(xt, **kwargs))
        if not isinstance(y, Tensor):
            raise TargetRaised(f"the target's {what} returned {type(y).__name__}, "
                               f"expected a Tensor")
        return self.from_target_layout(y)

    def functional(self, x: Tensor, params: Mapping[str, Tensor], *, what: str) -> Tensor:
        """The forward with the parameters replaced by ``params`` (``torch.func.functional_call``),
        for gradient checks."""
        from torch.func import functional_call

        kwargs = ({self.target.mode_argument: self.training}
                  if self.target.mode_argument else {})
        call = (_swapped_call if isinstance(self.module, torch.jit.ScriptModule)
                else functional_call)
        y = self.invoke(what, call, self.module, dict(params), (self.to_target_layout(x),),
                        kwargs)
        if not isinstance(y, Tensor):
            raise TargetRaised(f"the target's {what} returned {type(y).__name__}, "
                               f"expected a Tensor")
        return self.from_target_layout(y)

    def train(self, training: bool = True) -> Adapted:
        self.training = training
        self.invoke(f"module.train({training})", self.module.train, training)
        return self

    def to(self, dtype: torch.dtype) -> Adapted:
        self.invoke(f"module.to({dtype})", self.module.to, dtype)
        return self

    def state_dict(self) -> dict[str, Any]:
        return dict(self.invoke("module.state_dict()", self.module.state_dict))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.invoke("load_state_dict of its own state_dict into a fresh instance",
                    self.module.load_state_dict, state)

    def save(self) -> Any:
        """The state as the module's framework saves it: a Keras layer's ``get_weights()`` (its
        ``state_dict`` keys name the instance: ``batch_normalization_3/gamma``), else
        ``state_dict()``."""
        layer: Any = self.module  # a Keras layer's own methods
        if is_keras_layer(layer):
            return self.invoke("layer.get_weights()", layer.get_weights)
        return self.state_dict()

    def load(self, saved: Any) -> None:
        """Load what another instance's :meth:`save` returned."""
        layer: Any = self.module
        if is_keras_layer(layer):
            self.invoke("layer.set_weights() of another instance's get_weights() into a fresh "
                        "instance", layer.set_weights, saved)
        else:
            self.load_state_dict(saved)

    def backward(self, y: Tensor, grad: Tensor, *, what: str = "backward") -> None:
        self.invoke(what, y.backward, grad)

    def grad(self, y: Tensor, x: Tensor, grad: Tensor, *, what: str = "backward") -> Tensor:
        (dx,) = self.invoke(what, torch.autograd.grad, y, x, grad)
        return dx  # type: ignore[no-any-return]

    def gradcheck(self, fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], *,
                  what: str, **kwargs: Any) -> None:
        from torch.autograd.gradcheck import GradcheckError

        self.invoke(what, torch.autograd.gradcheck, fn, inputs, passthrough=(GradcheckError,),
                    **kwargs)

    # -- layout ------------------------------------------------------------------------------
    def to_target_layout(self, x: Tensor) -> Tensor:
        if self.target.channel_axis == 1 or x.dim() <= 2:
            return x
        moved = x.movedim(1, -1)
        return moved.contiguous() if x.is_contiguous() else moved

    def from_target_layout(self, y: Tensor) -> Tensor:
        if self.target.channel_axis == 1 or y.dim() <= 2:
            return y
        return y.movedim(-1, 1)

    # -- state (for stateless calls) -----------------------------------------------------------
    def snapshot(self) -> dict[str, Tensor]:
        """Copies of every tensor the module keeps besides its parameters (buffers and plain
        tensor attributes)."""
        params = {id(p) for p in self.module.parameters()}
        out = {}
        for name, t in vars(self.module).items():
            if isinstance(t, Tensor) and id(t) not in params:
                out[name] = t.detach().clone()
        for name, t in self.module.named_buffers():  # a wrapper's BatchNorm's too ("bn.x")
            if t is not None:
                out[name] = t.detach().clone()
        return out

    def restore(self, saved: Mapping[str, Tensor]) -> None:
        """Put back what :meth:`snapshot` saved."""
        # Replaced, not copied into: autograd may have saved the old tensors (torch's
        # batch_norm saves the running statistics for its backward).
        for name, value in saved.items():
            owner, attr = _owner(self.module, name)
            setattr(owner, attr, value.clone())

    # -- parameters --------------------------------------------------------------------------
    @property
    def affine(self) -> bool:
        return self.weight_name is not None

    def params(self) -> tuple[Tensor | None, Tensor | None]:
        """The current weight and bias as ``(C,)`` float64 copies (None where absent)."""
        return (self._read(self.weight_name) if self.weight_name else None,
                self._read(self.bias_name) if self.bias_name else None)

    def param_names(self) -> list[str]:
        """The attribute names of the weight and bias that exist (for functional calls)."""
        return [n for n in (self.weight_name, self.bias_name) if n is not None]

    def param_key(self, name: str) -> str:
        """The ``named_parameters`` key of attribute ``name`` (a Keras variable's differs)."""
        t = _resolve(self.module, name)
        for key, p in self.module.named_parameters():
            if p is t:
                return key
        return name

    def set_params(self, weight: Tensor, bias: Tensor) -> None:
        """Copy ``(C,)`` values into the weight and bias that exist."""
        if self.weight_name is not None:
            self._write(self.weight_name, weight)
        if self.bias_name is not None:
            self._write(self.bias_name, bias)

    # -- statistics --------------------------------------------------------------------------
    @property
    def has_stats(self) -> bool:
        return self.mean_name is not None and self.var_name is not None

    @property
    def stores_std(self) -> bool:
        return self.target.convention.running_stat == "std"

    def stats(self) -> tuple[Tensor, Tensor] | None:
        """The running mean and variance as ``(C,)`` float64 copies, or None when none found
        (a stored standard deviation is squared)."""
        if self.mean_name is None or self.var_name is None:
            return None
        var = self._read(self.var_name)
        return (self._read(self.mean_name), var.square() if self.stores_std else var)

    def stored_stats(self) -> tuple[Tensor, Tensor]:
        """The running mean and the stored second statistic (variance or std), as stored."""
        self.require_stats()
        assert self.mean_name is not None and self.var_name is not None
        return self._read(self.mean_name), self._read(self.var_name)

    def require_stats(self) -> tuple[Tensor, Tensor]:
        stats = self.stats()
        if stats is None:
            tensors = [n for n in vars(self.module) if _resolve(self.module, n) is not None]
            raise PropertyFailure(
                "no running statistics found: looked for "
                + ", ".join(f"{a}/{b}" for a, b in STAT_NAMES)
                + f" holding {self.num_features} values each; the module has "
                + (", ".join(tensors) or "no tensor attributes")
                + f" (buffers: {', '.join(n for n, _ in self.module.named_buffers()) or 'none'})"
                + "; declare its names with names={'running_mean': ..., 'running_var': ...} "
                  "(--names running_mean=...,running_var=...), or, if it keeps none by design "
                  "(it normalizes with the batch's statistics in eval too), "
                  "fixed={'track_running_stats': False} (--fixed track_running_stats=false)")
        return stats

    def stat_tensors(self) -> dict[str, Tensor]:
        """The running-statistics tensors themselves, by attribute name."""
        out = {}
        for name in (self.mean_name, self.var_name):
            t = _resolve(self.module, name) if name else None
            if name and t is not None:
                out[name] = t
        return out

    def stat_dtype(self) -> torch.dtype | None:
        t = _resolve(self.module, self.mean_name) if self.mean_name else None
        return t.dtype if t is not None else None

    def set_stats(self, mean: Tensor, var: Tensor) -> None:
        """Copy ``(C,)`` running mean and variance into the statistics (as std where stored)."""
        self.require_stats()
        assert self.mean_name is not None and self.var_name is not None
        self._write(self.mean_name, mean)
        self._write(self.var_name, var.clamp_min(0).sqrt() if self.stores_std else var)

    def num_batches_tracked(self) -> int | None:
        t = _resolve(self.module, self.count_name) if self.count_name else None
        return int(t) if t is not None and t.numel() == 1 else None

    def set_num_batches_tracked(self, count: int) -> None:
        """Install ``count`` (a long horizon) in the counter :meth:`num_batches_tracked` reads."""
        t = _resolve(self.module, self.count_name) if self.count_name else None
        if t is not None and t.numel() == 1:
            with torch.no_grad():
                t.copy_(torch.tensor(count).to(t.dtype))  # wraps or rounds as its dtype does

    # -- helpers -----------------------------------------------------------------------------
    def _read(self, name: str) -> Tensor:
        t = _resolve(self.module, name)
        if t is None or t.numel() != self.num_features:
            got = tuple(t.shape) if t is not None else type(attribute(self.module,
                                                                       name)).__name__
            raise PropertyFailure(f"{name} no longer holds {self.num_features} values "
                                  f"(found {got})")
        return t.detach().reshape(-1).to(torch.float64).clone()

    def _write(self, name: str, values: Tensor) -> None:
        t = _resolve(self.module, name)
        assert t is not None
        new = values.detach().reshape(t.shape).to(dtype=t.dtype, device=t.device)
        try:
            with torch.no_grad():
                t.copy_(new)
        except RuntimeError:  # e.g. an inference tensor left by the target: replace it
            owner, attr = _owner(self.module, name)
            setattr(owner, attr, nn.Parameter(new) if isinstance(t, nn.Parameter) else new)

