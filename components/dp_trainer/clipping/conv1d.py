"""Clipping rule for ``keras.layers.Conv1D`` (channels_last, groups=1; valid, same, causal).

A Conv1D over ``[B, T, C]`` with kernel ``[k, C, F]`` is the Conv2D over
``[B, 1, T, C]`` with kernel ``[1, k, C, F]`` (same strides and dilation along
the second axis); causal padding is valid padding after ``(k - 1) * dilation``
zeros on the left, as Keras pads. So example i's kernel gradient is
``P_i^T dz_i`` over its input patches ``P_i [T', k*C]``, and the Conv2D rule
(:mod:`.conv2d`) computes its norm (explicit ``T' k C F`` or ghost ``T'^2 (k C +
F)`` per example, whichever is cheaper) and the clipped sum on that 2-D view;
this rule only reshapes its results back to the Conv1D variables.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import conv2d, registry

_CONV2D = conv2d.Conv2DRule()


def _as_conv2d(layer) -> types.SimpleNamespace:
    """The attributes the Conv2D rule reads, for the 1 x k 2-D view of ``layer``."""
    k, c_in, c_out = layer._kernel.shape
    return types.SimpleNamespace(
        _kernel=types.SimpleNamespace(shape=tf.TensorShape([1, k, c_in, c_out])),
        bias=None, use_bias=layer.use_bias, kernel_size=(1, k),
        strides=(1, layer.strides[0]), dilation_rate=(1, layer.dilation_rate[0]),
        padding="valid" if layer.padding == "causal" else layer.padding)


def _causal_pad(layer, x: tf.Tensor) -> tf.Tensor:
    left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
    return tf.pad(x, [[0, 0], [left, 0], [0, 0]]) if left else x


@registry.register(keras.layers.Conv1D)
class Conv1DRule(registry.KernelRule):
    """Conv1D with channels_last data, groups == 1, no LoRA or quantisation."""

    def supports(self, layer) -> bool:
        return (layer.rank == 1 and layer.data_format == "channels_last"
                and layer.groups == 1 and layer.padding in ("same", "valid", "causal"))

    def prepare_input(self, layer, x):
        return _causal_pad(layer, x) if layer.padding == "causal" else x

    def pre_activation(self, layer, kernel, x):
        padding = "VALID" if layer.padding == "causal" else layer.padding.upper()
        return tf.nn.convolution(x, kernel, strides=list(layer.strides), padding=padding,
                                 dilations=list(layer.dilation_rate))

    def grads(self, layer, context, target_grads, options):
        x = context[:, None]                  # [B, 1, T, C]
        dz = target_grads[0][:, None]         # [B, 1, T', F]
        grads = _CONV2D.grads(_as_conv2d(layer), x, [dz], options)
        variables = self.variables(layer)

        def weighted_sum(c):
            return [tf.reshape(g, v.shape) for g, v in zip(grads.weighted_sum(c), variables)]

        return registry.LayerGrads(variables, grads.sq_norms, weighted_sum)
