"""Clipping rule for ``keras.layers.Dense`` (inputs of any rank >= 2).

For ``z = x @ W + b`` with ``x [B, ..., d_in]`` flattened to ``[B, T, d_in]``,
example i's kernel gradient is ``x_i^T dz_i`` (``d_in x d_out``, summed over T).

* T == 1: ``||x_i^T dz_i||^2 = ||x_i||^2 ||dz_i||^2`` (ghost norm, exact).
* T > 1: either the ghost norm ``<x_i x_i^T, dz_i dz_i^T>`` (cost ``T^2 (d_in +
  d_out)`` per example) or the explicit per-example kernel gradient (cost
  ``T d_in d_out``), whichever is cheaper.

The clipped sum is ``x^T (c * dz)`` over all examples and positions: the same
matrix product a normal backward pass does for W, so no second pass.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import registry


def _dense_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    if x.shape.rank == 2:
        return tf.matmul(x, kernel)
    out_shape = tf.concat([tf.shape(x)[:-1], tf.shape(kernel)[-1:]], 0)
    z = tf.matmul(tf.reshape(x, [-1, kernel.shape[0]]), kernel)
    return tf.reshape(z, out_shape)


@registry.register(keras.layers.Dense)
class DenseRule(registry.KernelRule):
    """Dense, with or without bias and activation; no LoRA, no quantisation."""

    def pre_activation(self, layer, kernel, x):
        return _dense_matmul(x, kernel)

    def grads(self, layer, context, target_grads, options):
        x = context
        dz = tf.cast(target_grads[0], x.dtype)
        d_in, d_out = layer._kernel.shape
        has_bias = layer.bias is not None
        xs = registry.flatten_rows(x, d_in)    # [B, T, d_in]
        gs = registry.flatten_rows(dz, d_out)  # [B, T, d_out]
        positions = xs.shape[1]

        if positions == 1:
            x2, g2 = xs[:, 0, :], gs[:, 0, :]
            g_sq = tf.reduce_sum(tf.square(g2), axis=1)
            sq_norms = tf.reduce_sum(tf.square(x2), axis=1) * g_sq
            if has_bias:
                sq_norms += g_sq

            def weighted_sum(c):
                gc = registry.weighted_rows(c, g2)
                out = [tf.matmul(x2, gc, transpose_a=True)]
                if has_bias:
                    out.append(tf.reduce_sum(gc, axis=0))
                return out

            return registry.LayerGrads(self.variables(layer), sq_norms, weighted_sum)

        t = positions if positions is not None else 1 << 20
        ghost = registry.use_ghost(options, explicit_cost=t * d_in * d_out,
                                   ghost_cost=t * t * (d_in + d_out))
        if ghost:
            gram_x = tf.matmul(xs, xs, transpose_b=True)
            gram_g = tf.matmul(gs, gs, transpose_b=True)
            sq_norms = tf.reduce_sum(gram_x * gram_g, axis=[1, 2])

            def kernel_sum(c):
                gc = registry.weighted_rows(c, gs)
                return tf.matmul(tf.reshape(xs, [-1, d_in]), tf.reshape(gc, [-1, d_out]),
                                 transpose_a=True)
        else:
            per_example = tf.matmul(xs, gs, transpose_a=True)  # [B, d_in, d_out]
            sq_norms = tf.reduce_sum(tf.square(per_example), axis=[1, 2])

            def kernel_sum(c):
                return tf.tensordot(tf.cast(c, per_example.dtype), per_example, axes=1)

        bias_rows = tf.reduce_sum(gs, axis=1) if has_bias else None
        return registry.with_bias_rows(self.variables(layer), sq_norms, kernel_sum, bias_rows)
