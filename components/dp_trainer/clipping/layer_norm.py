"""Clipping rule for ``keras.layers.LayerNormalization``.

``y = xhat * gamma + beta`` with ``xhat`` normalised within each example, so
example i's gradients are ``sum (dy_i * xhat_i)`` and ``sum dy_i`` over the axes
that are not parameter axes: tiny explicit per-example gradients, built from
the forward pass's ``xhat`` and the output gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import registry


def _axes(layer, ndim: int) -> list:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [a % ndim for a in axis]


def normalized_axes(layer) -> list | None:
    """The non-negative axes a built normalisation layer reduces over.

    None when the input rank is unknown (layer never built from a shape).
    """
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        return None
    return _axes(layer, len(tuple(shapes.values())[0]))


@registry.register(keras.layers.LayerNormalization)
class LayerNormalizationRule(registry.ClippingRule):
    """LayerNormalization over ascending non-batch axes, without rms_scaling."""

    def applies_to(self, layer) -> bool:
        if getattr(layer, "rms_scaling", False):
            return False
        axes = normalized_axes(layer)
        return axes is not None and 0 not in axes and axes == sorted(axes)

    def variables(self, layer) -> tuple:
        return tuple(v for v in (layer.gamma, layer.beta) if v is not None)

    def forward(self, layer, call, inputs, **kwargs):
        x = tf.cast(inputs, tf.float32) if inputs.dtype != tf.float64 else inputs
        ndim = x.shape.rank
        axes = _axes(layer, ndim)
        mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
        xhat = (x - mean) * tf.math.rsqrt(variance + layer.epsilon)
        param_shape = [x.shape[a] if a in axes else 1 for a in range(ndim)]
        return scaled_outputs(layer, xhat, param_shape)

    def grads(self, layer, context, target_grads, options):
        xhat = context
        dz = tf.cast(target_grads[0], xhat.dtype)
        ndim = xhat.shape.rank
        axes = _axes(layer, ndim)
        summed = [a for a in range(1, ndim) if a not in axes]
        rows = []
        if layer.gamma is not None:
            rows.append(tf.reduce_sum(dz * xhat, axis=summed) if summed else dz * xhat)
        if layer.beta is not None:
            rows.append(tf.reduce_sum(dz, axis=summed) if summed else dz)
        sq_norms = tf.add_n([registry.sum_squares_rows(r) for r in rows])

        def weighted_sum(c):
            return [tf.tensordot(tf.cast(c, r.dtype), r, axes=1) for r in rows]

        return registry.LayerGrads(self.variables(layer), sq_norms, weighted_sum)


def scaled_outputs(layer, xhat: tf.Tensor, param_shape) -> tuple:
    """A normalisation layer's ``forward`` result from the normalised input ``xhat``: ``(z, [z], xhat)`` with
    ``z = gamma * xhat + beta`` (each when the layer has it), gamma and beta reshaped to ``param_shape``."""
    z = xhat
    if layer.gamma is not None:
        z = z * tf.reshape(tf.cast(layer.gamma, xhat.dtype), param_shape)
    if layer.beta is not None:
        z = z + tf.reshape(tf.cast(layer.beta, xhat.dtype), param_shape)
    return tf.cast(z, layer.compute_dtype), [z], xhat
