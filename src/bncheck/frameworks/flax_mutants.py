"""Buggy Flax NNX BatchNorms, the same defects as :mod:`bncheck.engine.mutants`, to prove the
properties have teeth for JAX targets too.

>>> from bncheck.frameworks.flax_mutants import JAX_MUTANTS
>>> JAX_MUTANTS["jax_eps_outside_sqrt"].killer
'train_forward'

:class:`JaxClean` is a correct ``nnx.Module`` BatchNorm in Flax's convention (channels last,
``ra = m * ra + (1 - m) * batch``, m = 0.99, biased running variance, statistics in
``nnx.BatchStat``, float32 accumulation, a two-pass variance); each mutant overrides one step of
it. :func:`bncheck.engine.mutants.run_mutants` runs them with ``framework="flax-nnx"``
(:func:`run_jax_mutants`).
Importing this module imports jax and flax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bncheck.engine.conventions import FLAX
from bncheck.engine.declaration import Declaration
from bncheck.engine.mutants import Mutant, MutantResult, run_mutants

__all__ = ["JaxClean", "JAX_MUTANTS", "run_jax_mutants"]


def _axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _wide(x: jax.Array) -> jax.Array:
    """``x`` in at least float32 (16-bit inputs accumulate in float32)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class JaxClean(nnx.Module):
    """A correct Flax BatchNorm (channels last); mutants override one step of it."""

    def __init__(self, num_features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
                 use_scale: bool = True, use_bias: bool = True, rngs: nnx.Rngs | None = None):
        self.momentum, self.epsilon = momentum, epsilon
        self.scale = nnx.Param(jnp.ones(num_features)) if use_scale else nnx.data(None)
        self.bias = nnx.Param(jnp.zeros(num_features)) if use_bias else nnx.data(None)
        self.mean = self.stat(jnp.zeros(num_features, jnp.float32))
        self.var = self.stat(self.initial_var(num_features))

    def stat(self, value: jax.Array) -> nnx.Variable[jax.Array]:
        return nnx.BatchStat(value)

    def initial_var(self, c: int) -> jax.Array:
        return jnp.ones(c, jnp.float32)

    def batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        xf = _wide(x)
        mean = xf.mean(axis=_axes(x))
        return mean, jnp.square(xf - mean).mean(axis=_axes(x))

    def update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        m = self.momentum
        self.mean[...] = (m * self.mean[...] + (1 - m) * mean).astype(self.mean[...].dtype)
        self.var[...] = (m * self.var[...] + (1 - m) * var).astype(self.var[...].dtype)

    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        return (x - mean) / jnp.sqrt(var + self.epsilon)

    def affine(self, xhat: jax.Array) -> jax.Array:
        if self.scale is not None:
            xhat = xhat * self.scale[...].astype(xhat.dtype)
        if self.bias is not None:
            xhat = xhat + self.bias[...].astype(xhat.dtype)
        return xhat

    def training(self, x: jax.Array, use_running_average: bool) -> bool:
        return not use_running_average

    def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
        xf = _wide(x)
        if self.training(x, use_running_average):
            mean, var = self.batch_stats(x)
            self.update(mean, var, x.size // x.shape[-1])
        else:
            mean, var = _wide(self.mean[...]), _wide(self.var[...])
        return self.affine(self.normalize(xf, mean.astype(xf.dtype),
                                          var.astype(xf.dtype))).astype(x.dtype)


class MovingVarInTraining(JaxClean):
    def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
        xf = _wide(x)
        mean, var = self.batch_stats(x)
        if not use_running_average:
            self.update(mean, var, x.size // x.shape[-1])
        var = _wide(self.var[...])  # the seed: normalizes with the moving variance
        return self.affine(self.normalize(xf, mean.astype(xf.dtype), var)).astype(x.dtype)


class BataTypo(JaxClean):
    def affine(self, xhat: jax.Array) -> jax.Array:
        return super().affine(xhat) + bata  # type: ignore[name-defined] # noqa: F821


class VarFromItself(JaxClean):
    def update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        m = self.momentum
        self.mean[...] = (m * self.mean[...] + (1 - m) * mean).astype(self.mean[...].dtype)
        self.var[...] = (m * self.var[...] + (1 - m) * self.var[...]).astype(
            self.var[...].dtype)


class UnbiasedRunningVar(JaxClean):
    def update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        super().update(mean, var * n / max(n - 1, 1), n)


class MomentumFlipped(JaxClean):
    def update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        m = 1 - self.momentum
        self.mean[...] = (m * self.mean[...] + (1 - m) * mean).astype(self.mean[...].dtype)
        self.var[...] = (m * self.var[...] + (1 - m) * var).astype(self.var[...].dtype)


class EpsOutsideSqrt(JaxClean):
    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        return (x - mean) / (jnp.sqrt(var) + self.epsilon)


class UnbiasedNormalization(JaxClean):
    def batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, var = super().batch_stats(x)
        n = x.size // x.shape[-1]
        return mean, var * n / max(n - 1, 1)


class OnePassVariance(JaxClean):
    def batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        xf = _wide(x)
        mean = xf.mean(axis=_axes(x))
        return mean, jnp.maximum(0.0, jnp.square(xf).mean(axis=_axes(x)) - jnp.square(mean))


class ScaleBiasSwapped(JaxClean):
    def affine(self, xhat: jax.Array) -> jax.Array:
        if self.scale is None or self.bias is None:
            return super().affine(xhat)
        return xhat * self.bias[...].astype(xhat.dtype) + self.scale[...].astype(xhat.dtype)


class WrongAxes4d(JaxClean):
    def batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 4:
            return super().batch_stats(x)
        xf = _wide(x)
        mean = xf.mean(axis=(0, 1), keepdims=True)  # not over the width
        var = jnp.square(xf - mean).mean(axis=(0, 1), keepdims=True)
        return mean, var

    def update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        axes = tuple(range(mean.ndim - 1))
        super().update(mean.mean(axis=axes), var.mean(axis=axes), n)


class StatsInParams(JaxClean):
    def stat(self, value: jax.Array) -> nnx.Variable[jax.Array]:
        return nnx.Param(value)


class EvalUpdatesStats(JaxClean):
    def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
        if use_running_average:
            mean, var = self.batch_stats(x)
            y = super().__call__(x, use_running_average)
            self.update(mean, var, x.size // x.shape[-1])
            return y
        return super().__call__(x, use_running_average)


class EvalBatchStats(JaxClean):
    def training(self, x: jax.Array, use_running_average: bool) -> bool:
        return True


class ModeFromTracing(JaxClean):
    def training(self, x: jax.Array, use_running_average: bool) -> bool:
        # train/eval from whether the call is traced (jax.jit), not use_running_average
        return not isinstance(x, jax.core.Tracer)


class Float16Accumulation(JaxClean):
    # XLA on CPU computes float16 arithmetic in float32 and rounds only the result, so a 16-bit
    # accumulator is written out: a running sum rounded to the input's dtype after every
    # addition (lax.reduce_precision), as a kernel accumulating in float16 rounds it.
    def batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.dtype not in (jnp.float16, jnp.bfloat16):
            return super().batch_stats(x)
        bits = (5, 10) if x.dtype == jnp.float16 else (8, 7)
        r = partial(jax.lax.reduce_precision, exponent_bits=bits[0], mantissa_bits=bits[1])
        rows = x.astype(jnp.float32).reshape(-1, x.shape[-1])

        def total(values: jax.Array) -> jax.Array:
            out, _ = jax.lax.scan(lambda acc, v: (r(acc + v), None),
                                  jnp.zeros(values.shape[1], jnp.float32), values)
            return out

        mean = r(total(rows) / rows.shape[0])
        return mean, r(total(r(jnp.square(r(rows - mean)))) / rows.shape[0])


class ZeroInitRunningVar(JaxClean):
    def initial_var(self, c: int) -> jax.Array:
        return jnp.zeros(c, jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _missing_term(xc: jax.Array, axes: tuple[int, ...], inv: jax.Array) -> jax.Array:
    return xc * inv


def _missing_term_fwd(xc: jax.Array, axes: tuple[int, ...], inv: jax.Array
                      ) -> tuple[jax.Array, Any]:
    return xc * inv, (inv,)


def _missing_term_bwd(axes: tuple[int, ...], res: Any, g: jax.Array) -> tuple[Any, Any]:
    (inv,) = res
    # the gradient through the batch variance (-xhat * mean(g * xhat)) is missing
    return (g * inv, jnp.zeros_like(inv))


_missing_term.defvjp(_missing_term_fwd, _missing_term_bwd)


class BackwardMissingTerm(JaxClean):
    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        return _missing_term(x - mean, _axes(x), 1 / jnp.sqrt(var + self.epsilon))


def _m(name: str, factory: Callable[..., Any], defect: str, killer: str) -> tuple[str, Mutant]:
    return name, Mutant(name, factory, defect, killer,
                        Declaration(framework="flax-nnx", convention=FLAX.name, dims=(2, 4)))


JAX_MUTANTS: dict[str, Mutant] = dict([
    _m("jax_bata_typo", BataTypo, "the seed's `bata` typo: NameError in every forward",
       "train_forward"),
    _m("jax_moving_var_in_training", MovingVarInTraining,
       "the seed: training normalizes with the moving variance", "train_forward"),
    _m("jax_var_from_itself", VarFromItself,
       "the seed: the moving variance is updated from itself", "running_stats_update"),
    _m("jax_mode_from_tracing", ModeFromTracing,
       "train/eval chosen by whether the call is traced (jax.jit), not use_running_average",
       "grad_mode_independence"),
    _m("jax_unbiased_running_var", UnbiasedRunningVar,
       "running variance averages the unbiased batch variance (flax convention: biased)",
       "running_stats_update"),
    _m("jax_momentum_flipped", MomentumFlipped,
       "momentum weights the batch instead of the old value", "running_stats_update"),
    _m("jax_eps_outside_sqrt", EpsOutsideSqrt, "x_hat = (x - mean) / (sqrt(var) + eps)",
       "train_forward"),
    _m("jax_unbiased_normalization", UnbiasedNormalization,
       "training normalizes with the unbiased variance", "train_forward"),
    _m("jax_one_pass_variance", OnePassVariance,
       "the batch variance in one pass, E[x^2] - E[x]^2 (Flax's use_fast_variance=True)",
       "train_forward"),
    _m("jax_scale_bias_swapped", ScaleBiasSwapped, "scale and bias swapped", "train_forward"),
    _m("jax_wrong_axes_4d", WrongAxes4d, "4D inputs reduced over (0, 1) instead of (0, 1, 2)",
       "train_forward"),
    _m("jax_stats_in_params", StatsInParams,
       "running statistics kept as nnx.Param: jax.grad and an optimizer update them",
       "stats_are_buffers"),
    _m("jax_eval_updates_stats", EvalUpdatesStats, "eval forwards also update the statistics",
       "train_eval_switch"),
    _m("jax_eval_batch_stats", EvalBatchStats, "eval normalizes with batch statistics",
       "eval_forward"),
    _m("jax_float16_accumulation", Float16Accumulation,
       "float16 statistics computed without float32 accumulation", "reduced_precision"),
    _m("jax_backward_missing_term", BackwardMissingTerm,
       "custom_vjp backward without the gradient through the batch variance", "gradients"),
    _m("jax_zero_init_running_var", ZeroInitRunningVar,
       "running variance initialised to zeros (a fresh model in eval divides by sqrt(eps))",
       "initial_state"),
])


def run_jax_mutants(names: Sequence[str] | None = None, **options: Any) -> list[MutantResult]:
    """:func:`bncheck.engine.mutants.run_mutants` with ``framework="flax-nnx"``: each JAX
    mutant against the property meant to kill it (the rest of the catalogue when it
    survives); ``options`` are ``run_mutants``'s."""
    return run_mutants(names, framework="flax-nnx", **options)
