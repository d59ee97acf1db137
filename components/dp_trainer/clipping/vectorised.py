"""Vectorised per-example gradients: the fallback for layers without a rule.

Per layer (:class:`VectorisedRule`): the layer's inputs and its output gradients
``dz`` (from the one shared backward pass) give each example's gradient over
the layer's variables as a vector-Jacobian product, ``VJP(layer at x_i)(dz_i)``,
run for all examples at once with ``tf.vectorized_map``. Memory and time are
those of B explicit gradients of this layer only.

Whole model (:func:`per_example_model_grads`): the same, but for the complete
loss of each example; used when the model cannot be split into layers (a layer
called twice, variables shared between layers) and as the reference path in
tests (``DPStep(fast_clipping=False)``).

The vectorised maps are compiled with XLA (``ClipOptions.xla``), even inside a
step that is not: with oneDNN enabled (TensorFlow's CPU default), TF 2.16's
batched matmul kernel corrupts memory on the rank-4 x rank-2 products that
``vectorized_map`` produces for Keras layers on sequence inputs. XLA's own
kernels are correct; the step turns XLA off only when it cannot compile a layer.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import registry

_ZERO = tf.UnconnectedGradients.ZERO


def _vectorized_map(fn, elems, options: registry.ClipOptions):
    return registry.maybe_xla(lambda e: tf.vectorized_map(fn, e), options)(elems)


def _float_tensors(structure) -> list:
    return [t for t in tf.nest.flatten(structure)
            if tf.is_tensor(t) and t.dtype.is_floating]


def sq_norms_of(per_example: Sequence[tf.Tensor]) -> tf.Tensor:
    """Squared L2 norm of each example over several ``[B, ...]`` gradients."""
    return tf.add_n([registry.sum_squares_rows(g) for g in per_example])


def weighted_sums(c: tf.Tensor, per_example: Sequence[tf.Tensor]) -> list:
    """``[sum_i c_i g[i] for g in per_example]``."""
    return [tf.tensordot(tf.cast(c, g.dtype), g, axes=1) for g in per_example]


class VectorisedRule(registry.ClippingRule):
    """Any layer: per-example VJPs of the layer's own call (not registered)."""

    def variables(self, layer) -> tuple:
        return tuple(layer.trainable_variables)

    def forward(self, layer, call, *args, **kwargs):
        outputs = call(*args, **kwargs)
        return outputs, _float_tensors(outputs), (call, args, kwargs)

    def grads(self, layer, context, target_grads, options):
        call, args, kwargs = context
        variables = self.variables(layer)
        batch = target_grads[0].shape[0]
        flat_in = tf.nest.flatten((args, kwargs))
        mapped = [i for i, t in enumerate(flat_in)
                  if tf.is_tensor(t) and t.shape.rank and t.shape[0] == batch]

        def one_example(elems):
            inputs, dzs = elems
            flat = list(flat_in)
            for k, i in enumerate(mapped):
                flat[i] = inputs[k][None]
            ex_args, ex_kwargs = tf.nest.pack_sequence_as((args, kwargs), flat)
            with tf.GradientTape() as tape:
                outs = _float_tensors(call(*ex_args, **ex_kwargs))
            return tape.gradient(outs, variables, output_gradients=[d[None] for d in dzs],
                                 unconnected_gradients=_ZERO)

        per_example = _vectorized_map(
            one_example, ([flat_in[i] for i in mapped], list(target_grads)), options)
        return registry.LayerGrads(variables, sq_norms_of(per_example),
                                   lambda c: weighted_sums(c, per_example))


def per_example_model_grads(model, variables: Sequence, per_example_loss: Callable,
                            x, y, mask: tf.Tensor,
                            options: registry.ClipOptions = registry.ClipOptions()) -> list:
    """Each example's gradient of its own loss: list of ``[B, *v.shape]``.

    Args:
      model: a Keras model returning logits.
      variables: the variables to differentiate (the model's trainable ones).
      per_example_loss: ``(y [B, ...], logits [B, ...]) -> [B]``.
      x, y: one batch (x may be a nested structure of ``[B, ...]`` tensors).
      mask: float ``[B]``; rows with mask 0 get zero gradients.
      options: ``options.xla`` compiles the map with XLA.
    """

    def one_example(elems):
        xi, yi, mi = elems
        with tf.GradientTape() as tape:
            logits = model(tf.nest.map_structure(lambda t: t[None], xi), training=True)
            loss = per_example_loss(yi[None], logits)[0]
            loss = tf.where(mi > 0, loss, tf.zeros_like(loss))
        return tape.gradient(loss, variables, unconnected_gradients=_ZERO)

    return _vectorized_map(one_example, (x, y, mask), options)
