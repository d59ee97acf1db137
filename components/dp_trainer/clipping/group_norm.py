"""Clipping rule for ``keras.layers.GroupNormalization``.

``y = xhat * gamma + beta`` with ``xhat`` normalised within each example over
every non-batch axis of each group of channels, and ``gamma``, ``beta`` of shape
``[C]`` along the channel axis. Example i's gradients are ``sum (dy_i * xhat_i)``
and ``sum dy_i`` over all axes but the batch and channel axes: the same explicit
per-example rows as LayerNormalization with its parameters on the channel axis,
so this rule only computes ``xhat`` the group way and inherits the rest from
:class:`.layer_norm.LayerNormalizationRule`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import layer_norm, registry


@registry.register(keras.layers.GroupNormalization)
class GroupNormalizationRule(layer_norm.LayerNormalizationRule):
    """GroupNormalization over one (non-batch) channel axis."""

    def applies_to(self, layer) -> bool:
        if not isinstance(layer.axis, int):
            return False
        axes = layer_norm.normalized_axes(layer)
        return axes is not None and 0 not in axes

    def forward(self, layer, call, inputs, **kwargs):
        x = tf.cast(inputs, tf.float32) if inputs.dtype != tf.float64 else inputs
        ndim = x.shape.rank
        axis = layer.axis % ndim
        channels = x.shape[axis]
        shape = tf.unstack(tf.shape(x))
        grouped = tf.reshape(x, shape[:axis] + [layer.groups, channels // layer.groups]
                             + shape[axis + 1:])
        reduce = [a for a in range(1, ndim + 1) if a != axis]
        mean, variance = tf.nn.moments(grouped, axes=reduce, keepdims=True)
        xhat = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + layer.epsilon), tf.shape(x))
        param_shape = [channels if a == axis else 1 for a in range(ndim)]
        return layer_norm.scaled_outputs(layer, xhat, param_shape)
