"""Clipping rule for ``keras.layers.Embedding``.

Example i's gradient of the table is sparse: row ``v`` gets the sum of the output
gradients at the positions where example i has token ``v``. Its squared norm is
``sum_{t,s} [id_t == id_s] <dz_t, dz_s>`` (ghost, ``T^2 * dim`` per example), or,
for short vocabularies, computed from the explicit per-example table gradient
(``V * dim`` per example). The clipped sum is a segment sum of ``c_i * dz_it``
into rows ``id_it``; it is returned dense because the Gaussian noise touches
every row anyway.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import registry


@registry.register(keras.layers.Embedding)
class EmbeddingRule(registry.ClippingRule):
    """Embedding without LoRA or quantisation (any input rank)."""

    def applies_to(self, layer) -> bool:
        return registry.plain_weights(layer)

    def variables(self, layer) -> tuple:
        return (layer._embeddings,)

    def forward(self, layer, call, inputs, **kwargs):
        ids = inputs
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, tf.int32)
        z = tf.gather(tf.convert_to_tensor(layer._embeddings), ids)
        return tf.cast(z, layer.compute_dtype), [z], ids

    def grads(self, layer, context, target_grads, options):
        ids = context
        vocab, dim = layer._embeddings.shape
        dz = target_grads[0]
        ids_rows = registry.flatten_rows(ids)   # [B, T]
        gs = registry.flatten_rows(dz, dim)     # [B, T, dim]
        batch, positions = ids_rows.shape[0], ids_rows.shape[1]
        ids_flat = tf.reshape(ids_rows, [-1])

        if positions == 1:
            sq_norms = registry.sum_squares_rows(gs)
            per_example = None
        elif batch is None or registry.use_ghost(options, explicit_cost=vocab * dim,
                                                 ghost_cost=positions * positions * dim):
            same = tf.cast(tf.equal(ids_rows[:, :, None], ids_rows[:, None, :]), gs.dtype)
            gram = tf.matmul(gs, gs, transpose_b=True)
            sq_norms = tf.reduce_sum(same * gram, axis=[1, 2])
            per_example = None
        else:
            offsets = tf.range(batch, dtype=ids_rows.dtype)[:, None] * vocab
            per_example = tf.math.unsorted_segment_sum(
                tf.reshape(gs, [-1, dim]), tf.reshape(ids_rows + offsets, [-1]),
                batch * vocab)
            per_example = tf.reshape(per_example, [batch, vocab, dim])
            sq_norms = registry.sum_squares_rows(per_example)

        def weighted_sum(c):
            if per_example is not None:
                return [tf.tensordot(tf.cast(c, per_example.dtype), per_example, axes=1)]
            gc = tf.reshape(registry.weighted_rows(c, gs), [-1, dim])
            return [tf.math.unsorted_segment_sum(gc, ids_flat, vocab)]

        return registry.LayerGrads(self.variables(layer), sq_norms, weighted_sum)
