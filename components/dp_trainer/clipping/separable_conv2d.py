"""Clipping rule for ``keras.layers.SeparableConv2D`` (channels_last).

The layer is a depthwise convolution ``u = depthwise(x, D)`` (``D [kh, kw, C, M]``,
with the layer's strides, dilation and padding) followed by a pointwise one
``z = u @ Q + b`` (``Q [1, 1, C*M, F]``) at every position. The forward pass
exposes both ``u`` and ``z`` as targets, so one backward pass gives ``du`` (the
total gradient, through Q) and ``dz``. Example i's gradients are then

* pointwise: ``u_i^T dz_i`` over positions (a contraction ``bpc,cf->bpf``),
* depthwise: ``G_i[k, c, m] = sum_p P_i[p, k, c] du_i[p, c, m]`` on the input
  patches (see :mod:`.depthwise_conv2d`),
* bias: ``dz_i`` summed over positions,

each with the explicit or ghost norm of :mod:`.contraction`; example i's squared
norm is the sum of the three.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import contraction, depthwise_conv2d, registry


@registry.register(keras.layers.SeparableConv2D)
class SeparableConv2DRule(registry.ClippingRule):
    """SeparableConv2D with channels_last data, same or valid padding."""

    def applies_to(self, layer) -> bool:
        return (layer.rank == 2 and layer.data_format == "channels_last"
                and layer.padding in ("same", "valid"))

    def variables(self, layer) -> tuple:
        return ((layer.depthwise_kernel, layer.pointwise_kernel)
                + ((layer.bias,) if layer.use_bias else ()))

    def forward(self, layer, call, inputs, **kwargs):
        depthwise_kernel = tf.convert_to_tensor(layer.depthwise_kernel)
        x = tf.cast(inputs, depthwise_kernel.dtype)
        u = depthwise_conv2d.depthwise(layer, x, depthwise_kernel)
        z = tf.nn.conv2d(u, tf.convert_to_tensor(layer.pointwise_kernel), strides=1,
                         padding="VALID")
        outputs, targets, _ = registry.biased_outputs(layer, z, None)
        return outputs, [u] + targets, (x, u)

    def grads(self, layer, context, target_grads, options):
        x, u = context
        du, dz = (tf.cast(g, x.dtype) for g in target_grads)
        pointwise_shape = layer.pointwise_kernel.shape
        us = registry.flatten_rows(u, pointwise_shape[2])   # [B, p, C*M]
        gs = registry.flatten_rows(dz, pointwise_shape[3])  # [B, p, F]
        sq_d, depthwise_sum = depthwise_conv2d.depthwise_kernel_grads(
            layer, layer.depthwise_kernel.shape, x, du, options)
        sq_p, pointwise_sum = contraction.kernel_grads(us, gs, "bpc", "cf", "bpf", options)
        bias_rows = tf.reduce_sum(gs, axis=1) if layer.use_bias else None
        sq_norms = sq_d + sq_p + (tf.reduce_sum(tf.square(bias_rows), axis=1)
                                  if layer.use_bias else 0.0)

        def weighted_sum(c):
            out = [depthwise_sum(c), tf.reshape(pointwise_sum(c), pointwise_shape)]
            if layer.use_bias:
                out.append(tf.tensordot(tf.cast(c, bias_rows.dtype), bias_rows, axes=1))
            return out

        return registry.LayerGrads(self.variables(layer), sq_norms, weighted_sum)
