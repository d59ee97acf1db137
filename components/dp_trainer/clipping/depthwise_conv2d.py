"""Clipping rule for ``keras.layers.DepthwiseConv2D`` (channels_last).

With input patches ``P [B, p, k, C]`` (``k = kh*kw`` window offsets, gathered as
the Conv2D rule gathers them) and the kernel ``K [k, C, M]`` (M = depth
multiplier), the output is ``z[b, p, c, m] = sum_k P[b, p, k, c] K[k, c, m]``
(channel ``c*M + m``). This is a contraction ``bpkc,kcm->bpcm``, so example i's
kernel gradient is ``G_i[k, c, m] = sum_p P_i[p, k, c] dz_i[p, c, m]`` and its
squared norm is explicit (``p k C M`` per example) or the ghost norm
``sum_{c,p,p'} <P_ipc, P_ip'c> <dz_ipc, dz_ip'c>`` (``C p^2 (k + M)``), whichever
is cheaper (:mod:`.contraction`). The bias gradient of example i is ``dz_i``
summed over positions.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import contraction, conv2d, registry


def depthwise_kernel_grads(layer, kernel_shape, x: tf.Tensor, dz: tf.Tensor, options):
    """``(sq_norms [B], kernel_sum)`` of a depthwise kernel ``[kh, kw, C, M]`` applied with
    ``layer``'s window (kernel_size, strides, dilation_rate, padding) to ``x [B, H, W, C]``,
    for ``dz [B, H', W', C*M]`` (also used by the SeparableConv2D rule)."""
    kh, kw, c_in, mult = kernel_shape
    patches = conv2d.image_patches(x, layer)                            # [B, p, k*C]
    patches = tf.reshape(patches, [-1, patches.shape[1], kh * kw, c_in])
    gs = tf.reshape(registry.flatten_rows(dz, c_in * mult), [-1, patches.shape[1], c_in, mult])
    sq_norms, flat_sum = contraction.kernel_grads(patches, gs, "bpkc", "kcm", "bpcm", options)
    return sq_norms, lambda c: tf.reshape(flat_sum(c), kernel_shape)


def depthwise(layer, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """``layer``'s depthwise convolution of ``x`` with ``kernel`` (as Keras computes it)."""
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, *layer.strides, 1],
                                  padding=layer.padding.upper(),
                                  dilations=list(layer.dilation_rate))


@registry.register(keras.layers.DepthwiseConv2D)
class DepthwiseConv2DRule(registry.ClippingRule):
    """DepthwiseConv2D with channels_last data, same or valid padding."""

    def applies_to(self, layer) -> bool:
        return (layer.rank == 2 and layer.data_format == "channels_last"
                and layer.padding in ("same", "valid"))

    def variables(self, layer) -> tuple:
        return (layer.kernel,) + ((layer.bias,) if layer.use_bias else ())

    def forward(self, layer, call, inputs, **kwargs):
        kernel = tf.convert_to_tensor(layer.kernel)
        x = tf.cast(inputs, kernel.dtype)
        return registry.biased_outputs(layer, depthwise(layer, x, kernel), x)

    def grads(self, layer, context, target_grads, options):
        x = context
        dz = tf.cast(target_grads[0], x.dtype)
        sq_norms, kernel_sum = depthwise_kernel_grads(layer, layer.kernel.shape, x, dz, options)
        bias_rows = (tf.reduce_sum(registry.flatten_rows(dz, dz.shape[-1]), axis=1)
                     if layer.use_bias else None)
        return registry.with_bias_rows(self.variables(layer), sq_norms, kernel_sum, bias_rows)
