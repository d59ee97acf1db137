"""Registry of per-layer clipping rules (one small module per Keras layer type).

A rule lets DP-SGD clip per-example gradients without materialising one full
gradient per example. During the private forward pass the rule replaces the
layer's ``call`` and returns, besides the layer output, the tensors whose loss
gradient it needs (``targets``: the pre-activation output ``z``) and whatever it
must keep from the forward pass (``context``: typically the layer input). After
one backward pass to those targets, :meth:`ClippingRule.grads` turns
``(context, dL/dz)`` into

* the squared L2 norm of every example's gradient over the layer's variables
  (``sq_norms``, shape ``[B]``), either as a "ghost norm" (inner products of
  inputs and output gradients, no per-example gradient ever built) or from
  explicit per-example gradients when those are cheaper, and
* a function ``weighted_sum(c)`` that returns ``sum_i c_i * g_i`` for each
  variable, built directly from the same inputs and output gradients
  ("book-keeping": no second backward pass).

Register a rule for a new layer type with::

    @register(keras.layers.MyLayer)
    class MyLayerRule(ClippingRule):
        ...

Layers with trainable weights and no applicable rule use the vectorised
fallback (:mod:`.vectorised`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import tensorflow as tf

NORM_METHODS = ("auto", "ghost", "explicit")

_RULES: dict[type, "ClippingRule"] = {}


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How rules compute per-example quantities.

    Attributes:
      norm_method: "auto" (the cheaper of ghost norm and explicit per-example
        gradients, by operation count), "ghost" or "explicit".
      xla: compile the per-example kernels (conv patches + batched matmul,
        vectorised maps) with XLA even when the surrounding step is not.
    """

    norm_method: str = "auto"
    xla: bool = True


@dataclasses.dataclass(frozen=True)
class LayerGrads:
    """Per-example gradient information of one layer for one batch.

    Attributes:
      variables: the layer's trainable variables covered, in the order of the
        list returned by ``weighted_sum``.
      sq_norms: float32 ``[B]``, squared L2 norm of each example's gradient
        over ``variables``.
      weighted_sum: ``c [B] -> [sum_i c_i * grad_i(v) for v in variables]``.
    """

    variables: tuple
    sq_norms: tf.Tensor
    weighted_sum: Callable[[tf.Tensor], list]


class ClippingRule:
    """Base class of a per-layer rule. Subclasses are stateless singletons."""

    def applies_to(self, layer) -> bool:
        """Whether this rule handles this (built) layer's configuration."""
        return True

    def variables(self, layer) -> tuple:
        """The layer's trainable variables, in the order ``grads`` uses."""
        raise NotImplementedError

    def forward(self, layer, call, *args, **kwargs):
        """Runs the layer in place of ``layer.call``.

        Args:
          layer: the Keras layer.
          call: the layer's original bound ``call`` (rules that recompute the
            layer's math ignore it).
          *args, **kwargs: the arguments Keras passes to ``call``.

        Returns:
          ``(outputs, targets, context)``: the layer outputs, a list of tensors
          whose loss gradient ``grads`` needs, and anything kept for ``grads``.
        """
        raise NotImplementedError

    def grads(self, layer, context, target_grads: Sequence[tf.Tensor],
              options: ClipOptions) -> LayerGrads:
        """Per-example norms and the weighted-sum function for one batch.

        Args:
          layer: the Keras layer.
          context: what ``forward`` returned as context.
          target_grads: dL/d target for each target, with L the masked sum of
            per-example losses (row i is example i's own gradient).
          options: a :class:`ClipOptions`.
        """
        raise NotImplementedError


def register(*layer_types: type):
    """Class decorator: registers one instance of the rule for ``layer_types``."""

    def wrap(rule_cls):
        rule = rule_cls()
        for layer_type in layer_types:
            _RULES[layer_type] = rule
        return rule_cls

    return wrap


def registered_types() -> tuple:
    """The layer types that have a rule."""
    return tuple(_RULES)


def rule_for(layer) -> ClippingRule | None:
    """The registered rule for ``layer`` (nearest class in its MRO), or None.

    None also when the rule exists but does not apply to this configuration
    (e.g. a LoRA-enabled Dense, channels_first Conv2D), or when the layer's
    trainable variables are not exactly the ones the rule knows.
    """
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is None:
            continue
        try:
            if not rule.applies_to(layer):
                return None
            known = {id(v) for v in rule.variables(layer)}
        except AttributeError:  # a Keras version without the attribute we read
            return None
        if known != {id(v) for v in layer.trainable_variables}:
            return None
        return rule
    return None


def use_ghost(options: ClipOptions, explicit_cost: float, ghost_cost: float) -> bool:
    """Chooses ghost norms over explicit per-example gradients."""
    if options.norm_method == "ghost":
        return True
    if options.norm_method == "explicit":
        return False
    return ghost_cost < explicit_cost


def maybe_xla(fn, options: ClipOptions):
    """``fn`` compiled with XLA if ``options.xla`` (a nested function when traced)."""
    if options.xla:
        return tf.function(fn, jit_compile=True, autograph=False)
    return fn


def weighted_rows(c: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """``c[:, None, ...] * t`` for ``c [B]`` and ``t [B, ...]``."""
    shape = tf.concat([tf.shape(c), tf.ones([tf.rank(t) - 1], tf.int32)], 0)
    return t * tf.reshape(tf.cast(c, t.dtype), shape)


def flatten_rows(t: tf.Tensor, last: int | None = None) -> tf.Tensor:
    """Reshapes ``[B, ..., last]`` to ``[B, T, last]`` (or ``[B, T]`` if None)."""
    inner = t.shape[1:]
    # Keep T static when only the batch size is unknown (a Keras train_step traced for any batch):
    # the rules size their work from it.
    rows = -1 if not inner.is_fully_defined() else inner.num_elements() // (last or 1)
    if last is None:
        return tf.reshape(t, [tf.shape(t)[0], rows])
    return tf.reshape(t, [tf.shape(t)[0], rows, last])


def sum_squares_rows(t: tf.Tensor) -> tf.Tensor:
    """Sum of squares over all axes but the first: ``[B, ...] -> [B]``."""
    return tf.reduce_sum(tf.square(flatten_rows(t)), axis=1)


class KernelRule(ClippingRule):
    """A layer ``activation(op(x, kernel) + bias)`` (Dense, EinsumDense, Conv1D/2D): its variables are the
    kernel and the optional bias, LoRA and quantised kernels are left to the fallback, and ``forward`` records
    ``op(x, kernel) + bias`` as the target and the (prepared) input as the context. Subclasses give
    :meth:`pre_activation` and, where the layer takes only some configurations, :meth:`supports`."""

    def supports(self, layer) -> bool:
        return True

    def applies_to(self, layer) -> bool:
        return plain_weights(layer) and self.supports(layer)

    def variables(self, layer) -> tuple:
        return kernel_and_bias(layer)

    def prepare_input(self, layer, x: tf.Tensor) -> tf.Tensor:
        """The input as ``pre_activation`` reads it (and as the rule's context); e.g. causal padding."""
        return x

    def pre_activation(self, layer, kernel: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def forward(self, layer, call, inputs, **kwargs):
        kernel = tf.convert_to_tensor(layer._kernel)
        x = self.prepare_input(layer, tf.cast(inputs, kernel.dtype))
        return biased_outputs(layer, self.pre_activation(layer, kernel, x), x)


def plain_weights(layer) -> bool:
    """True for a layer whose weights are its own variables (no LoRA adapters, no quantised kernel): what the
    kernel rules assume."""
    return not getattr(layer, "lora_enabled", False) and not getattr(layer, "quantization_mode", None)


def kernel_and_bias(layer) -> tuple:
    """``(kernel,)`` or ``(kernel, bias)``: the trainable variables of a kernel layer, in its order."""
    bias = getattr(layer, "bias", None)
    return (layer._kernel,) + ((bias,) if bias is not None else ())


def biased_outputs(layer, z: tf.Tensor, context):
    """A kernel layer's ``forward`` result ``(activation(z + b), [z + b], context)``, with
    ``b = layer.bias`` when the layer has one."""
    if getattr(layer, "bias", None) is not None:
        z = z + tf.convert_to_tensor(layer.bias)
    outputs = layer.activation(z) if layer.activation is not None else z
    return outputs, [z], context


def with_bias_rows(variables, sq_norms, kernel_sum, bias_rows):
    """LayerGrads of a kernel (per-example squared norms ``sq_norms``, clipped sum ``kernel_sum(c)``) and
    an optional bias whose per-example gradients are ``bias_rows`` [B, units] (None without a bias)."""
    if bias_rows is not None:
        sq_norms = sq_norms + tf.reduce_sum(tf.square(bias_rows), axis=1)

    def weighted_sum(c):
        out = [kernel_sum(c)]
        if bias_rows is not None:
            out.append(tf.tensordot(tf.cast(c, bias_rows.dtype), bias_rows, axes=1))
        return out

    return LayerGrads(variables, sq_norms, weighted_sum)
