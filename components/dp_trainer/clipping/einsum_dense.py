"""Clipping rule for ``keras.layers.EinsumDense`` (any equation Keras accepts).

For ``z = einsum(equation, x, W) + b`` example i's kernel gradient is
``G_i = einsum("{z},{x}->{W}", dz_i, x_i)``: the contraction rule of
:mod:`.contraction` (explicit per-example kernels, or the ghost norm
``sum_{s,p,p'} <x_ip, x_ip'> <dz_ip, dz_ip'>`` over positions ``p``, whichever is
cheaper). An ellipsis is spelled out with fresh letters for the input's rank.
The bias gradient of example i is ``dz_i`` summed over every axis that is not a
bias axis; its rows are explicit (one bias-sized vector per example).

MultiHeadAttention needs no rule of its own: its query/key/value/output
projections are EinsumDense sublayers, which the DP step plans and intercepts
one by one; softmax and dropout have no weights.
"""

from __future__ import annotations

import string

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import contraction, registry


def _specs(equation: str, rank: int) -> tuple | None:
    """``(x, w, z)`` letters of ``equation`` for an input of ``rank``, ellipsis spelled out."""
    try:
        inputs, z_spec = equation.replace(" ", "").split("->")
        x_spec, w_spec = inputs.split(",")
    except ValueError:
        return None
    if "..." in x_spec:
        fresh = [a for a in string.ascii_letters if a not in equation]
        dots = "".join(fresh[:rank - len(x_spec.replace("...", ""))])
        x_spec, z_spec = x_spec.replace("...", dots), z_spec.replace("...", dots)
    if not all(s.isalpha() and len(set(s)) == len(s) for s in (x_spec, w_spec, z_spec)):
        return None
    if len(x_spec) != rank or x_spec[0] != z_spec[0] or x_spec[0] in w_spec:
        return None  # the batch axis must stay first and never meet the kernel
    return x_spec, w_spec, z_spec


def _input_rank(layer) -> int | None:
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    return len(tuple(shapes.values())[0]) if len(shapes) == 1 else None


@registry.register(keras.layers.EinsumDense)
class EinsumDenseRule(registry.KernelRule):
    """EinsumDense with or without bias and activation; no LoRA, no quantisation."""

    def supports(self, layer) -> bool:
        rank = _input_rank(layer)
        return rank is not None and _specs(layer.equation, rank) is not None

    def pre_activation(self, layer, kernel, x):
        return tf.einsum(layer.equation, x, kernel)

    def grads(self, layer, context, target_grads, options):
        x = context
        dz = tf.cast(target_grads[0], x.dtype)
        x_spec, w_spec, z_spec = _specs(layer.equation, x.shape.rank)
        sq_norms, kernel_sum = contraction.kernel_grads(x, dz, x_spec, w_spec, z_spec, options)
        bias_rows = None
        if layer.bias is not None:
            # Keras shapes the bias over the output letters from the first bias axis on, with 1
            # for the others: the same order as this einsum's result.
            kept = "".join(a for a in z_spec if a in layer.bias_axes)
            bias_rows = registry.flatten_rows(tf.einsum(f"{z_spec}->{z_spec[0]}{kept}", dz))
        grads = registry.with_bias_rows(self.variables(layer), sq_norms, kernel_sum, bias_rows)
        shapes = [v.shape for v in grads.variables]

        def weighted_sum(c):
            return [tf.reshape(g, shape) for g, shape in zip(grads.weighted_sum(c), shapes)]

        return registry.LayerGrads(grads.variables, grads.sq_norms, weighted_sum)
