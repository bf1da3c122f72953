"""Buggy BatchNorms, each with one realistic defect, to prove the properties have teeth.

>>> from bncheck.engine.mutants import MUTANTS
>>> MUTANTS["eps_outside_sqrt"].killer
'train_forward'

Each mutant is a small module that is correct except for its one defect; ``killer`` names the
property meant to catch it. The seed notebook's four defects come first, in the seed's own
style (``num_dims``, ``gamma``/``beta``, ``moving_mean``/``moving_var`` in broadcast shapes,
ONNX momentum convention). :func:`run_mutants` runs each mutant against its property (and the
rest of the catalogue when that property lets it survive).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.engine.conventions import ONNX, TORCH, Convention
from bncheck.engine.declaration import Declaration
from bncheck.infra.validation import DEFAULT_TIMEOUT

__all__ = ["Mutant", "MUTANTS", "MutantResult", "mutants_of", "run_mutants", "meant_first",
           "judge", "Clean", "SeedStyle"]

_REDUCED = (torch.float16, torch.bfloat16)


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


class Clean(nn.Module):
    """A correct BatchNorm (torch convention); mutants override one step of it."""

    compute_in_float32 = True
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x.mean(dim=_dims(x))
        var = (x - _view(mean, x)).square().mean(dim=_dims(x))
        return mean, var

    def factor(self) -> float:
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def update(self, mean: Tensor, var: Tensor, n: int) -> None:
        with torch.no_grad():
            self.num_batches_tracked += 1
            w = self.factor()
            rm, rv = self.running_mean, self.running_var
            rm.copy_(rm.to(mean.dtype) * (1 - w) + w * mean)
            rv.copy_(rv.to(var.dtype) * (1 - w) + w * var * (n / (n - 1)))

    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        y = (x - _view(mean, x)) / torch.sqrt(_view(var, x) + self.eps)
        return y * _view(self.weight.to(x.dtype), x) + _view(self.bias.to(x.dtype), x)

    def use_batch_stats(self) -> bool:
        return self.training

    def forward(self, input: Tensor) -> Tensor:
        x = input.float() if self.compute_in_float32 and input.dtype in _REDUCED else input
        if self.use_batch_stats():
            mean, var = self.batch_stats(x)
            if self.training:
                self.update(mean.detach(), var.detach(), input.numel() // input.shape[1])
            else:
                self.eval_side_effect(mean.detach(), var.detach(), input.numel() // input.shape[1])
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
            self.eval_side_effect(*self.batch_stats(x), input.numel() // input.shape[1])
        return self.normalize(x, mean, var).to(input.dtype)

    def eval_side_effect(self, mean: Tensor, var: Tensor, n: int) -> None:
        """What an eval forward does besides normalizing: nothing."""


class SeedStyle(nn.Module):
    """The seed notebook's layer with its defects fixed: ``num_dims``, gamma/beta, moving
    statistics as broadcast-shaped buffers, ONNX convention (``momentum=0.9``, biased)."""

    moving_mean: Tensor
    moving_var: Tensor

    def __init__(self, num_features: int, num_dims: int):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))
        self.eps, self.momentum = 1e-5, 0.9

    def is_training(self) -> bool:
        return self.training

    def forward(self, X: Tensor) -> Tensor:
        dims = (0,) if X.dim() == 2 else (0, 2, 3)
        Xc = X.float() if X.dtype in _REDUCED else X
        if not self.is_training():
            X_hat = (Xc - self.moving_mean) / torch.sqrt(self.moving_var + self.eps)
        else:
            mean = Xc.mean(dim=dims, keepdim=True)
            var = ((Xc - mean) ** 2).mean(dim=dims, keepdim=True)
            X_hat = (Xc - mean) / torch.sqrt(self.normalizing_var(var) + self.eps)
            with torch.no_grad():
                self.moving_mean.copy_(self.momentum * self.moving_mean
                                       + (1 - self.momentum) * mean)
                self.moving_var.copy_(self.momentum * self.moving_var
                                      + (1 - self.momentum) * self.var_update_source(var))
        return (self.gamma * X_hat + self.output_beta()).to(X.dtype)

    def normalizing_var(self, var: Tensor) -> Tensor:
        return var

    def var_update_source(self, var: Tensor) -> Tensor:
        return var

    def output_beta(self) -> Tensor:
        return self.beta


# -- the seed notebook's defects ---------------------------------------------------------------
class SeedMovingVarInTraining(SeedStyle):
    def normalizing_var(self, var: Tensor) -> Tensor:
        return self.moving_var


class SeedVarFromItself(SeedStyle):
    def var_update_source(self, var: Tensor) -> Tensor:
        return self.moving_var


class SeedGradMode(SeedStyle):
    def is_training(self) -> bool:
        return torch.is_grad_enabled()


class SeedBataTypo(SeedStyle):
    def output_beta(self) -> Tensor:
        return bata  # type: ignore[name-defined]  # noqa: F821 - the seed's typo, on purpose


# -- other realistic defects -------------------------------------------------------------------
class BiasedRunningVar(Clean):
    def update(self, mean: Tensor, var: Tensor, n: int) -> None:
        super().update(mean, var * ((n - 1) / n), n)


class MomentumFlipped(Clean):
    def factor(self) -> float:
        return 1.0 - super().factor()


class CumulativeOffByOne(Clean):
    def factor(self) -> float:
        if self.momentum is None:
            return 1.0 / (float(self.num_batches_tracked) + 1.0)
        return self.momentum


class EpsOutsideSqrt(Clean):
    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        y = (x - _view(mean, x)) / (torch.sqrt(_view(var, x)) + self.eps)
        return y * _view(self.weight.to(x.dtype), x) + _view(self.bias.to(x.dtype), x)


class UnbiasedNormalization(Clean):
    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        if self.training:
            n = x.numel() // x.shape[1]
            var = var * (n / (n - 1))
        return super().normalize(x, mean, var)


class GammaBetaSwapped(Clean):
    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        y = (x - _view(mean, x)) / torch.sqrt(_view(var, x) + self.eps)
        return y * _view(self.bias.to(x.dtype), x) + _view(self.weight.to(x.dtype), x)


class WrongDims4d(Clean):
    """Reduces a 4D input over (0, 2) only: per-column statistics instead of per-channel."""

    def batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4:
            return super().batch_stats(x)
        mean = x.mean(dim=(0, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2), keepdim=True)
        self._full = (mean, var)
        return mean.mean(dim=(0, 2, 3)), var.mean(dim=(0, 2, 3))

    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        if x.dim() == 4 and self.training:
            m, v = self._full
            y = (x - m) / torch.sqrt(v + self.eps)
            return y * _view(self.weight.to(x.dtype), x) + _view(self.bias.to(x.dtype), x)
        return super().normalize(x, mean, var)


class PlainAttributeStats(Clean):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        del self.running_mean, self.running_var
        self.running_mean = torch.zeros(num_features)
        self.running_var = torch.ones(num_features)

    def update(self, mean: Tensor, var: Tensor, n: int) -> None:
        self.num_batches_tracked += 1
        w = self.factor()
        self.running_mean = (1 - w) * self.running_mean + w * mean.to(self.running_mean.dtype)
        self.running_var = (1 - w) * self.running_var + w * (var * (n / (n - 1))).to(
            self.running_var.dtype)


class StatsKeepGraph(Clean):
    """Updates the running statistics from the non-detached batch statistics."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        x = input.float() if input.dtype in _REDUCED else input
        mean, var = self.batch_stats(x)
        n = input.numel() // input.shape[1]
        self.num_batches_tracked += 1
        w = self.factor()
        self.running_mean = (1 - w) * self.running_mean + w * mean
        self.running_var = (1 - w) * self.running_var + w * var * (n / (n - 1))
        return self.normalize(x, mean, var).to(input.dtype)


class EvalUpdatesStats(Clean):
    def eval_side_effect(self, mean: Tensor, var: Tensor, n: int) -> None:
        if n > 1:
            self.update(mean.detach(), var.detach(), n)


class EvalBatchStats(Clean):
    def use_batch_stats(self) -> bool:
        return True


class Float16Accumulation(Clean):
    """Computes the statistics in the input dtype: float16 squares overflow, sums lose digits."""

    compute_in_float32 = False


class ZeroInitRunningVar(Clean):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        self.running_var.zero_()


class _MissingTermFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        dims = _dims(x)
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        inv = torch.rsqrt(var + eps)
        xhat = (x - mean) * inv
        ctx.save_for_backward(xhat, inv, weight)
        return xhat * _view(weight, x) + _view(bias, x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        xhat, inv, weight = ctx.saved_tensors
        dims = _dims(g)
        # Missing: - xhat * mean(g * xhat), the gradient through the batch variance.
        dx = _view(weight, g) * inv * (g - g.mean(dim=dims, keepdim=True))
        return dx, (g * xhat).sum(dim=dims), g.sum(dim=dims), None


class BackwardMissingTerm(Clean):
    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        x = input.float() if input.dtype in _REDUCED else input
        mean, var = self.batch_stats(x.detach())
        self.update(mean, var, input.numel() // input.shape[1])
        y = _MissingTermFn.apply(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return y.to(input.dtype)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Mutant:
    """A buggy BatchNorm: its factory, the defect, and the property meant to kill it."""

    name: str
    factory: Callable[..., nn.Module]
    defect: str
    killer: str
    #: everything the mutant declares (convention, dims, empty_batches...): the declaration
    #: the correct layer it breaks would be verified with
    declaration: Declaration = Declaration(dims=(2, 4))

    @property
    def convention(self) -> Convention:
        return self.declaration.rule

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.declaration.dims or (2, 4))


def _m(name: str, factory: Callable[..., nn.Module], defect: str, killer: str,
       convention: Convention = TORCH, **declarations: Any) -> tuple[str, Mutant]:
    return name, Mutant(name, factory, defect, killer, Declaration.from_kwargs(
        {"convention": convention, "dims": (2, 4), **declarations}))


MUTANTS: dict[str, Mutant] = dict([
    _m("seed_bata_typo", SeedBataTypo, "the seed's `bata` typo: NameError in every forward",
       "train_forward", ONNX),
    _m("seed_moving_var_in_training", SeedMovingVarInTraining,
       "the seed: training normalizes with the moving variance", "train_forward", ONNX),
    _m("seed_var_from_itself", SeedVarFromItself,
       "the seed: the moving variance is updated from itself", "running_stats_update", ONNX),
    _m("seed_grad_mode", SeedGradMode,
       "the seed: train/eval chosen by torch.is_grad_enabled()", "grad_mode_independence", ONNX),
    _m("biased_running_var", BiasedRunningVar,
       "running variance averages the biased batch variance (torch convention declared)",
       "running_stats_update"),
    _m("momentum_flipped", MomentumFlipped,
       "momentum weights the old value instead of the batch (torch convention declared)",
       "running_stats_update"),
    _m("cumulative_off_by_one", CumulativeOffByOne,
       "momentum=None averages with 1/(k+1) instead of 1/k", "running_stats_update"),
    _m("eps_outside_sqrt", EpsOutsideSqrt, "x_hat = (x - mean) / (sqrt(var) + eps)",
       "train_forward"),
    _m("unbiased_normalization", UnbiasedNormalization,
       "training normalizes with the unbiased variance (x.var())", "train_forward"),
    _m("gamma_beta_swapped", GammaBetaSwapped, "weight and bias swapped", "train_forward"),
    _m("wrong_dims_4d", WrongDims4d, "4D inputs reduced over (0, 2) instead of (0, 2, 3)",
       "train_forward"),
    _m("plain_attribute_stats", PlainAttributeStats,
       "running statistics kept as plain attributes, not buffers", "stats_are_buffers"),
    _m("stats_keep_graph", StatsKeepGraph,
       "running statistics updated without detaching: they carry the autograd graph",
       "stats_are_buffers"),
    _m("eval_updates_stats", EvalUpdatesStats, "eval forwards also update the statistics",
       "train_eval_switch"),
    _m("eval_batch_stats", EvalBatchStats, "eval normalizes with batch statistics",
       "eval_forward"),
    _m("float16_accumulation", Float16Accumulation,
       "float16 statistics computed without float32 accumulation", "reduced_precision"),
    _m("backward_missing_term", BackwardMissingTerm,
       "hand-written backward without the gradient through the batch variance", "gradients"),
    _m("zero_init_running_var", ZeroInitRunningVar,
       "running variance initialised to zeros (a fresh model in eval divides by sqrt(eps))",
       "initial_state"),
    _m("empty_batch_nan_stats", Clean,
       "an empty training batch turns the running statistics into NaN (mean over 0 values)",
       "empty_batch", empty_batches=True),
])


def _add_variant_mutants() -> None:
    """The variants' mutants (:mod:`bncheck.engine.mutants_variants`), after the torch ones. When
    that module is imported first it adds them itself, once this one is complete."""
    import sys

    if "bncheck.engine.mutants_variants" in sys.modules:
        return
    from bncheck.engine.mutants_variants import VARIANT_MUTANTS

    MUTANTS.update(VARIANT_MUTANTS)


@dataclass
class MutantResult:
    """Which properties killed a mutant."""

    mutant: Mutant
    killed_by: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return bool(self.killed_by)

    @property
    def killed_as_meant(self) -> bool:
        return self.mutant.killer in self.killed_by


def meant_first(verify_some: Callable[[list[str] | None], Sequence[Any]], killer: str,
                catalogue: Sequence[str], *, every_property: bool = False) -> list[Any]:
    """A mutant's failed results, its killer's first: ``verify_some([killer])``, and the rest
    of ``catalogue`` only when the killer lets it survive (to name what else catches it), or
    the whole catalogue at once with ``every_property``.

    ``verify_some(properties)`` runs those properties (``None``: all) against the mutant and
    returns their results (objects with ``name``, ``status`` and ``message``). A result met
    twice (the preflight's findings are reported by each run) is kept once.
    """
    if every_property:
        results = list(verify_some(None))
    else:
        results = list(verify_some([killer]))
        if not any(r.name == killer and r.status == "failed" for r in results):
            results += verify_some([n for n in catalogue if n != killer])
    failed: dict[str, Any] = {}
    for r in results:
        if r.status == "failed":
            failed.setdefault(r.name, r)
    return list(failed.values())


def judge(m: Mutant, verify_some: Callable[[list[str] | None], Sequence[Any]],
          catalogue: Sequence[str], *, every_property: bool = False,
          on_result: Callable[[MutantResult], None] | None = None) -> MutantResult:
    """``m``'s :class:`MutantResult` (:func:`meant_first`, timed), also given to ``on_result``
    (one rule for the single-process and the distributed runners)."""
    import time

    start = time.perf_counter()
    failed = meant_first(verify_some, m.killer, catalogue, every_property=every_property)
    res = MutantResult(m, [r.name for r in failed], {r.name: r.message for r in failed},
                       time.perf_counter() - start)
    if on_result is not None:
        on_result(res)
    return res


def mutants_of(framework: str = "torch") -> dict[str, Mutant]:
    """The bundled mutants of ``framework``: :data:`MUTANTS` for torch, the Flax NNX ones
    (:data:`bncheck.frameworks.flax_mutants.JAX_MUTANTS`, which imports jax and flax) for
    ``flax-nnx``.

    Raises:
        InvalidArgument: ``framework`` is not one of :data:`bncheck.frameworks.FRAMEWORKS`, or
            has no bundled mutants (``flax-linen``).
        TargetError: ``flax-nnx`` without jax and flax installed.
    """
    from bncheck.errors import InvalidArgument
    from bncheck.frameworks import framework as framework_named

    fw = framework_named(framework)  # an unknown name: refused with the list
    if fw.name == "torch":
        return MUTANTS
    if fw.name == "flax-nnx":
        fw.adapter()  # not installed: TargetError naming the extra
        from bncheck.frameworks.flax_mutants import JAX_MUTANTS

        return JAX_MUTANTS
    raise InvalidArgument(f"Expected framework to be one with bundled mutants (torch, "
                          f"flax-nnx), received framework={framework!r}")


def run_mutants(names: Sequence[str] | None = None, *, framework: str = "torch",
                profile: str = "ci", examples: int | None = None, seed: int = 0,
                every_property: bool = False,
                on_result: Callable[[MutantResult], None] | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> list[MutantResult]:
    """Run each of ``framework``'s mutants (:func:`mutants_of`; all, or those ``names``)
    without shrinking against the property meant to kill it; a mutant that survives it meets
    the rest of the catalogue (:func:`meant_first`). ``every_property``: the whole catalogue
    against every mutant, to see everything that catches each (slower). ``timeout`` is
    :func:`bncheck.engine.runner.verify`'s."""
    from bncheck.engine.properties import names as catalogue
    from bncheck.engine.runner import verify
    from bncheck.infra.validation import check_timeout, unknown_name

    check_timeout(timeout)
    bundled = mutants_of(framework)
    chosen = list(bundled) if not names else list(names)
    unknown = [n for n in chosen if n not in bundled]
    if unknown:
        raise unknown_name("mutant", unknown[0], bundled)
    results = []
    for name in chosen:
        m = bundled[name]

        def verify_some(properties: list[str] | None, m: Mutant = m) -> list[Any]:
            return verify(m.factory, label=m.name, declaration=m.declaration,
                          properties=properties, profile=profile, examples=examples, seed=seed,
                          shrink=False, timeout=timeout).results

        results.append(judge(m, verify_some, catalogue(), every_property=every_property,
                             on_result=on_result))
    return results


_add_variant_mutants()
