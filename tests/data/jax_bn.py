"""User-written Flax BatchNorms for the JAX CLI tests: an NNX module written from the formula
(two-pass variance) and a Linen wrapper around flax.linen.BatchNorm with its own mode keyword."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen, nnx


class TwoPassBN(nnx.Module):
    """Flax's convention, channels last, statistics in nnx.BatchStat."""

    def __init__(self, num_features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
                 rngs: nnx.Rngs | None = None):
        self.momentum, self.epsilon = momentum, epsilon
        self.scale = nnx.Param(jnp.ones(num_features))
        self.bias = nnx.Param(jnp.zeros(num_features))
        self.mean = nnx.BatchStat(jnp.zeros(num_features))
        self.var = nnx.BatchStat(jnp.ones(num_features))

    def __call__(self, x, use_running_average: bool = False):
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(x.ndim - 1))
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = xf.mean(axis=axes)
            var = jnp.square(xf - mean).mean(axis=axes)
            m = self.momentum
            self.mean[...] = (m * self.mean[...] + (1 - m) * mean).astype(self.mean[...].dtype)
            self.var[...] = (m * self.var[...] + (1 - m) * var).astype(self.var[...].dtype)
        y = (xf - mean.astype(xf.dtype)) / jnp.sqrt(var.astype(xf.dtype) + self.epsilon)
        return (y * self.scale[...].astype(xf.dtype) + self.bias[...].astype(xf.dtype)).astype(
            x.dtype)


class Block(linen.Module):
    """A Linen module whose mode is a ``train`` keyword (declare --mode-argument train)."""

    @linen.compact
    def __call__(self, x, train: bool):
        return linen.BatchNorm(use_running_average=not train, use_fast_variance=False,
                               name="bn")(x)
