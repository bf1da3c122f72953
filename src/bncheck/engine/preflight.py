"""Before any property runs: is the target a BatchNorm bncheck can build, which declared or
drawn constructor flags crash it, and what is structurally wrong that other properties would
only see as a consequence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bncheck.engine.adapter import Target
from bncheck.engine.properties import Facts
from bncheck.errors import PropertyFailure, TargetError, TargetHung, TargetRaised

__all__ = ["preflight", "Finding", "Guard", "CORE_FORWARD"]

#: Called with a step's description before each step that runs the target's code; the watchdog
#: uses it to know what is running and to replay a step that hung as :class:`TargetHung`.
Guard = Callable[[str], None]
#: The description of the training forward every property needs (a hang there ends the run).
CORE_FORWARD = "the first training forward"


def _no_guard(step: str) -> None:
    return None

#: The flag values bncheck draws besides the defaults, and the default each falls back to.
_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("affine", False, True), ("track_running_stats", False, True), ("bias", False, True),
    ("momentum", None, dataclasses.MISSING))


@dataclasses.dataclass(frozen=True)
class Finding:
    """A constructor flag value the target cannot take: reported once, then fixed."""

    flag: str
    value: Any
    message: str
    call: str


def _probe_input(t: Target, channels: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ndim = t.dims[0]
    return torch.randn((4, channels, *([3] * (ndim - 2))), generator=gen)


def _call_text(t: Target, channels: int, **kwargs: Any) -> str:
    args = [str(channels)] + (["num_dims=" + str(t.dims[0])] if t.constructor.takes_num_dims
                              else []) + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{t.label}({', '.join(args)})"


def preflight(t: Target, *, channels: int = 3, guard: Guard = _no_guard
              ) -> tuple[Target, list[Finding], Facts]:
    """Check ``t`` can be built and run as a BatchNorm.

    Returns the target with crashing flags fixed, one finding per such flag, and the facts
    properties use to name a consequence. ``guard(step)`` runs before each step that calls the
    target (a step that hangs is then a finding like a step that raises).

    Raises:
        TargetHung: the first training forward did not return (every property would hang).
        TargetError: it is not a BatchNorm bncheck can build: not a Module class or factory, a
            constructor needing other arguments, a build that raises, or an output whose shape
            differs from the input's (exit code 2 in the CLI).
    """
    obj = t.obj
    if t.framework == "torch" and isinstance(obj, type) and not issubclass(obj, nn.Module):
        flax = any(c.__module__.startswith("flax.") for c in obj.__mro__)
        raise TargetError(f"{t.label} is a class but not a torch.nn.Module: expected a BatchNorm "
                          f"Module class or a factory returning one"
                          + ("; it is a Flax module: give --framework flax-nnx or flax-linen "
                             "(framework='flax-nnx')" if flax else ""))
    if t.constructor.required:
        raise TargetError(
            f"{t.label} cannot be built from num_features alone: it also needs "
            f"{', '.join(t.constructor.required)}; wrap it in a factory, e.g. "
            f"def make(num_features): return {t.label.split(':')[-1]}(num_features, ...)")
    try:
        guard(f"building the target as {_call_text(t, channels)}")
        bn = t.build(channels, ndim=t.dims[0])
    except TargetRaised as e:
        raise TargetError(f"cannot build the target {_call_text(t, channels)}: {e}") from None
    x = _probe_input(t, channels)
    try:
        guard(f"{CORE_FORWARD} of {_call_text(t, channels)} on an input of shape "
              f"{tuple(x.shape)}")
        y = _first_forward(t, bn, x)
    except TargetHung:
        raise
    except TargetRaised:
        y = None  # a defect: the properties report it, each where it shows
    if y is not None and tuple(y.shape) != tuple(x.shape):
        shown = tuple(bn.to_target_layout(x).shape)
        raise TargetError(
            f"{t.label} is not a BatchNorm: for an input of shape {shown} it returned shape "
            f"{tuple(bn.to_target_layout(y).shape)} (a BatchNorm returns its input's shape"
            + ("" if t.channel_axis == -1 else "; channels last? declare channel_axis=-1")
            + ")")
    findings: list[Finding] = []
    for flag, value, default in _FLAGS:
        if y is None:  # the default build already fails: no flag is to blame
            break
        if flag not in t.configurable:
            continue
        if flag == "momentum" and not t.cumulative:
            continue
        message = _try_flag(t, channels, flag, value, x, guard)
        if message is None:
            continue
        call = _call_text(t, channels, **{flag: value})
        findings.append(Finding(flag, value, message, call))
        fixed = dict(t.fixed)
        if flag == "momentum":
            t = dataclasses.replace(t, constructor=dataclasses.replace(
                t.constructor, momentum_may_be_none=False))
        else:
            fixed[flag] = default
            t = dataclasses.replace(t, fixed=tuple(sorted(fixed.items())))
    no_stats = None
    if not bn.has_stats:
        if dict(t.fixed).get("track_running_stats") is False:  # declared: none by design
            no_stats = ("the target declares track_running_stats=False: it keeps no running "
                        "statistics and normalizes with the batch's in eval too, as torch does")
        else:
            try:
                bn.require_stats()
            except PropertyFailure as e:
                no_stats = str(e)
            findings.append(Finding("running_statistics", None, str(no_stats), t.label))
    frozen = None if y is None or no_stats else _frozen(t, channels, x, guard)
    if frozen:
        findings.append(Finding("training_mode", None, frozen, t.label))
    design = (None if y is None or no_stats or frozen or t.variant is not None
              else _running_in_training(t, channels, x, guard))
    if design:
        findings.append(Finding("training_mode", None, design, t.label))
    return t, findings, Facts(stats_not_cast=_stats_not_cast(t, channels, guard),
                              mode_from_grad=_mode_from_grad(t, channels, x, guard),
                              no_stats=no_stats, frozen=frozen, running_in_training=design,
                              computes_in_float32=_computes_in_float32(t, channels, x, guard))


def _computes_in_float32(t: Target, channels: int, x: torch.Tensor,
                         guard: Guard) -> str | None:
    """Whether a float64 module and input are computed in float32 (a Keras dtype policy):
    the training output is off the float64 oracle by float32 rounding (relative 1e-9 to 1e-4)
    where a float64 computation is within 1e-12."""
    from bncheck.engine import oracle

    try:
        guard("a float64 training forward (preflight)")
        bn = t.build(channels, ndim=t.dims[0], dtype=torch.float64)
        x64 = x.to(torch.float64) * (1 + 2.0**-40) + 2.0**-35  # digits float32 cannot hold
        y = bn.train(True).call(x64, what="a float64 training forward").detach()
    except (TargetRaised, PropertyFailure):
        return None
    w, b = bn.params()
    want = oracle.train_forward(x64, eps=t.eps, weight=w, bias=b)
    if want.shape != y.shape or not bool(torch.isfinite(y).all()):
        return None
    err = float((y.to(torch.float64) - want).abs().max() / want.abs().max().clamp_min(1.0))
    if y.dtype != torch.float32 and not 1e-9 < err < 1e-4:
        return None
    return (f"the target computes in float32 whatever dtype it is given (a float64 training "
            f"output is off by {err:.2g}, float32 rounding), so its float64 cases are judged "
            f"as float32 ones")


def _running_in_training(t: Target, channels: int, x: torch.Tensor,
                         guard: Guard) -> str | None:
    """Whether a training forward normalizes with the running averages (as they were, or
    updated with this batch first) instead of the batch statistics: a design (RealNVP-style
    BatchNorm in normalizing flows), not BatchNorm in training; one finding names it."""
    from bncheck.engine import oracle

    try:
        guard("a training forward with installed running statistics (preflight)")
        bn = t.build(channels, ndim=t.dims[0], dtype=torch.float64)
        x64 = x.to(torch.float64)
        mean, var = oracle.batch_stats(x64)
        # Far from the batch's: a Batch Renorm (r = sigma_B / sigma, d = (mu_B - mu) / sigma)
        # equals normalizing with the running statistics until r and d are clipped, and here
        # r ~ 1/10 and d ~ 100 clip for any r_max < 10, d_max < 100.
        bn.set_stats(mean + mean.abs() + 100.0 * torch.sqrt(var * 100.0 + 1.0),
                     var * 100.0 + 1.0)
        before = bn.require_stats()
        y_train = bn.train(True).call(x64, what="a training forward").detach().to(
            torch.float64)
        after = bn.require_stats()
    except (TargetRaised, PropertyFailure):
        return None
    w, b = bn.params()

    def near(m: torch.Tensor, v: torch.Tensor) -> bool:
        want = oracle.normalize(x64, m, v, eps=t.eps, weight=w, bias=b)
        return want.shape == y_train.shape and torch.allclose(y_train, want, rtol=1e-6,
                                                              atol=1e-8)

    if near(mean, var) or not (near(*after) or near(*before)):
        return None
    which = "updated with this batch first" if near(*after) else "as they were"
    return (f"training normalizes with the running averages ({which}), not the batch's "
            f"statistics: a design (RealNVP-style BatchNorm in normalizing flows), not "
            f"BatchNorm in training; the training properties' failures are its consequences. "
            f"If that is intended, verify its eval behaviour and its statistics: "
            f"--property eval_forward --property running_stats_update --property "
            f"stats_are_buffers --property initial_state")


def _first_forward(t: Target, bn: Any, x: torch.Tensor) -> torch.Tensor:
    """The first training forward, refusing a target that is not a BatchNorm at all (one usage
    error naming what it takes or returns, not the same failure in every property): a forward
    that takes no input, returns something other than one tensor, or returns it elsewhere than
    the input (a meta-device tensor has no values to check).

    Raises:
        TargetError: as above.
        TargetRaised: the forward raised (a defect the properties report).
    """
    import inspect

    module = bn.train(True).module
    xt = bn.to_target_layout(x)
    kwargs = {t.mode_argument: True} if t.mode_argument else {}
    shown = f"an input of shape {tuple(xt.shape)}"
    try:
        inspect.signature(module.forward).bind(xt, **kwargs)
    except TypeError as e:
        raise TargetError(f"{t.label} is not a BatchNorm bncheck can call: its forward does not "
                          f"take one input tensor ({e})") from None
    except ValueError:  # no signature to read (a C extension): call it and see
        pass
    y = bn.invoke("a training forward", lambda: module(xt, **kwargs))
    if not isinstance(y, torch.Tensor):
        raise TargetError(f"{t.label} is not a BatchNorm: for {shown} its forward returned "
                          f"{_what(y)}, expected one tensor of the input's shape")
    if y.device != xt.device:
        raise TargetError(f"{t.label} is not a BatchNorm bncheck can check: for {shown} on "
                          f"device {xt.device} its forward returned a tensor on device "
                          f"{y.device}" + (" (a meta tensor has a shape but no values)"
                                            if y.device.type == "meta" else ""))
    return bn.from_target_layout(y)


def _what(value: Any) -> str:
    """``a tuple of 2 (Tensor, Tensor)``, ``a ndarray``, ``None``."""
    if value is None:
        return "None"
    name = type(value).__name__
    if isinstance(value, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4
                                                                   else "")
        return f"a {name} of {len(value)} ({inner})"
    module = type(value).__module__
    return f"a {name if module == 'builtins' else f'{module}.{name}'}"


def _frozen(t: Target, channels: int, x: torch.Tensor, guard: Guard) -> str | None:
    """Whether a training forward normalizes with the stored statistics and leaves them
    unchanged: a frozen BatchNorm (torchvision's FrozenBatchNorm2d, a ``train()`` that keeps
    eval mode), which is by design not a BatchNorm in training."""
    try:
        guard("a training and an eval forward of the same input (preflight)")
        bn = t.build(channels, ndim=t.dims[0])
        before = bn.stats()
        y_train = bn.train(True).call(x, what="a training forward").detach()
        after = bn.stats()
        stayed_eval = getattr(bn.module, "training", True) is False
        y_eval = bn.train(False).call(x, what="an eval forward").detach()
    except (TargetRaised, PropertyFailure):
        return None
    if before is None or after is None or not all(
            torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        return None
    if y_train.shape != y_eval.shape or not torch.allclose(y_train, y_eval, rtol=1e-5,
                                                             atol=1e-6, equal_nan=True):
        return None
    why = ("module.train() left module.training False" if stayed_eval else
           "a training forward gave the eval output")
    return (f"the target is frozen, not a BatchNorm in training: {why}, normalizing with the "
            f"stored running statistics and leaving them unchanged (a frozen BatchNorm such as "
            f"torchvision's FrozenBatchNorm2d). If that is intended, verify what it does: its "
            f"eval behaviour, with --property eval_forward --property grad_mode_independence "
            f"--property stats_are_buffers --property initial_state (the properties that check "
            f"training are skipped)")


def _mode_from_grad(t: Target, channels: int, x: torch.Tensor, guard: Guard) -> str | None:
    """Whether an eval forward with grad enabled differs from one under no_grad (the layer
    then picks its mode from autograd's state)."""
    try:
        guard("eval forwards with and without grad (preflight)")
        outs = []
        for grad in (False, True):
            bn = t.build(channels, ndim=t.dims[0]).train(True)
            bn.call(x, what="a training forward")
            bn.train(False)
            with torch.set_grad_enabled(grad):
                outs.append(bn.call(x * 0.5 + 1, what="an eval forward").detach())
    except (TargetRaised, PropertyFailure):
        return None
    if outs[0].shape == outs[1].shape and torch.allclose(outs[0], outs[1], rtol=1e-4,
                                                        atol=1e-5, equal_nan=True):
        return None
    return ("train/eval is chosen by torch.is_grad_enabled(), not module.training: an eval "
            "forward with grad enabled differs from one under no_grad (grad_mode_independence)")


def _try_flag(t: Target, channels: int, flag: str, value: Any, x: torch.Tensor,
              guard: Guard) -> str | None:
    kwargs: dict[str, Any] = {flag: value}
    try:
        guard(f"{_call_text(t, channels, **kwargs)} and a training forward")
    except TargetHung as e:
        return (f"{_call_text(t, channels, **kwargs)} and a training forward: {e}; "
                + (f"declare fixed={{{flag!r}: {not value!r}}} (--fixed "
                   f"{flag}={str(not value).lower()}) if the layer does not support it"
                   if flag != "momentum" else "momentum=None is not drawn for it"))
    try:
        bn = t.build(channels, ndim=t.dims[0], **kwargs)
    except TargetRaised as e:
        what = str(e).split(" raised ", 1)[-1]
        return (f"{_call_text(t, channels, **kwargs)} raised {what}. The layer does not take "
                f"{flag}={value!r}; declare fixed={{{flag!r}: {not value!r}}} "
                f"(--fixed {flag}={str(not value).lower()}) to verify the rest"
                if flag != "momentum" else
                f"{_call_text(t, channels, **kwargs)} raised {what}. Its momentum is not "
                f"Optional; momentum=None (the cumulative average) is not drawn for it")
    try:
        bn.train(True).call(x, what="a training forward")
    except TargetRaised as e:
        from bncheck.engine.target import inherited_contract, inherited_failure

        base = inherited_contract(t.obj)  # what torch's signature offers, not the layer's own
        if flag == "momentum":  # momentum=None: the cumulative average
            what = f"with momentum=None (the cumulative average) {e}"
            declaration = f"its momentum, momentum={t.momentum!r} (--momentum {t.momentum})"
            if base is not None:
                return inherited_failure(base, what, declaration)
            return f"{what}; if the layer does not offer it, declare {declaration}"
        declaration = (f"fixed={{{flag!r}: {not value!r}}} (--fixed "
                       f"{flag}={str(not value).lower()})")
        if base is not None:
            return inherited_failure(base, f"with {flag}={value!r} {e}", declaration)
        return (f"with {flag}={value!r} {e}; declare {declaration} if the layer does not "
                f"support it")
    return None


def _stats_not_cast(t: Target, channels: int, guard: Guard) -> str | None:
    try:
        guard("module.to(torch.float64) (preflight)")
        bn = t.build(channels, ndim=t.dims[0])
        if not bn.has_stats:
            return None
        bn.to(torch.float64)
    except (TargetRaised, PropertyFailure):
        return None
    left = {n: v.dtype for n, v in bn.stat_tensors().items() if v.dtype != torch.float64}
    if not left:
        return None
    names = ", ".join(left)
    return (f"running statistics are not buffers: module.to(torch.float64) left {names} in "
            f"{str(next(iter(left.values()))).removeprefix('torch.')} (stats_are_buffers)")

