# A Keras 3 BatchNorm written as Keras users write layers: weights made in build(), the mode as
# the `training=` call argument, channels last, moving = 0.99 * moving + 0.01 * batch, biased
# variance computed in two passes. Correct; verify it (KERAS_BACKEND=torch set before keras is
# imported) with the README's Keras declarations:
#   --convention keras --mode-argument training
#   --names weight=gamma,bias=beta,running_mean=moving_mean,running_var=moving_variance
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from keras import ops  # noqa: E402


class KerasBuildBN(keras.layers.Layer):
    def __init__(self, units, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.momentum, self.epsilon = units, momentum, epsilon

    def build(self, input_shape):
        shape = (input_shape[-1],)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=shape, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=shape, initializer="ones",
                                               trainable=False, name="moving_variance")

    def call(self, inputs, training=None):
        axes = list(range(len(inputs.shape) - 1))
        if training:
            mean = ops.mean(inputs, axis=axes)
            variance = ops.mean(ops.square(inputs - mean), axis=axes)
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1 - m) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return (inputs - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta
