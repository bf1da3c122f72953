"""What each layer declares, inferred from the instance and from a dry run of the model.

>>> import torch
>>> from torch import nn
>>> from bncheck.scan.infer import observe
>>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
>>> seen = observe(model, (torch.rand(2, 4),), paths=["1"])
>>> seen.ranks
{'1': (2,)}

A dry run (eval, no grad) records the input rank each layer sees (a forward pre-hook, so a layer
whose forward raises still reports its rank); each layer's class is then run alone, on a copy,
in training mode with grad enabled and in eval mode without, on the input it saw: a layer
whose output does not change is frozen (it never normalizes with batch statistics). Layers are
then grouped by class, constructor configuration and frozenness, and each group becomes one
``bncheck verify`` run: :func:`declarations` is the one place that turns a group into its
declarations.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.engine.declaration import Declaration
from bncheck.infra.validation import not_set
from bncheck.scan.inventory import Config, NormLayer

__all__ = ["Observation", "Group", "observe", "group_layers", "declarations",
           "replay_command", "first_tensor"]


@dataclass
class Observation:
    """What the dry run saw: input ranks per layer path, behaviour per layer path (``True``
    normalizes differently in training, ``False`` does not, ``None`` not known), and the
    exception the forward raised (``None`` when it returned)."""

    ranks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    mode_dependent: dict[str, bool | None] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class Group:
    """Layers of one class and configuration, verified once."""

    spec: str | None  # what loads the class (None: it cannot be loaded by name)
    cls_name: str
    config: Config
    frozen: bool
    layers: list[NormLayer]
    dims: tuple[int, ...]

    @property
    def name(self) -> str:
        """How the report names the class: its TARGET spec (``torch.nn:BatchNorm2d``)."""
        return self.spec or self.cls_name


def first_tensor(out: Any) -> Tensor | None:
    """The first tensor in a module's output (a tensor, or a tuple/list/dict holding one)."""
    if isinstance(out, Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) \
        else ()
    for item in items:
        t = first_tensor(item)
        if t is not None:
            return t
    return None


def observe(model: nn.Module, inputs: Sequence[Tensor], *, paths: Sequence[str],
            probe: Sequence[str] = ()) -> Observation:
    """Run ``model`` once (eval, no grad) on ``inputs``, recording the input rank of the
    modules at ``paths``; then test the modules at ``probe`` for mode-dependent output.

    The model's exception, if any, is kept in the result, not raised (a layer before it still
    reports its rank). Call it inside :func:`bncheck.engine.target.user_code` for the time limit.
    """
    from bncheck.engine.target import user_code

    modules = dict(model.named_modules())
    seen = Observation()
    captured: dict[str, tuple[Any, ...]] = {}
    handles = []
    for path in paths:
        def hook(module: nn.Module, args: tuple[Any, ...], path: str = path) -> None:
            x = args[0] if args else None
            if isinstance(x, Tensor):
                seen.ranks[path] = tuple(sorted({*seen.ranks.get(path, ()), x.dim()}))
                if path in probe and path not in captured:
                    captured[path] = tuple(a.detach().clone() if isinstance(a, Tensor) else a
                                           for a in args)
        handles.append(modules[path].register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad(), user_code("the dry run (eval forward)"):
            model.eval()(*inputs)
    except Exception as e:  # noqa: BLE001 - kept: reported by the model checks
        seen.error = e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for path in probe:
        seen.mode_dependent[path] = (None if path not in captured
                                     else _mode_dependent(modules[path], captured[path], path))
    return seen


def _mode_dependent(module: nn.Module, args: tuple[Any, ...], path: str) -> bool | None:
    """Whether a copy of ``module`` gives another output in training (grad enabled) than in
    eval (no grad) on ``args``; ``None`` when it raises. Exact comparison: the two modes run
    the same code on the same input unless the layer normalizes differently."""
    from bncheck.engine.target import user_code
    from bncheck.errors import TargetError

    try:
        with user_code(f"running {path} alone in training and eval mode"):
            layer = copy.deepcopy(module)
            with torch.enable_grad():
                train_out = first_tensor(layer.train()(*args))
            with torch.no_grad():
                eval_out = first_tensor(layer.eval()(*args))
    except TargetError:
        return None
    if train_out is None or eval_out is None or train_out.shape != eval_out.shape:
        return None
    return not torch.equal(train_out.detach(), eval_out)


def group_layers(model: nn.Module, layers: Sequence[NormLayer], seen: Observation
                 ) -> list[Group]:
    """Layers grouped by class, configuration and frozenness, in the order first seen; a
    group's dims are the ranks its layers saw, or for a layer the dry run did not reach, the
    rank its statistics are shaped for (``(1, C, 1, 1)``: 4); empty when neither says."""
    modules = dict(model.named_modules())
    groups: dict[tuple[Any, ...], Group] = {}
    for layer in layers:
        frozen = layer.found_by != "class" and seen.mode_dependent.get(layer.path) is False
        key = (layer.cls_name, layer.config, frozen)
        group = groups.setdefault(key, Group(layer.spec, layer.cls_name, layer.config, frozen,
                                             [], ()))
        group.layers.append(layer)
        ranks = seen.ranks.get(layer.path) or _shaped_rank(modules[layer.path])
        group.dims = tuple(sorted({*group.dims, *(r for r in ranks if 2 <= r <= 5)}))
    return list(groups.values())


def _shaped_rank(module: nn.Module) -> tuple[int, ...]:
    """The input rank a layer's broadcast-shaped statistics imply (the seed notebook keeps
    ``(1, C)`` or ``(1, C, 1, 1)``); ``()`` for flat ones."""
    from bncheck.engine.adapter import attribute
    from bncheck.scan.inventory import own_statistics

    pair = own_statistics(module)
    t = attribute(module, pair[0]) if pair else None
    if isinstance(t, Tensor) and t.dim() >= 2 and t.shape[1] == t.numel():
        return (t.dim(),)
    return ()


def declarations(group: Group) -> Declaration:
    """What ``group``'s class is verified as: the :class:`~bncheck.engine.declaration.Declaration`
    its instances show (momentum, eps, the ranks they see, affine and track_running_stats as
    fixed flags); the one place a scan turns an instance into declarations."""
    cfg = group.config
    given: dict[str, Any] = {}
    if cfg.momentum is not not_set:
        given["momentum"] = cfg.momentum
    if cfg.eps is not not_set:
        given["eps"] = cfg.eps
    if group.dims:
        given["dims"] = group.dims
    fixed = {flag: value for flag in ("affine", "track_running_stats")
             if (value := getattr(cfg, flag)) is not None}
    if fixed:
        given["fixed"] = fixed
    return Declaration.from_kwargs(given, where=f" (inferred from {group.layers[0].shown})")


def replay_command(group: Group, prop: str, seed: int, *, profile: str,
                   examples: int | None) -> str:
    """``bncheck verify`` that reproduces ``prop`` failing on ``group``'s class alone."""
    spec = group.spec
    if spec is None:
        return (f"(no replay: {group.cls_name} is defined inside a function; move it to "
                f"module level to verify it alone)")
    args = ["bncheck", "verify", spec, *declarations(group).cli_args()]
    if profile != "ci":
        args += ["--profile", profile]
    if examples is not None:
        args += ["--examples", str(examples)]
    return shlex.join([*args, "--property", prop, "--seed", str(seed)])
